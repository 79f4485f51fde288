"""Data parallelism for the train/eval steps: one device, `jax.pmap`, or `jax.jit` over a Mesh.

`make_runner(kind, config, tx, scaling, scaling_params)` returns a `Runner` whose `train` /
`eval` run one fused, compiled step (gather the batch rows from the device-resident uint8
dataset, augment, scale, forward/backward, update) however the devices are used:

- "none": `jax.jit` on one device.
- "pmap": `jax.pmap` over local devices; the state is replicated, each device takes
  `batch_size / D` rows, gradients and metrics are averaged with `lax.pmean`, BatchNorm
  averages its batch statistics over the pmap axis (`AXIS`), so one step is the math of the
  whole global batch (dropout and augmentation draw per-device keys).
- "mesh": `jax.jit` with a 1-D `Mesh` named "data": state and dataset replicated
  (`NamedSharding(mesh, P())`), each step's batch rows sharded over "data"
  (`NamedSharding(mesh, P("data"))`). The program is the single-device one; XLA partitions it
  and inserts the gradient all-reduce itself. This is the direction JAX is taking, and the
  path that spans several processes (`train_batch` with `distributed.global_batch_from_local`).

On CPU devices the "none" and "mesh" steps are compiled with
`compiler_options.step_compiler_options` (XLA's own convolutions instead of YNNPACK's, ~1.5x
faster steps on CPU); `jax.pmap` takes no compiler options, so "pmap" keeps XLA's defaults
(it is the accelerator path).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxscale import models
from jaxscale.cpu import step_compiler_options
from jaxscale.training import TrainConfig, make_eval_step, make_train_step

AXIS = "batch"  # pmap axis name (gradients, metrics and BatchNorm statistics)
MESH_AXIS = "data"
KINDS = ("none", "pmap", "mesh")


@dataclasses.dataclass(frozen=True)
class Runner:
    """Compiled steps and data placement for one way of using the devices.

    Attributes:
      kind: "none", "pmap" or "mesh".
      model: the Flax module (built with the pmap axis name under "pmap").
      devices: the devices used.
      put_state: host TrainState -> placed (replicated) state.
      get_state: placed state -> host TrainState (one copy, NumPy leaves).
      put_data: (images uint8[N, H, W, C], labels int32[N]) -> resident data.
      put_indices: int32/bool[S, B] per-step rows -> placed (split over devices).
      train: (state, data, indices, s, key) -> (state, metrics): step on rows indices[s].
      eval: (state, data, indices, mask, s) -> sums of eval_step on rows indices[s].
      train_batch: (state, images[B], labels[B], key) -> (state, metrics): step on a batch
        already placed (global arrays on the mesh, [D, B/D, ...] under pmap).
      eval_batch: (state, images[B], labels[B], mask[B]) -> sums, on a placed batch.
      batch_sharding: where "mesh" wants a global batch (rows over "data"); None otherwise.
    """

    kind: str
    model: Any
    devices: tuple
    put_state: Callable
    get_state: Callable
    put_data: Callable
    put_indices: Callable
    train: Callable
    eval: Callable
    train_batch: Callable
    eval_batch: Callable
    batch_sharding: Any = None


def donated_state(devices) -> tuple[int, ...]:
    """`donate_argnums` for the train steps on `devices`: the state (argument 0) on
    accelerators, where it frees a second copy of params and optimizer state; nothing on CPU.

    On XLA:CPU a donated state made the BN CNN's step ~20 % slower (batch 64 on this project's
    2-core host: ~780 vs ~930 images/s, interleaved), and host memory is not the constraint.
    """
    return () if all(device.platform == "cpu" for device in devices) else (0,)


def select_devices(count: int | None = None) -> list:
    """The first `count` local devices (None: all)."""
    devices = jax.local_devices()
    if count is None:
        return devices
    if count > len(devices):
        raise ValueError(f"asked for {count} devices but only {len(devices)} are visible: "
                         f"{devices}")
    return devices[:count]


def _fused(step):
    """A step on rows `indices[s]` of resident data: gather and step in one program."""
    def fused(state, data, indices, s, key):
        rows = indices[s]
        return step(state, jnp.take(data[0], rows, axis=0), jnp.take(data[1], rows, axis=0),
                    key)
    return fused


def _fused_eval(step):
    def fused(state, data, indices, mask, s):
        rows = indices[s]
        return step(state, jnp.take(data[0], rows, axis=0), jnp.take(data[1], rows, axis=0),
                    mask[s])
    return fused


def _host(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)


def make_runner(kind: str, config: TrainConfig, tx, scaling, scaling_params=None, *,
                num_classes: int = 10, devices: list | None = None) -> Runner:
    """Builds the compiled steps of `config` for `kind` ("none", "pmap", "mesh").

    Args:
      kind: how to use the devices.
      config: the TrainConfig (model, augment, dropout_rate, batch sizes, devices).
      tx: the optax optimizer.
      scaling, scaling_params: ScalingConfig and fitted ScalingParams.
      num_classes: logits per image.
      devices: explicit devices (default: `select_devices(config.devices)`; "none" uses the
        first).

    Raises:
      ValueError: unknown kind, or a batch size that does not split evenly over the devices.
    """
    if kind not in KINDS:
        raise ValueError(f"parallel kind must be one of {KINDS}, got {kind!r}")
    if devices is None and kind == "mesh" and jax.process_count() > 1:
        devices = jax.devices()  # the mesh spans every process's devices
    if devices is None:
        devices = select_devices(config.devices if kind != "none" else 1)
    devices = list(devices)
    if kind == "none":
        devices = devices[:1]
    count = len(devices)
    for name in ("batch_size", "eval_batch_size"):
        if kind != "none" and getattr(config, name) % count:
            raise ValueError(f"{name} {getattr(config, name)} does not split over {count} "
                             "devices")
    axis_name = AXIS if kind == "pmap" else None
    model = models.get_model(config.model, num_classes, axis_name=axis_name,
                             dropout_rate=config.dropout_rate)
    step = make_train_step(model, tx, scaling, scaling_params, config.augment,
                           axis_name=axis_name)
    eval_step = make_eval_step(model, scaling, scaling_params, axis_name=axis_name)
    if kind == "pmap":
        return _pmap_runner(model, devices, step, eval_step)
    if kind == "mesh":
        return _mesh_runner(model, devices, step, eval_step)
    device = devices[0]
    donate = donated_state(devices)
    jit = functools.partial(jax.jit, compiler_options=step_compiler_options(devices))
    put = lambda tree: jax.device_put(tree, device)  # noqa: E731
    return Runner(kind=kind, model=model, devices=tuple(devices), put_state=put,
                  get_state=jax.device_get, put_data=lambda x, y: put((x, y)),
                  put_indices=put,
                  train=jit(_fused(step), donate_argnums=donate),
                  eval=jit(_fused_eval(eval_step)),
                  train_batch=jit(step, donate_argnums=donate),
                  eval_batch=jit(eval_step))


def _pmap_runner(model, devices, step, eval_step) -> Runner:
    count = len(devices)
    donate = donated_state(devices)
    # pmap takes arrays whose leading axis is split one slice per device.
    leading = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))

    def replicate(tree):
        return jax.device_put(jax.tree_util.tree_map(
            lambda x: np.broadcast_to(np.asarray(x)[None], (count, *np.shape(x))), tree),
            leading)

    def put_indices(indices):
        # [S, B] -> [D, S, B / D]: device d takes columns d*B/D ... (d+1)*B/D - 1.
        indices = np.asarray(indices)
        split = indices.reshape(indices.shape[0], count, -1).transpose(1, 0, 2)
        return jax.device_put(np.ascontiguousarray(split), leading)

    def put_data(images, labels):
        return replicate((images, labels))

    return Runner(
        kind="pmap", model=model, devices=tuple(devices),
        put_state=replicate,
        get_state=lambda state: jax.tree_util.tree_map(lambda x: np.asarray(x[0]), state),
        put_data=put_data, put_indices=put_indices,
        train=jax.pmap(_fused(step), AXIS, in_axes=(0, 0, 0, None, None),
                       devices=devices, donate_argnums=donate),
        eval=jax.pmap(_fused_eval(eval_step), AXIS, in_axes=(0, 0, 0, 0, None),
                      devices=devices),
        train_batch=jax.pmap(step, AXIS, in_axes=(0, 0, 0, None), devices=devices,
                             donate_argnums=donate),
        eval_batch=jax.pmap(eval_step, AXIS, devices=devices))


def data_mesh(devices) -> Mesh:
    """A 1-D mesh named "data" over `devices`."""
    return Mesh(np.asarray(devices), (MESH_AXIS,))


def _mesh_runner(model, devices, step, eval_step) -> Runner:
    mesh = data_mesh(devices)
    replicated = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P(MESH_AXIS))
    per_step_rows = NamedSharding(mesh, P(None, MESH_AXIS))
    donate = donated_state(devices)
    jit = functools.partial(jax.jit, compiler_options=step_compiler_options(devices))

    def constrained(fused):
        def run(state, data, indices, *rest):
            return fused(state, data, jax.lax.with_sharding_constraint(indices, per_step_rows),
                         *rest)
        return run

    train = jit(constrained(_fused(step)),
                in_shardings=(replicated, replicated, per_step_rows, None, replicated),
                out_shardings=(replicated, replicated), donate_argnums=donate)
    evaluate = jit(constrained(_fused_eval(eval_step)),
                   in_shardings=(replicated, replicated, per_step_rows, per_step_rows, None),
                   out_shardings=replicated)
    train_batch = jit(step, in_shardings=(replicated, rows, rows, replicated),
                      out_shardings=(replicated, replicated), donate_argnums=donate)
    return Runner(kind="mesh", model=model, devices=tuple(devices),
                  put_state=lambda state: jax.device_put(state, replicated),
                  get_state=_host,
                  put_data=lambda x, y: jax.device_put((x, y), replicated),
                  put_indices=lambda indices: jax.device_put(indices, per_step_rows),
                  train=train, eval=evaluate, train_batch=train_batch,
                  eval_batch=jit(eval_step, in_shardings=(replicated, rows, rows, rows),
                                 out_shardings=replicated),
                  batch_sharding=rows)
