"""Row 3: train-step images/s of the BN CNN with each scaling mode (and augmentation) fused in.

Ours: `benchmark_train_variants` times every mode and the augmentation recipe fused into the
step, one step of each in turn per round, so that all see the same load; overhead percent =
the median over rounds of each step's time relative to `none`'s. The step is the trainer's own
(`jaxscale.training.runners.make_runner` on a `ResidentSource`, one step per call).
Peer: Keras 3 `train_on_batch` of the same-shaped BN CNN at the same batch size on the same
data (`keras_peer.keras_train_timing`).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from jaxscale import augmentation
from jaxscale.scaling import MODES as SCALING_MODES
from jaxscale.scaling import fit_scaling, scaling_config
from jaxscale.data.datasets import synthetic_dataset
from jaxscale.data.pipeline import ResidentSource, dataset_arrays
from jaxscale.training.config import TrainConfig, make_optimizer
from jaxscale.training.runners import make_runner
from jaxscale.training.steps import create_train_state

from benchmarks import keras_peer
from benchmarks.timing import count_compiles

MODES = tuple(SCALING_MODES)


def run(images: np.ndarray, labels: np.ndarray, *, modes=MODES, batch_size: int = 64,
        steps: int = 20, warmup: int = 3, augment: bool = True, keras: bool = True
        ) -> list[dict]:
    """One row per mode (+ "augment" with the recipe, scaling "normalize"), then Keras' row.

    Row keys: bench ("train"), name, scaling, augment, images_per_s, step_ms_median,
    step_ms_spread, compiles, overhead_pct (vs none), keras_images_per_s, ratio. Keras' row
    has status "n/a" and why when keras is missing or skipped.
    """
    keras_timing = (keras_peer.keras_train_timing(images, labels, batch_size=batch_size,
                                                  steps=steps, warmup=warmup)
                    if keras else None)
    keras_rate = None if keras_timing is None else keras_timing.items_per_s
    cases = [(mode, mode, None) for mode in modes]
    if augment:
        cases.append(("augment+normalize", "normalize", augmentation.SEED_RECIPE))
    results = benchmark_train_variants(
        {name: (mode, recipe) for name, mode, recipe in cases}, model="bn_cnn",
        batch_size=batch_size, rounds=steps, warmup=warmup, images=images, labels=labels)
    rows = []
    for name, mode, recipe in cases:
        row = {"bench": "train", "name": name, "scaling": mode,
               "augment": None if recipe is None else "SEED_RECIPE", "batch_size": batch_size,
               "keras_images_per_s": keras_rate, "ratio": None}
        row.update({k: results[name][k] for k in ("images_per_s", "step_ms_median",
                                                  "step_ms_spread", "compiles",
                                                  "overhead_pct")})
        if keras_rate:
            row["ratio"] = row["images_per_s"] / keras_rate
        rows.append(row)
    keras_row = {"bench": "train", "name": "keras_train_on_batch", "scaling": "normalize",
                 "batch_size": batch_size, "images_per_s": keras_rate}
    if keras_timing is None:
        keras_row.update(status="n/a", why="keras not installed" if keras else "skipped")
    else:
        keras_row.update(keras_timing.summary())
    rows.append(keras_row)
    return rows


def _timed_train_step(model: str, scaling: str, batch_size: int, augment, images, labels,
                      parallel: str, seed: int, total_steps: int):
    """A zero-argument function running one train step of the trainer's program on resident
    data; it returns the step's wall-clock seconds (to `block_until_ready`)."""
    config = TrainConfig(model=model, scaling=scaling, augment=augment,
                         batch_size=batch_size, seed=seed, parallel=parallel)
    scaling_cfg = scaling_config(scaling)
    params = fit_scaling(scaling_cfg, images)
    tx = make_optimizer(config, total_steps)
    runner = make_runner(parallel, config, tx, scaling_cfg, params,
                         num_classes=max(int(labels.max()) + 1, 10))
    source = ResidentSource((images, labels), placement=runner.placement)
    chunks = list(source.epoch(seed, 0, batch_size, drop_remainder=True))
    key = runner.put_key(seed)
    carry = {"state": runner.put_state(create_train_state(
        runner.model, tx, images.shape[1:], jax.random.PRNGKey(seed))),
             "sums": runner.train_sums(), "step": 0}

    def step_once() -> float:
        start = time.perf_counter()
        state, sums = runner.train(carry["state"], carry["sums"], source.data,
                                   chunks[carry["step"] % len(chunks)], key)
        jax.block_until_ready((state, sums))
        carry.update(state=state, sums=sums, step=carry["step"] + 1)
        return time.perf_counter() - start

    return step_once


