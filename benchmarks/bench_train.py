"""Row 3: train-step images/s of the BN CNN with each scaling mode (and augmentation) fused in.

Ours: `jaxscale.training.benchmark_train_variants` times every mode and the augmentation
recipe fused into the step, one step of each in turn per round, so that all see the same load;
overhead percent = the median over rounds of each step's time relative to `none`'s.
Peer: Keras 3 `train_on_batch` of the same-shaped BN CNN at the same batch size on the same
data (`keras_peer.keras_train_timing`).

`jaxscale.training` is written by another engineer; until it lands (or if its signature
differs) every row is reported as n/a with the reason, and the run goes on.
"""

from __future__ import annotations

import importlib

import numpy as np

from jaxscale import scaling

from benchmarks import keras_peer

MODES = tuple(scaling.MODES)


def _augment_recipe():
    """The seed recipe (an AugmentConfig) when jaxscale.augmentation has it, else None."""
    try:
        return importlib.import_module("jaxscale.augmentation").SEED_RECIPE
    except (ImportError, AttributeError):
        return None


def train_step_benchmark():
    """`jaxscale.training.benchmark_train_variants`, or (None, why)."""
    try:
        return importlib.import_module("jaxscale.training").benchmark_train_variants, None
    except ImportError as error:
        return None, f"jaxscale.training not importable: {error}"
    except AttributeError:
        return None, "jaxscale.training has no benchmark_train_variants"


def run(images: np.ndarray, labels: np.ndarray, *, modes=MODES, batch_size: int = 64,
        steps: int = 20, warmup: int = 3, augment: bool = True, keras: bool = True
        ) -> list[dict]:
    """One row per mode (+ "augment" with the recipe, scaling "normalize"), then Keras' row.

    Row keys: bench ("train"), name, scaling, augment, images_per_s, step_ms_median,
    step_ms_spread, compiles, overhead_pct (vs none), keras_images_per_s, ratio; or status
    "n/a" and why.
    """
    benchmark, why = train_step_benchmark()
    keras_timing = (keras_peer.keras_train_timing(images, labels, batch_size=batch_size,
                                                  steps=steps, warmup=warmup)
                    if keras else None)
    keras_rate = None if keras_timing is None else keras_timing.items_per_s
    cases = [(mode, mode, None) for mode in modes]
    if augment:
        recipe = _augment_recipe()
        if recipe is not None:
            cases.append(("augment+normalize", "normalize", recipe))
        else:
            cases.append(("augment+normalize", "normalize", "missing"))
    runnable = {name: (mode, recipe) for name, mode, recipe in cases
                if benchmark is not None and recipe != "missing"}
    results, failure = {}, None
    if runnable:
        try:
            results = benchmark(runnable, model="bn_cnn", batch_size=batch_size, rounds=steps,
                                warmup=warmup, images=images, labels=labels)
        except Exception as error:  # another module's failure must not stop the bench
            failure = f"benchmark_train_variants failed: {type(error).__name__}: {error}"
    rows = []
    for name, mode, recipe in cases:
        row = {"bench": "train", "name": name, "scaling": mode,
               "augment": None if recipe is None else "SEED_RECIPE", "batch_size": batch_size,
               "images_per_s": None, "keras_images_per_s": keras_rate, "ratio": None}
        if name not in results:
            row.update(status="n/a", why=failure or why
                       or "jaxscale.augmentation.SEED_RECIPE missing")
        else:
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
