"""The devices a run uses, and its steps compiled for them: one device, `jax.pmap`, or
`jax.jit` over a Mesh.

`make_runner(kind, config, tx, scaling, scaling_params, train_take=..., eval_take=...)` builds
one train step and one eval step (`jaxscale.training.steps`), wraps them for the data source
(`steps.train_chunk`: every step of a chunk under `lax.scan`, each gathering its batch with
the source's `take`; on CPU devices a one-step program called per step, `StepByStep`) and
compiles them for the devices:

- "none": `jax.jit` on one device.
- "pmap": `jax.pmap` over local devices; the state is replicated, each device takes
  `batch_size / D` rows of every step, gradients and metrics are averaged with `lax.pmean`,
  BatchNorm averages its batch statistics over the pmap axis, so one step is the math of the
  whole global batch (dropout and augmentation draw per-device keys).
- "mesh": `jax.jit` over a 1-D `Mesh` (every device of every process): state and resident
  dataset replicated, each step's rows sharded over the "data" axis. The program is the
  single-device one; XLA partitions it and inserts the gradient all-reduce itself. This is the
  path that spans several processes.

Where the arrays go is the runner's `placement` (`jaxscale.data.sharding.Placement`). On CPU
devices the "none" and "mesh" programs get `jaxscale.cpu.step_compiler_options` (XLA's own
convolutions); `jax.pmap` takes no compiler options.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.cpu import step_compiler_options
from jaxscale.data.pipeline import ResidentSource
from jaxscale.data.sharding import PMAP_AXIS, Placement
from jaxscale.training.config import PARALLEL, TrainConfig
from jaxscale.training.models import get_model
from jaxscale.training.steps import (
    EVAL_SUMS,
    TRAIN_SUMS,
    eval_chunk,
    make_eval_step,
    make_train_step,
    train_chunk,
    zero_sums,
)

KINDS = PARALLEL
_PLACEMENT = {"none": "single", "pmap": "pmap", "mesh": "mesh"}


def resolve_parallel(parallel: str, devices: int | None = None) -> str:
    """The data parallelism of `TrainConfig.parallel`: itself, or for "auto" "mesh" across
    several processes or several accelerators (`devices` local ones; None: all), else "none".

    Host-platform CPU "devices" share the same cores: splitting a batch over them buys no
    speed, and their in-process all-reduce can time out on a loaded machine.
    """
    if parallel != "auto":
        if parallel not in KINDS:
            raise ValueError(f"parallel kind must be one of {KINDS} or 'auto', got "
                             f"{parallel!r}")
        return parallel
    count = devices or jax.local_device_count()
    accelerated = jax.devices()[0].platform != "cpu"
    return "mesh" if (count > 1 and accelerated) or jax.process_count() > 1 else "none"


def donated_state(devices) -> tuple[int, ...]:
    """`donate_argnums` of the train programs on `devices`: the state and running sums
    (arguments 0 and 1) on accelerators, where that frees a second copy of the parameters and
    optimizer state; nothing on CPU, where donation made the BN CNN's step slower."""
    return () if all(device.platform == "cpu" for device in devices) else (0, 1)


def select_devices(count: int | None = None) -> list:
    """The first `count` local devices (None: all)."""
    devices = jax.local_devices()
    if count is None:
        return devices
    if count > len(devices):
        raise ValueError(f"asked for {count} devices but only {len(devices)} are visible: "
                         f"{devices}")
    return devices[:count]


@dataclasses.dataclass(frozen=True)
class Runner:
    """A run's compiled programs and where their arrays live.

    Attributes:
      kind: "none", "pmap" or "mesh".
      model: the Flax module (built with the pmap axis name under "pmap").
      placement: the `Placement` of state, data and chunks.
      train: (state, sums, data, chunk, key) -> (state, sums): every step of a chunk.
      eval: (state, sums, data, chunk) -> sums: every eval step of a chunk.
    """

    kind: str
    model: Any
    placement: Placement
    train: Callable
    eval: Callable

    def put_state(self, state):
        """A host TrainState (or any replicated tree, e.g. running sums) on the devices."""
        return self.placement.replicate(state)

    def get_state(self, state):
        """One host copy (NumPy leaves) of a placed state."""
        return self.placement.to_host(state)

    def put_key(self, seed: int):
        """The run key `PRNGKey(seed)` where the train program takes it."""
        key = np.asarray(jax.random.PRNGKey(seed))
        return key if self.kind == "pmap" else self.placement.replicate(key)

    def train_sums(self):
        """Zeroed running sums of `train`, placed."""
        return self.put_state(jax.device_get(zero_sums(TRAIN_SUMS)))

    def eval_sums(self):
        """Zeroed running sums of `eval`, placed."""
        return self.put_state(jax.device_get(zero_sums(EVAL_SUMS)))


