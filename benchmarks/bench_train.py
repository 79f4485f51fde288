"""Row 3: train-step images/s of the BN CNN with each scaling mode (and augmentation) fused in.

Ours: `jaxscale.training.benchmark_train_variants` times every mode and the augmentation
recipe fused into the step, one step of each in turn per round, so that all see the same load;
overhead percent = the median over rounds of each step's time relative to `none`'s.
Peer: Keras 3 `train_on_batch` of the same-shaped BN CNN at the same batch size on the same
data (`keras_peer.keras_train_timing`).
"""

from __future__ import annotations

import numpy as np

from jaxscale import augmentation, scaling, training

from benchmarks import keras_peer

MODES = tuple(scaling.MODES)


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
    results = training.benchmark_train_variants(
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
