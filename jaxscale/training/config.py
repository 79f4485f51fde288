"""`TrainConfig`: everything that decides a training run's numbers, as frozen data.

A config can be printed, compared and saved: checkpoints store `to_dict()`, and `--resume`
refuses a run whose config differs (`differences`) unless the differing fields are allowed
explicitly. `make_optimizer` turns it into the optax optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optax

from jaxscale.augmentation import SEED_RECIPE, AugmentConfig
from jaxscale.scaling import ScalingConfig, scaling_config
from jaxscale.training.models import MODELS

OPTIMIZERS = ("adam", "adamw", "sgd", "nesterov")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "onecycle")
PARALLEL = ("none", "pmap", "mesh")
COMPUTE_DTYPES = ("float32", "bfloat16")
AUGMENT_NAMES = ("none", "seed")
# Fields that change how a run is executed, not its numbers: a resumed run may change them.
EXECUTION_FIELDS = ("parallel", "devices", "steps_per_call", "eval_batch_size")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run's numbers.

    Attributes:
      model: a `jaxscale.training.models.MODELS` name ("small_cnn", "bn_cnn", ...).
      scaling: a `jaxscale.scaling.MODES` name ("none", "normalize", "center",
        "standardize", ...) or a ScalingConfig.
      augment: None (or "none"), "seed" (the tutorial's recipe,
        `jaxscale.augmentation.SEED_RECIPE`) or an AugmentConfig; training batches only.
      epochs: passes over the training set.
      batch_size: global batch (split over devices and processes); the last partial batch of
        an epoch is dropped so every step has one shape.
      learning_rate: peak learning rate.
      optimizer: "adam" (the tutorial's), "adamw", "sgd" (heavy-ball momentum 0.9) or
        "nesterov" (SGD with Nesterov momentum 0.9, the speedrun recipes').
      schedule: "constant", "cosine" (decay to 0), "warmup_cosine" (linear warm-up over
        `warmup_steps`, then cosine) or "onecycle" (linear warm-up over `warmup_steps`, then
        linear decay to 0).
      warmup_steps: warm-up steps of "warmup_cosine" and "onecycle".
      weight_decay: decoupled weight decay (adamw); added to the gradient (coupled L2, as
        PyTorch's SGD `weight_decay`) for adam, sgd and nesterov.
      label_smoothing: mass spread uniformly over the classes in the training loss (0: none).
      seed: run seed (initialisation, epoch order, dropout, augmentation).
      parallel: "none" (one device), "pmap" (replicated state, `lax.pmean`), "mesh"
        (`jax.jit` over a `Mesh`, batch sharded), or "auto" (decided when `train` starts:
        `jaxscale.training.runners.resolve_parallel`).
      devices: how many local devices "pmap"/"mesh" use (None: all).
      dropout_rate: override the model's dropout rate (None keeps it).
      compute_dtype: "float32", or "bfloat16" for the convolutions and matmuls (parameters,
        BatchNorm statistics, the loss and the optimizer stay float32).
      steps_per_call: train steps per compiled call on accelerators (a `lax.scan` over
        device-resident batches; on CPU devices each step is its own call, see
        `runners.StepByStep`); the numbers do not depend on it.
      eval_batch_size: test-set batch size (padded and masked, never dropped).
    """

    model: str = "bn_cnn"
    scaling: str | ScalingConfig = "standardize"
    augment: Any = None
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    parallel: str = "none"
    devices: int | None = None
    dropout_rate: float | None = None
    compute_dtype: str = "float32"
    steps_per_call: int = 1
    eval_batch_size: int = 1000

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known: {sorted(MODELS)}")
        scaling_config(self.scaling)  # raises on an unknown mode
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("parallel", self.parallel, (*PARALLEL, "auto"))
        _one_of("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        for name in ("epochs", "batch_size", "eval_batch_size", "steps_per_call"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("weight_decay and warmup_steps must be >= 0, got "
                             f"{self.weight_decay} and {self.warmup_steps}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.devices is not None and self.devices < 1:
            raise ValueError(f"devices must be >= 1 or None, got {self.devices}")
        if self.dropout_rate is not None and not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1) or None, got {self.dropout_rate}")
        resolve_augment(self.augment)  # raises on a bad value

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready values; configs (scaling, augment) as their repr."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value if isinstance(value, (str, int, float, bool, type(None))) \
                else repr(value)
        return out

    def differences(self, saved: dict, *, allow: tuple[str, ...] = ()) -> list[str]:
        """What differs from a saved `to_dict()`, as "field: saved -> requested" lines,
        leaving out execution-only fields (`EXECUTION_FIELDS`) and the fields in `allow`."""
        mine = self.to_dict()
        lines = []
        for name in sorted(set(mine) | set(saved)):
            if name in EXECUTION_FIELDS or name in allow:
                continue
            if mine.get(name, "<missing>") != saved.get(name, "<missing>"):
                lines.append(f"{name}: {saved.get(name, '<missing>')!r} -> "
                             f"{mine.get(name, '<missing>')!r}")
        return lines


def _one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def resolve_augment(augment) -> AugmentConfig | None:
    """The AugmentConfig of `TrainConfig.augment` (None for no augmentation)."""
    if augment is None or (isinstance(augment, str) and augment == "none"):
        return None
    if isinstance(augment, str):
        if augment == "seed":
            return SEED_RECIPE
        raise ValueError(f"augment must be None, one of {AUGMENT_NAMES} or an AugmentConfig, "
                         f"got {augment!r}")
    if not isinstance(augment, AugmentConfig):
        raise ValueError(f"augment must be None, one of {AUGMENT_NAMES} or an AugmentConfig, "
                         f"got {augment!r}")
    return None if augment.is_identity else augment


def learning_rate_schedule(config: TrainConfig, total_steps: int):
    """The learning rate of `config` as a float or an optax schedule over `total_steps`."""
    total_steps = max(int(total_steps), 1)
    peak = config.learning_rate
    warmup = min(config.warmup_steps, total_steps - 1) or 1
    if config.schedule == "constant":
        return peak
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(peak, total_steps)
    if config.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total_steps)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup),
         optax.linear_schedule(peak, 0.0, max(total_steps - warmup, 1))], [warmup])


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax optimizer of a config; `total_steps` sets the length of decaying schedules."""
    lr = learning_rate_schedule(config, total_steps)
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay)
    base = (optax.adam(lr) if config.optimizer == "adam"
            else optax.sgd(lr, momentum=0.9, nesterov=config.optimizer == "nesterov"))
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), base)
    return base