def make_runner(kind: str, config: TrainConfig, tx, scaling, scaling_params=None, *,
                num_classes: int = 10, devices: list | None = None,
                train_take: Callable = ResidentSource.take,
                eval_take: Callable = ResidentSource.take) -> Runner:
    """Compiles the train and eval programs of `config` for `kind` ("none", "pmap", "mesh").

    Args:
      kind: how to use the devices (resolve "auto" first: `resolve_parallel`).
      config: the TrainConfig (model, augment, label smoothing, dtype, batch sizes, devices).
      tx: the optax optimizer.
      scaling, scaling_params: ScalingConfig and fitted ScalingParams.
      num_classes: logits per image.
      devices: explicit devices (default: "none" the first local device, "pmap"
        `select_devices(config.devices)`, "mesh" the same, or every device of every process
        when there are several).
      train_take, eval_take: the `take` of the training and evaluation sources.

    Raises:
      ValueError: unknown kind, or a batch size that does not split evenly over the devices.
    """
    if kind not in KINDS:
        raise ValueError(f"parallel kind must be one of {KINDS}, got {kind!r}")
    if devices is None:
        if kind == "mesh" and jax.process_count() > 1:
            devices = jax.devices()
        else:
            devices = select_devices(1 if kind == "none" else config.devices)
    placement = Placement(_PLACEMENT[kind], tuple(devices)[:1] if kind == "none"
                          else tuple(devices))
    placement.check_batch(config.batch_size, "batch_size")
    placement.check_batch(config.eval_batch_size, "eval_batch_size")
    axis_name = PMAP_AXIS if kind == "pmap" else None
    model = get_model(config.model, num_classes, axis_name=axis_name,
                      dropout_rate=config.dropout_rate,
                      dtype=None if config.compute_dtype == "float32" else
                      jnp.dtype(config.compute_dtype))
    step = make_train_step(model, tx, scaling, scaling_params, config.augment,
                           label_smoothing=config.label_smoothing, axis_name=axis_name)
    evaluate = make_eval_step(model, scaling, scaling_params, axis_name=axis_name)
    # On CPU one program per step: under lax.scan XLA:CPU loses its fast convolutions (see
    # steps.train_chunk); a program of K written-out steps would be fast but fuses across
    # steps, rounding differently from K=1, and dispatch costs little next to a CPU step.
    on_cpu = all(device.platform == "cpu" for device in placement.devices)
    train_fn = train_chunk(step, train_take, scan=not on_cpu)
    eval_fn = eval_chunk(evaluate, eval_take)
    donate = donated_state(placement.devices)
    if kind == "pmap":
        devices = list(placement.devices)
        train = jax.pmap(train_fn, PMAP_AXIS, in_axes=(0, 0, 0, 0, None), devices=devices,
                         donate_argnums=donate)
        evaluate = jax.pmap(eval_fn, PMAP_AXIS, devices=devices)
    else:
        jit = functools.partial(jax.jit,
                                compiler_options=step_compiler_options(placement.devices))
        if kind == "none":
            train, evaluate = jit(train_fn, donate_argnums=donate), jit(eval_fn)
        else:
            replicated, rows = placement.replicated, placement.rows_sharding(1)
            train = jit(train_fn, in_shardings=(replicated, replicated, replicated, rows,
                                                replicated),
                        out_shardings=(replicated, replicated), donate_argnums=donate)
            evaluate = jit(eval_fn, in_shardings=(replicated, replicated, replicated, rows),
                           out_shardings=replicated)
    if on_cpu:
        train = StepByStep(train, step_axis=1 if kind == "pmap" else 0)
    return Runner(kind, model, placement, train=train, eval=evaluate)


@dataclasses.dataclass(frozen=True)
class StepByStep:
    """A chunk of K steps as K calls of the compiled one-step program (CPU devices).

    `__call__(state, sums, data, chunk, key)` has the chunk program's signature; `lower` is
    the one-step program's (for a chunk of one step).

    Attributes:
      program: the jitted or pmapped `train_chunk(..., scan=False)`.
      step_axis: the chunk's step axis (1 under pmap, after the device axis).
    """

    program: Callable
    step_axis: int = 0

    def __call__(self, state, sums, data, chunk, key):
        steps = jax.tree.leaves(chunk)[0].shape[self.step_axis]
        if steps == 1:
            return self.program(state, sums, data, chunk, key)
        for index in range(steps):
            state, sums = self.program(state, sums, data, self._step(chunk, index), key)
        return state, sums

    def _step(self, chunk, index: int):
        """Step `index` of the chunk, keeping the step axis (length 1)."""
        if self.step_axis == 0:
            # one compiled slice per chunk shape, the index an argument: an eager
            # `lax.slice_in_dim` compiles a program per static index (52 of them for a chunk
            # of 52 steps, seconds of a short run)
            return _chunk_step(chunk, np.int32(index))
        return jax.tree.map(lambda leaf: jax.lax.slice_in_dim(leaf, index, index + 1,
                                                              axis=self.step_axis), chunk)

    def lower(self, *args, **kwargs):
        return self.program.lower(*args, **kwargs)


@jax.jit
def _chunk_step(chunk, index):
    """Step `index` (int32[], traced) of a chunk whose leaves are [K, ...]: leaves [1, ...]."""
    return jax.tree.map(lambda leaf: jax.lax.dynamic_slice_in_dim(leaf, index, 1, axis=0),
                        chunk)
