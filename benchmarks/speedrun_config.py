"""The speedrun recipes as data: frozen configs the JAX recipe and both peers read.

No JAX here, so the PyTorch and Keras peers import the recipe without importing a framework
they do not use (the peers' processes are timed from their start, imports included).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SpeedrunConfig:
    """One speedrun recipe: model, batch, schedule, regularisation, augmentation, dispatch.

    The schedule: the learning rate rises linearly to `lr` over the first `warmup_fraction` of
    the steps, then falls linearly to `final_lr_fraction * lr` at the last step (a one-cycle
    "triangle", `lr_breakpoints`). SGD with Nesterov momentum; `weight_decay` is added to the
    gradient (coupled L2, PyTorch SGD's `weight_decay`) for every parameter.

    Attributes:
      name: the recipe's name.
      target: the test accuracy (fraction) this recipe is meant to reach after `epochs`.
      expected: the measured result, in words (see RECIPES).
      widths, pools, hidden, kernel_size, space_to_depth, bn_momentum, bn_epsilon: the
        model's (`speedrun_recipe.SpeedrunNet`).
      batch_size: images per step; an epoch is N // batch_size steps (the remainder of the
        shuffled order is dropped).
      epochs: passes over the training set.
      lr, warmup_fraction, final_lr_fraction, momentum, weight_decay: the optimiser above.
      label_smoothing: mass spread uniformly over the classes in the cross-entropy target.
      shift: augmentation: each training image is translated by a random whole number of
        pixels in [-shift, shift] on each axis (Keras' `width_shift_range=shift`,
        `height_shift_range=shift` with integers, `fill_mode="constant"`, `cval=0`); 0 = none.
      augment: augmentation: ImageDataGenerator keywords as (name, value) pairs, applied with
        `jaxscale.augmentation.augment` after `shift` (e.g. (("rotation_range", 10),)); ()
        = none.
      steps_per_dispatch: train steps per compiled call (`lax.scan` over them); None = one
        epoch per call.
      eval_batch_size: images per chunk of the one-call evaluation.
    """

    name: str = "speedrun"
    target: float = 0.99
    expected: str = ""
    widths: tuple[int, ...] = (32, 64)
    pools: tuple[bool, ...] = (True, False)
    hidden: int = 0
    kernel_size: int = 3
    space_to_depth: int = 2
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    batch_size: int = 128
    epochs: int = 2
    lr: float = 0.1
    warmup_fraction: float = 0.2
    final_lr_fraction: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    shift: int = 0
    augment: tuple[tuple[str, object], ...] = ()
    steps_per_dispatch: int | None = None
    eval_batch_size: int = 2000

    def __post_init__(self):
        if len(self.widths) != len(self.pools):
            raise ValueError(f"widths {self.widths} and pools {self.pools} differ in length")
        for field in ("batch_size", "epochs", "eval_batch_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.steps_per_dispatch is not None and self.steps_per_dispatch < 1:
            raise ValueError(f"steps_per_dispatch must be >= 1 or None, got "
                             f"{self.steps_per_dispatch}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.shift < 0:
            raise ValueError(f"shift must be >= 0, got {self.shift}")
        # hashable whatever sequences were given (the config is a static argument of jit)
        object.__setattr__(self, "augment", tuple(
            (str(name), tuple(value) if isinstance(value, (list, tuple)) else value)
            for name, value in (self.augment.items() if isinstance(self.augment, dict)
                                else self.augment)))

    def steps_per_epoch(self, num_examples: int) -> int:
        steps = num_examples // self.batch_size
        if steps < 1:
            raise ValueError(f"{num_examples} examples hold no batch of {self.batch_size}")
        return steps

    def total_steps(self, num_examples: int) -> int:
        return self.epochs * self.steps_per_epoch(num_examples)


    def lr_breakpoints(self, total_steps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(steps, learning rates) whose linear interpolation is the rate of 0-based step s.

        Rises linearly from lr / warmup_steps at step 0 to `lr` at step warmup_steps - 1 (a
        zero first step would be wasted), then falls linearly to final_lr_fraction * lr at the
        last step, total_steps - 1.
        """
        warmup = max(1, round(self.warmup_fraction * total_steps))
        last = total_steps - 1
        return ((0.0, warmup - 1.0, float(max(last, warmup - 1))),
                (self.lr / warmup, self.lr, self.final_lr_fraction * self.lr))


# --------------------------------------------------------------------------------------------
# The recipes
# --------------------------------------------------------------------------------------------

SPEEDRUN99 = SpeedrunConfig(
    name="speedrun99", target=0.99, hidden=256, epochs=1, lr=0.6,
    expected="(to be measured)",
)

# ImageDataGenerator's usual MNIST augmentation: +-10 degrees, +-10 % zoom, +-8 % shifts.
MNIST_AUGMENT = (("rotation_range", 10), ("zoom_range", 0.1), ("width_shift_range", 0.08),
                 ("height_shift_range", 0.08))

SPEEDRUN995 = SpeedrunConfig(
    name="speedrun995", target=0.995, hidden=256, epochs=6, lr=0.3, augment=MNIST_AUGMENT,
    expected="(to be measured)",
)

RECIPES: dict[str, SpeedrunConfig] = {c.name: c for c in (SPEEDRUN99, SPEEDRUN995)}
