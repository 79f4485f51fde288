"""Batches per second of the device-resident input pipeline vs the host-streamed one.

Every path produces the same batches (same seed) and does the same work per batch: gather the
rows of a uint8 MNIST-shaped dataset, scale them with `standardize` (featurewise mean/std) and
reduce the float32 batch to one number, so nothing is optimised away. The paths, all through
`jaxscale.data.pipeline` (the trainer's own data path):

- resident/scan: `ResidentSource`, the whole epoch as one chunk (one dispatch, `lax.scan`);
- resident/step: `ResidentSource`, one chunk of one step per dispatch;
- host: `HostSource` over the in-memory arrays (host gather, copy to device with prefetch);
- host/records: the same from tfds ArrayRecord files on disk (`load_data_source`, real MNIST
  with tensorflow-datasets only), timed on its first RECORD_STEPS batches.

`make bench` passes the images it loaded (real MNIST when its files are found, else synthetic
ones of the same shape; the `data` column says which). Each path is timed over whole epochs
(`benchmarks.timing.measure`: median of repeats, with their spread).

Run: `python -m benchmarks.bench_pipeline [--quick]`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import measure
from jaxscale import scaling
from jaxscale.data.pipeline import HostSource, ResidentSource, steps_per_epoch
from jaxscale.data.datasets import Dataset, load_data_source

BATCH_SIZE = 128
SEED = 0
RECORD_STEPS = 40


def _mnist_folder() -> Path | None:
    from benchmarks.data import candidate_dirs

    for folder in candidate_dirs(None):
        if (folder / "train-images-idx3-ubyte.gz").exists():
            return folder
    return None


def run(images: np.ndarray, labels: np.ndarray, *, source: str = "given",
        repeats: int = 5, records: bool = True) -> list[dict]:
    """Times every path on one epoch of `images` (uint8[N, H, W, C]) and `labels` (int[N]).

    Args:
      source: what the data is, for the `data` column (e.g. `BenchData.source`).
      repeats: timed epochs per path (after one warm-up epoch).
      records: also time tfds ArrayRecord files of real MNIST when tfds and the files exist.

    Row keys: bench, name, data, num_examples, batch_size, steps (timed batches),
    seconds_per_epoch (extrapolated for streaming/records), batches_per_s, images_per_s
    (+ the `Timing.summary` figures), device.
    """
    data = Dataset(np.asarray(images), np.asarray(labels).astype(np.int32), "bench", "train",
                   10)
    label = source
    config = scaling.scaling_config("standardize")
    params = scaling.fit_scaling(config, data.images)
    n = len(data)
    steps = steps_per_epoch(n, BATCH_SIZE, drop_remainder=False)
    resident, host = ResidentSource(data), HostSource(data, prefetch=2)

    def reduce_batch(batch):
        scaled = scaling.scale(batch.images, config, params)
        return jnp.sum(jnp.where(batch.mask[:, None, None, None], scaled, 0.0))

    def chunk_sum(take):
        @jax.jit
        def run(device_data, chunk):
            def body(total, step):
                return total + reduce_batch(take(device_data, step)), None
            return jax.lax.scan(body, jnp.float32(0), chunk)[0]
        return run

    resident_sum, host_sum = chunk_sum(ResidentSource.take), chunk_sum(HostSource.take)

    def epoch(source, summed, steps_per_call, limit=None):
        chunks = source.epoch(SEED, 0, BATCH_SIZE, steps_per_call=steps_per_call)
        outs = [summed(source.data, c) for c, _ in zip(chunks, range(limit or steps))]
        jax.block_until_ready(outs)

    paths = [("resident/scan", lambda: epoch(resident, resident_sum, steps), steps),
             ("resident/step", lambda: epoch(resident, resident_sum, 1), steps),
             ("host", lambda: epoch(host, host_sum, 1), steps)]
    records = _record_source() if records else None
    if records is not None:
        on_disk = HostSource(records, prefetch=2)
        paths.append(("host/records", lambda: epoch(on_disk, host_sum, 1, RECORD_STEPS),
                      RECORD_STEPS))
    device = jax.devices()[0]
    rows = []
    for name, fn, timed_steps in paths:
        timing = measure(lambda _, fn=fn: fn(), [None], items=timed_steps * BATCH_SIZE,
                         repeats=repeats, warmup=1)
        seconds = timing.median_s
        from_disk = name == "host/records"  # not `on_disk`: the records path's lambda reads it
        size = len(records) if from_disk else n
        rows.append(dict(bench="pipeline", name=name,
                         data="mnist (real, tfds ArrayRecord on disk)" if from_disk else label,
                         num_examples=size, batch_size=BATCH_SIZE, steps=timed_steps,
                         **timing.summary(),
                         seconds_per_epoch=seconds * -(-size // BATCH_SIZE) / timed_steps,
                         batches_per_s=timed_steps / seconds,
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
    from benchmarks import data as bench_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10240 images, 2 repeats")
    args = parser.parse_args(argv)
    data = bench_data.load_bench_data(num_examples=10240 if args.quick else 60000)
    print(format_table(run(data.images, data.labels, source=data.source,
                           repeats=2 if args.quick else 5)))


if __name__ == "__main__":
    main()