def _benchmark_images(images, labels, batch_size: int, seed: int):
    if images is None:
        data = synthetic_dataset(max(4096, batch_size), (28, 28, 1), 10, seed)
        images, labels = data.images, data.labels
    images, labels = dataset_arrays((np.asarray(images), np.asarray(labels)))
    return images, labels.astype(np.int32)


def benchmark_train_step(model: str = "bn_cnn", scaling: str = "none",
                         batch_size: int = 64, steps: int = 20, warmup: int = 3, augment=None,
                         images=None, labels=None, parallel: str = "none",
                         seed: int = 0) -> dict:
    """Times the fused train step (gather + augment + scale + forward/backward + update).

    Data is resident on the device as uint8; each step is timed to `block_until_ready`;
    warm-up steps (compilation) are excluded.

    Args:
      model, scaling, augment, parallel, seed: as in TrainConfig.
      batch_size: global batch.
      steps: timed steps; warmup: untimed steps before them.
      images: uint8[N, H, W, C] (default: 4096 synthetic 28x28x1 images); labels: int[N].

    Returns:
      {"images_per_s": batch / median step time, "step_ms_median", "step_ms_spread"
      (max - min over the timed steps), "compiles": XLA compilations during the timed steps
      (0 when nothing recompiles), "warmup_compiles", "steps", "batch_size", "device"}.
    """
    images, labels = _benchmark_images(images, labels, batch_size, seed)
    step_once = _timed_train_step(model, scaling, batch_size, augment, images, labels,
                                  parallel, seed, steps + warmup)
    with count_compiles() as warm_compiles:
        for _ in range(warmup):
            step_once()
    with count_compiles() as compiles:
        times = [step_once() for _ in range(steps)]
    median = float(np.median(times))
    return {"images_per_s": batch_size / median, "step_ms_median": median * 1e3,
            "step_ms_spread": (max(times) - min(times)) * 1e3, "compiles": compiles[0],
            "warmup_compiles": warm_compiles[0], "steps": steps, "batch_size": batch_size,
            "device": str(jax.devices()[0].platform)}


def benchmark_train_variants(variants: dict, *, model: str = "bn_cnn", batch_size: int = 64,
                             rounds: int = 20, warmup: int = 3, images=None, labels=None,
                             parallel: str = "none", seed: int = 0) -> dict:
    """Times several fused train steps interleaved, so that each sees the same machine load.

    One round runs one step of every variant in turn; the overhead of a variant is the median
    over rounds of (its step time / the first variant's step time) - 1, which cancels the load
    drift that makes separately timed runs on a shared host differ by tens of percent.

    Args:
      variants: name -> (scaling mode, augment or None); the first is the baseline.
      rounds: timed rounds; warmup: untimed rounds (compilation) before them.
      model, batch_size, images, labels, parallel, seed: as in `benchmark_train_step`.

    Returns:
      name -> {"images_per_s", "step_ms_median", "step_ms_spread", "overhead_pct",
      "compiles", "batch_size"}.
    """
    if not variants:
        raise ValueError("benchmark_train_variants needs at least one variant")
    images, labels = _benchmark_images(images, labels, batch_size, seed)
    steps = {name: _timed_train_step(model, mode, batch_size, augment, images, labels,
                                     parallel, seed, rounds + warmup)
             for name, (mode, augment) in variants.items()}
    for _ in range(warmup):
        for step_once in steps.values():
            step_once()
    times = {name: [] for name in steps}
    with count_compiles() as compiles:
        for _ in range(rounds):
            for name, step_once in steps.items():
                times[name].append(step_once())
    base = np.asarray(times[next(iter(variants))])
    results = {}
    for name, seconds in times.items():
        seconds = np.asarray(seconds)
        median = float(np.median(seconds))
        results[name] = {
            "images_per_s": batch_size / median, "step_ms_median": median * 1e3,
            "step_ms_spread": float(seconds.max() - seconds.min()) * 1e3,
            "overhead_pct": float(np.median(seconds / base) - 1.0) * 100.0,
            "compiles": compiles[0], "batch_size": batch_size}
    return results
