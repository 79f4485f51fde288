"""Batches per second of the device-resident input pipeline vs the streaming one.

Every path produces the same batches (same seed) and does the same work per batch: gather the
rows of a uint8 MNIST-shaped dataset, scale them with `standardize` (featurewise mean/std) and
reduce the float32 batch to one number, so nothing is optimised away. The paths:

- resident/scan: a whole epoch in one jitted `lax.scan` (gather + scale per step on device);
- resident/fused-step: one jitted call per batch that gathers and scales (what a training
  loop with `take_batch` inside its step does);
- resident/loop: `resident_batches` (one jitted gather per batch) then a jitted scale;
- streaming: `stream_batches` (host gather, copy to device with prefetch) then a jitted scale;
- streaming/records: the same from tfds ArrayRecord files on disk (`load_data_source`, real
  MNIST with tensorflow-datasets only), timed on its first RECORD_STEPS batches.

Real MNIST is used when its files are found ($JAXSCALE_DATA_DIR or ../shared/data/mnist),
otherwise a synthetic dataset of the same shape; the `data` column says which.

Run: `python -m benchmarks.bench_pipeline [--quick]`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.timing import best_of
from jaxscale import pipeline, scaling
from jaxscale.datasets import load_data_source, load_dataset, synthetic_dataset

BATCH_SIZE = 128
SEED = 0
RECORD_STEPS = 40


def _mnist_folder() -> Path | None:
    candidates = [os.environ.get("JAXSCALE_DATA_DIR"),
                  Path(__file__).resolve().parents[2] / "shared" / "data"]
    for folder in filter(None, candidates):
        folder = Path(folder)
        for path in (folder / "mnist", folder):
            if (path / "train-images-idx3-ubyte.gz").exists():
                return path
    return None


def _mnist_or_synthetic(num_examples: int | None):
    folder = _mnist_folder()
    if folder is not None:
        data, label = load_dataset("mnist", "train", data_dir=folder, source="raw"), "mnist (real)"
    else:
        data = synthetic_dataset(60000, (28, 28, 1), 10, seed=SEED)
        label = "synthetic 28x28x1"
    if num_examples is not None and num_examples < len(data):
        data = data.take(slice(0, num_examples))
    return data, label


def run(quick: bool = False) -> list[dict]:
    """Times every path on one epoch; returns one row per path.

    Row keys: bench, name, data, num_examples, batch_size, steps (timed batches),
    seconds_per_epoch (extrapolated for streaming/records), batches_per_s, images_per_s,
    device.
    """
    data, label = _mnist_or_synthetic(10240 if quick else None)
    repeats = 2 if quick else 5
    config = scaling.scaling_config("standardize")
    params = scaling.fit_scaling(config, data.images)
    device_data = pipeline.put_on_device(data)
    n = len(data)
    indices, mask = pipeline.epoch_indices(pipeline.epoch_key(SEED, 0), n, BATCH_SIZE)
    steps = int(indices.shape[0])

    def reduce_batch(batch):
        scaled = scaling.scale(batch.images, config, params)
        return jnp.sum(jnp.where(batch.mask[:, None, None, None], scaled, 0.0))

    @jax.jit
    def scan_epoch(dev, idx, msk):
        total, _ = pipeline.scan_epoch(lambda acc, b: (acc + reduce_batch(b), None),
                                       jnp.float32(0), dev, idx, msk)
        return total

    @jax.jit
    def fused_step(dev, idx, msk, step):
        return reduce_batch(pipeline.take_batch(dev.images, dev.labels, idx[step], msk[step]))

    scale_only = jax.jit(reduce_batch)

    def resident_scan():
        scan_epoch(device_data, indices, mask).block_until_ready()

    def resident_fused():
        outs = [fused_step(device_data, indices, mask, s) for s in range(steps)]
        jax.block_until_ready(outs)

    def resident_loop():
        outs = [scale_only(b) for b in pipeline.resident_batches(
            device_data, BATCH_SIZE, seed=SEED, epoch=0)]
        jax.block_until_ready(outs)

    def streaming():
        outs = [scale_only(b) for b in pipeline.stream_batches(
            data, BATCH_SIZE, seed=SEED, epoch=0, prefetch=2)]
        jax.block_until_ready(outs)

    paths = [("resident/scan", resident_scan, steps), ("resident/fused-step", resident_fused,
                                                         steps),
             ("resident/loop", resident_loop, steps), ("streaming", streaming, steps)]
    records = _record_source()
    if records is not None:
        def streaming_records():
            batches = pipeline.stream_batches(records, BATCH_SIZE, seed=SEED, epoch=0)
            outs = [scale_only(b) for b, _ in zip(batches, range(RECORD_STEPS))]
            jax.block_until_ready(outs)
        paths.append(("streaming/records", streaming_records, RECORD_STEPS))
    device = jax.devices()[0]
    rows = []
    for name, fn, timed_steps in paths:
        seconds = best_of(fn, repeats)
        on_disk = name == "streaming/records"
        size = len(records) if on_disk else n
        rows.append(dict(bench="pipeline", name=name,
                         data="mnist (real, tfds ArrayRecord on disk)" if on_disk else label,
                         num_examples=size, batch_size=BATCH_SIZE, steps=timed_steps,
                         seconds_per_epoch=seconds * -(-size // BATCH_SIZE) / timed_steps,
                         batches_per_s=timed_steps / seconds,
                         images_per_s=timed_steps * BATCH_SIZE / seconds,
                         device=f"{device.platform}:{device.device_kind}"))
    return rows


def _record_source():
    """MNIST train as a tfds ArrayRecord source, or None without tfds or real MNIST."""
    folder = _mnist_folder()
    if folder is None:
        return None
    try:
        return load_data_source("mnist", "train", data_dir=folder)
    except ImportError:
        return None


def format_table(rows: list[dict]) -> str:
    lines = [f"{'path':<22}{'batches/s':>12}{'images/s':>14}{'s/epoch':>10}  data, device"]
    for r in rows:
        lines.append(f"{r['name']:<22}{r['batches_per_s']:>12,.0f}{r['images_per_s']:>14,.0f}"
                     f"{r['seconds_per_epoch']:>10.3f}  {r['data']} "
                     f"(N={r['num_examples']}, B={r['batch_size']}), {r['device']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10240 images, 2 repeats")
    args = parser.parse_args(argv)
    print(format_table(run(quick=args.quick)))


if __name__ == "__main__":
    main()
