"""Pure train and eval steps, and the chunk functions that run several of them per dispatch.

A step takes the *uint8* batch: augmentation (train only) and scaling run inside the same
compiled program as the forward and backward pass, so there is no preprocessing pass and no
host round trip per step.

Randomness: one run key `PRNGKey(seed)`; each step folds in `state.step` (so a resumed run
draws the same dropout masks and augmentations as an uninterrupted one) and, under pmap, the
device index, then splits it into an augmentation key and a dropout key.

`train_chunk` / `eval_chunk` wrap a step for a data source (`jaxscale.data.pipeline`): one
call runs every step of a chunk [K, ...] under `lax.scan`, gathering each batch with the
source's `take`, and adds the steps' metrics to running sums kept on the device. (On CPU the
runner calls a one-step program per step instead: `train_chunk(scan=False)`.)
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from jaxscale.augmentation import AugmentConfig
from jaxscale.augmentation import augment as apply_augmentation
from jaxscale.scaling import ScalingConfig, ScalingParams, scale
from jaxscale.training.config import resolve_augment


@flax.struct.dataclass
class TrainState:
    """What a step updates. All leaves are arrays, so it can be replicated or checkpointed.

    Attributes:
      step: int32[] steps taken.
      params: the model's parameters.
      batch_stats: BatchNorm running means/variances ({} for models without BN).
      opt_state: the optax optimizer state.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def create_train_state(model: flax.linen.Module, tx: optax.GradientTransformation,
                       image_shape: tuple[int, int, int], key: jax.Array) -> TrainState:
    """Initial state of `model` for images of `image_shape` (H, W, C), from `key`.

    The initialisation is one compiled program: run op by op, every initialiser's random draw
    compiles on its own (seconds on XLA:CPU for a small net)."""
    init = jax.jit(functools.partial(model.init, train=False))
    variables = init({"params": key}, jnp.zeros((1, *image_shape), jnp.float32))
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params))


def _step_keys(key: jax.Array, step: jax.Array, axis_name: str | None):
    key = jax.random.fold_in(key, step)
    if axis_name is not None:
        # Each device's shard needs its own masks and transforms.
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    augment_key, dropout_key = jax.random.split(key)
    return augment_key, dropout_key


def _variables(state: TrainState) -> dict:
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def make_train_step(model: flax.linen.Module, tx: optax.GradientTransformation,
                    scaling: ScalingConfig, scaling_params: ScalingParams | None = None,
                    augment: AugmentConfig | str | None = None, *,
                    label_smoothing: float = 0.0, axis_name: str | None = None) -> Callable:
    """A pure train step: augment (if any) + scale + forward/backward + optax update.

    Returns `train_step(state, images, labels, key) -> (state, metrics)`, where

    - images: uint8[B, H, W, C] (one device's shard under pmap);
    - labels: int32[B];
    - key: the run key (the step folds in `state.step`, and the device index under pmap);
    - metrics: {"loss": float32[], "accuracy": float32[]}, means over the global batch (the
      loss without label smoothing, so runs with and without it compare).

    Not jitted: `jaxscale.training.runners.make_runner` compiles it for the devices. Under pmap
    pass `axis_name` (and build the model with the same `axis_name`): gradients and metrics
    are averaged with `lax.pmean`, BatchNorm statistics over the axis. `augment` is what
    `TrainConfig.augment` takes (None, "seed" or an AugmentConfig).
    """
    augment_config = resolve_augment(augment)

    def train_step(state: TrainState, images, labels, key):
        augment_key, dropout_key = _step_keys(key, state.step, axis_name)
        x = images
        if augment_config is not None:
            x = apply_augmentation(augment_key, x, augment_config)
        x = scale(x, scaling, scaling_params)

        def loss_fn(params):
            logits, updates = model.apply(dict(_variables(state), params=params), x,
                                          train=True, rngs={"dropout": dropout_key},
                                          mutable=["batch_stats"])
            if label_smoothing:
                targets = optax.smooth_labels(
                    jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32),
                    label_smoothing)
                loss = optax.softmax_cross_entropy(logits, targets).mean()
            else:
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (logits, updates.get("batch_stats", {}))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        plain = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() \
            if label_smoothing else loss
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            plain, accuracy = jax.lax.pmean((plain, accuracy), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                               opt_state=opt_state)
        return new_state, {"loss": plain, "accuracy": accuracy}

    return train_step


