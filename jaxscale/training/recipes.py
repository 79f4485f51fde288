"""Named training configs: `jaxscale train --recipe NAME` and `recipe(NAME)`.

A recipe is a `TrainConfig`; flags and `TrainConfig.replace` change any field of it.

- "tutorial": the Keras tutorial's BN CNN run (Adam 1e-3, batch 64, 5 epochs, standardize):
  `TrainConfig()`'s defaults.
- "speedrun99", "speedrun995": the `make speedrun` recipes for 99.0 % and 99.5 % MNIST test
  accuracy in the least wall time (docs/speedrun.md): the `speedrun_net` model, x / 255,
  SGD with Nesterov momentum, a one-cycle rate (linear warm-up over the first fifth of the
  steps, linear decay to 0), coupled weight decay 5e-4, label smoothing 0.1, batch 128; the
  99.5 % recipe also augments (rotation, zoom, shifts) and runs 6 epochs. Chosen on a
  validation split of MNIST's training set (`python -m benchmarks.speedrun --split
  validation`), with warm-ups counted in MNIST's 468 steps per epoch. `make speedrun` runs
  the same recipes in its own harness (one compiled call per epoch) beside PyTorch and
  Keras.
"""

from __future__ import annotations

from jaxscale.augmentation import augment_config
from jaxscale.training.config import TrainConfig

MNIST_STEPS_PER_EPOCH = 60_000 // 128  # the speedrun recipes' batch of 128
# ImageDataGenerator's usual MNIST augmentation: +-10 degrees, +-10 % zoom, +-8 % shifts.
MNIST_AUGMENT = dict(rotation_range=10, zoom_range=0.1, width_shift_range=0.08,
                     height_shift_range=0.08)


def _speedrun(epochs: int, learning_rate: float, **changes) -> TrainConfig:
    return TrainConfig(
        model="speedrun_net", scaling="normalize", epochs=epochs, batch_size=128,
        learning_rate=learning_rate, optimizer="nesterov", schedule="onecycle",
        warmup_steps=round(0.2 * epochs * MNIST_STEPS_PER_EPOCH), weight_decay=5e-4,
        label_smoothing=0.1, eval_batch_size=2000, steps_per_call=52, **changes)


RECIPES: dict[str, TrainConfig] = {
    "tutorial": TrainConfig(),
    "speedrun99": _speedrun(1, 0.6),
    "speedrun995": _speedrun(6, 0.3, augment=augment_config(**MNIST_AUGMENT)),
}


def recipe(name: str) -> TrainConfig:
    """The TrainConfig of a named recipe.

    Raises:
      ValueError: unknown name (the message lists the known ones).
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]
