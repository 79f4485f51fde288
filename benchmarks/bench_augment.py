"""Images per second of on-device augmentation vs Keras' ImageDataGenerator, same run.

The recipe is the seed tutorial's (`jaxscale.augmentation.SEED_RECIPE`, given to Keras as
`augmentation.keras_keywords(SEED_RECIPE)`) on the benchmark's uint8 images. Rows:

- augment_jit/order{1,0}: `augment_jit(key, batch, config)` on device-resident batches
  (bilinear and nearest resampling), several buffers rotated;
- flow: `jaxscale.ImageDataGenerator(**recipe, rescale=1/255).flow(x, batch_size=...)`, one
  jitted gather + augment + scale for several batches per call;
- fused_train_step: the BN CNN's train step (`bench_train.benchmark_train_variants`, the same
  step as the train section's) with `normalize`, with and without the recipe inside the step,
  timed interleaved. `augment_share` = the augmentation's own time on that batch / the plain
  step's time (the fused-minus-plain difference, `step_difference_share`, is reported too but
  sits within the noise of a shared CPU).

Peer: Keras 3's `ImageDataGenerator(**recipe, rescale=1/255).flow(x, batch_size)`
(`keras_peer.keras_flow_timing`) in the same process on the same data; `ratio` = ours / Keras.
Timings are medians of repeats with their spread (`benchmarks.timing.measure`).

Run: `python -m benchmarks.bench_augment [--quick]`.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import jaxscale
from benchmarks import keras_peer
from benchmarks.timing import device_batches, measure
from jaxscale import augmentation

from benchmarks import bench_train

RECIPE = augmentation.keras_keywords(augmentation.SEED_RECIPE)  # for both generators
SEED = 0


def _augment_rows(images, batch_sizes, buffers, repeats, keras_rate):
    rows = []
    key = jax.random.PRNGKey(SEED)
    for batch_size in batch_sizes:
        batches = device_batches(images, batch_size, buffers)
        for order in (1, 0):
            config = augmentation.SEED_RECIPE.replace(interpolation_order=order)
            timing = measure(lambda b, config=config: augmentation.augment_jit(key, b, config),
                             batches, items=batch_size, repeats=repeats, warmup=2,
                             calls_per_repeat=len(batches))
            rows.append(_row(f"augment_jit/order{order}", batch_size, timing, keras_rate))
    return rows


def _flow_row(images, batch_size, batches, repeats, keras_rate):
    # whole batches only: a shorter last batch would compile inside a timed repeat
    whole = images[:max(1, len(images) // batch_size) * batch_size]
    flow = jaxscale.ImageDataGenerator(**RECIPE, rescale=1 / 255).flow(
        whole, batch_size=batch_size, seed=SEED)
    # The flow computes several batches per compiled call and hands them out one by one: a
    # repeat of fewer batches than an epoch would time batches computed before it started.
    # So warm up over one epoch (every compiled variant) and time whole epochs.
    epoch = len(flow)
    timing = measure(lambda _: next(flow), [None], items=batch_size, repeats=repeats,
                     warmup=epoch, calls_per_repeat=-(-max(batches, epoch) // epoch) * epoch)
    return _row("flow", batch_size, timing, keras_rate)


def _fused_rows(images, labels, batch_size, rounds, buffers):
    """The BN CNN's step with `normalize`, without and with the recipe, interleaved; and the
    recipe alone on batches of the same size."""
    steps = bench_train.benchmark_train_variants(
        {"plain": ("normalize", None), "fused": ("normalize", augmentation.SEED_RECIPE)},
        model="bn_cnn", batch_size=batch_size, rounds=rounds, warmup=2, images=images,
        labels=labels, seed=SEED)
    key = jax.random.PRNGKey(SEED)
    alone = measure(lambda b: augmentation.augment_jit(key, b, augmentation.SEED_RECIPE),
                    device_batches(images, batch_size, buffers), items=batch_size,
                    repeats=rounds, warmup=2)
    plain_s = steps["plain"]["step_ms_median"] / 1e3
    fused_s = steps["fused"]["step_ms_median"] / 1e3
    return [{"bench": "augment", "name": "fused_train_step", "batch_size": batch_size,
             "images_per_s": steps["fused"]["images_per_s"],
             "step_ms_spread": steps["fused"]["step_ms_spread"],
             "plain_step_images_per_s": steps["plain"]["images_per_s"],
             "keras_images_per_s": None, "ratio": None,
             "augment_share": alone.median_s / plain_s,
             "step_difference_share": (fused_s - plain_s) / fused_s,
             "device": jax.devices()[0].platform}]


def _row(name, batch_size, timing, keras_rate):
    rate = timing.items_per_s
    return {"bench": "augment", "name": name, "batch_size": batch_size, **timing.summary(),
            "keras_images_per_s": keras_rate,
            "ratio": None if not keras_rate else rate / keras_rate,
            "augment_share": None, "device": jax.devices()[0].platform}


def run(images: np.ndarray, labels: np.ndarray, *, batch_sizes=(128, 1024), buffers: int = 8,
        repeats: int = 5, flow_batches: int = 12, keras_batches: int = 6,
        fused_batch_sizes=(64, 512), fused_rounds: int = 10, keras: bool = True
        ) -> list[dict]:
    """Times the seed recipe every way on `images` (uint8[N, H, W, C]) with `labels` (int[N]).

    Returns one row per measurement. Row keys: bench, name, batch_size, images_per_s (+ the
    `Timing.summary` figures), keras_images_per_s, ratio, augment_share (fused rows only, else
    None), device; fused rows add plain_step_images_per_s and step_difference_share.
    """
    keras_rate = None
    if keras:
        peer = keras_peer.keras_flow_timing(images, "normalize", batch_size=1024,
                                            batches=keras_batches, repeats=3, augment=RECIPE)
        keras_rate = None if peer is None else peer.items_per_s
    rows = _augment_rows(images, batch_sizes, buffers, repeats, keras_rate)
    rows.append(_flow_row(images, 1024, flow_batches, repeats, keras_rate))
    for batch_size in fused_batch_sizes:
        rows.extend(_fused_rows(images, labels, batch_size, fused_rounds, buffers))
    return rows


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main() -> None:
    from benchmarks import data as bench_data
    from benchmarks.sizes import settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    quick = parser.parse_args().quick
    data = bench_data.load_bench_data()
    rows = run(data.images, data.labels, **settings(quick)["augment"])
    print(f"data: {data.source}")
    print(f"{'name':<22} {'batch':>6} {'images/s':>12} {'keras img/s':>12} {'ratio':>8} "
          f"{'aug share':>9}")
    for r in rows:
        print(f"{r['name']:<22} {r['batch_size']:>6} {r['images_per_s']:>12,.0f} "
              f"{_fmt(r['keras_images_per_s'], '12,.0f'):>12} {_fmt(r['ratio'], '8.1f'):>8} "
              f"{_fmt(r['augment_share'], '9.1%'):>9}")
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")


if __name__ == "__main__":
    main()