def make_eval_step(model: flax.linen.Module, scaling: ScalingConfig,
                   scaling_params: ScalingParams | None = None, *,
                   axis_name: str | None = None) -> Callable:
    """A pure eval step (never augments; BatchNorm uses its running statistics).

    Returns `eval_step(state, images, labels, mask) -> sums` with images uint8[B, H, W, C],
    labels int32[B], mask bool[B] (False rows are padding and count nothing), and sums
    {"loss_sum", "correct", "count"} float32[] (summed over the axis under pmap).
    """

    def eval_step(state: TrainState, images, labels, mask):
        logits = model.apply(_variables(state), scale(images, scaling, scaling_params),
                             train=False)
        weight = mask.astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        sums = {"loss_sum": jnp.sum(losses * weight),
                "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * weight),
                "count": jnp.sum(weight)}
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return sums

    return eval_step


TRAIN_SUMS = ("loss", "accuracy", "steps")
EVAL_SUMS = ("loss_sum", "correct", "count")


def zero_sums(names: tuple[str, ...] = TRAIN_SUMS) -> dict:
    """Zeros for the running sums of `train_chunk` (or `eval_chunk`): float32[] (float64[]
    when jax_enable_x64 is on)."""
    dtype = jnp.result_type(float)
    return {name: jnp.zeros((), dtype) for name in names}


def _add(sums: dict, values: dict) -> dict:
    """sums + values, in the sums' dtype (whatever the model computes in)."""
    return {name: sums[name] + jnp.asarray(values[name]).astype(sums[name].dtype)
            for name in sums}


def train_chunk(train_step: Callable, take: Callable, *, scan: bool = True) -> Callable:
    """Every step of a chunk in one program: `run(state, sums, data, chunk, key)`.

    Args:
      train_step: from `make_train_step`.
      take: the source's `take(data, chunk_step) -> Batch` (`ResidentSource.take` gathers
        rows of the resident dataset, `HostSource.take` returns the streamed batch).
      scan: run the steps under `lax.scan`. False writes them out one after another (the
        chunk's leading axis is static) and is what a chunk of one step should use on CPU:
        XLA:CPU compiles the weight-gradient convolutions inside a loop body in a layout its
        fast convolutions do not take and falls back to a naive loop, so the BN CNN's step
        ran several times slower under a `lax.scan`, even of length 1 (see
        `runners.make_runner`).

    Returns:
      `run(state, sums, data, chunk, key) -> (state, sums)`: `train_step` over the chunk's
      leading axis; `sums` ({"loss", "accuracy", "steps"} float32[]) gains each step's
      metrics and 1 step.
    """

    def body(carry, chunk_step, data, key):
        state, sums = carry
        batch = take(data, chunk_step)
        state, metrics = train_step(state, batch.images, batch.labels, key)
        return (state, _add(sums, dict(metrics, steps=jnp.float32(1)))), None

    def run(state, sums, data, chunk, key):
        carry = (state, sums)
        if scan:
            carry, _ = jax.lax.scan(lambda c, x: body(c, x, data, key), carry, chunk)
        else:
            for index in range(jax.tree.leaves(chunk)[0].shape[0]):
                step_input = jax.tree.map(lambda leaf: leaf[index], chunk)
                carry, _ = body(carry, step_input, data, key)
        return carry

    return run


def eval_chunk(eval_step: Callable, take: Callable) -> Callable:
    """Every eval step of a chunk in one program: `run(state, sums, data, chunk) -> sums`,
    adding each step's {"loss_sum", "correct", "count"} (see `train_chunk`)."""

    def run(state, sums, data, chunk):
        def body(sums, chunk_step):
            batch = take(data, chunk_step)
            return _add(sums, eval_step(state, batch.images, batch.labels, batch.mask)), None

        sums, _ = jax.lax.scan(body, sums, chunk)
        return sums

    return run
