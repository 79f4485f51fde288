"""The speedrun recipe's pieces: a small Flax CNN, its schedule, a pure train step, K steps per
dispatch, and evaluation on the device in one call.

Everything here is a pure function of a frozen `SpeedrunConfig` and arrays, so the same code
runs one step per dispatch or `lax.scan`s K of them, and phase 2 of issue 19 can move it into
`jaxscale.train` as it is. The timing harness is `benchmarks/speedrun.py`; the recipes
themselves (with their command and expected numbers) are in `RECIPES` at the end.

Data layout: the whole training set lives on the device as uint8[N, 28, 28, 1]; a batch is a
gather of rows inside the compiled step (`images[rows]`), scaled there with
`jaxscale.scaling.scale` and, when the recipe shifts, translated there too.

The network is the package's `jaxscale.training.models.SpeedrunNet`, built from
`jaxscale.training.layers` (whose `conv2d` keeps K scanned steps as fast as K single calls on
XLA:CPU; the module docstring says why).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxscale
from jaxscale.data.pipeline import epoch_batches, epoch_order, take_rows
from jaxscale.training.models import SpeedrunNet
from benchmarks.speedrun_config import RECIPES, SpeedrunConfig  # noqa: F401 (re-exported)

NUM_CLASSES = 10


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

def make_model(config: SpeedrunConfig) -> SpeedrunNet:
    """The recipe's network: the package's `SpeedrunNet` with the recipe's shape (also
    `jaxscale train --model speedrun_net`, and the trainer's recipes)."""
    return SpeedrunNet(num_classes=NUM_CLASSES, widths=config.widths, pools=config.pools,
                       hidden=config.hidden, kernel_size=config.kernel_size,
                       space_to_depth=config.space_to_depth, bn_momentum=config.bn_momentum,
                       bn_epsilon=config.bn_epsilon)


def lr_at(config: SpeedrunConfig, total_steps: int, step) -> jax.Array:
    """The learning rate of 0-based `step` (traceable): `SpeedrunConfig.lr_breakpoints`
    interpolated linearly, as the peers interpolate them."""
    xs, ys = config.lr_breakpoints(total_steps)
    return jnp.interp(jnp.asarray(step, jnp.float32), jnp.asarray(xs, jnp.float32),
                      jnp.asarray(ys, jnp.float32))


def optimizer(config: SpeedrunConfig, total_steps: int) -> optax.GradientTransformation:
    """Coupled weight decay, then SGD with Nesterov momentum on the schedule of `lr_at`."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(functools.partial(lr_at, config, total_steps), config.momentum,
                  nesterov=True))


# --------------------------------------------------------------------------------------------
# State, step, K steps per dispatch, evaluation
# --------------------------------------------------------------------------------------------

@flax.struct.dataclass
class TrainState:
    """Everything a step changes. `step` counts optimiser steps taken (int32 scalar)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


SCALING = jaxscale.scaling_config("normalize")  # x / 255, as the tutorial feeds the net


# XLA's RngBitGenerator instead of JAX's default threefry: XLA:CPU takes ~1.8 s to compile one
# threefry `jax.random.normal` here and ~0.2 s for the same draw from "rbg", and a cold run
# pays that for every initialiser (4.8 s for this net's init). The streams differ by backend,
# which a recipe does not mind (a run is deterministic on its backend).
KEY_IMPL = "rbg"


def run_key(seed) -> jax.Array:
    """The run's root key: `jax.random.key(seed, impl=KEY_IMPL)`."""
    return jax.random.key(seed, impl=KEY_IMPL)


def init_state(config: SpeedrunConfig, seed, image_shape=(28, 28, 1), *,
               total_steps: int) -> TrainState:
    """Parameters from `run_key(seed)` (split: the other half keys the steps).

    Traceable in `seed`: jit it with the rest static (`init_state_jit`), one compiled program
    instead of one per operation of `Module.init`.
    """
    init_key, _ = jax.random.split(run_key(seed))
    variables = make_model(config).init(init_key, jnp.zeros((1, *image_shape), jnp.float32))
    params = variables["params"]
    opt_state = optimizer(config, total_steps).init(params)
    return TrainState(jnp.zeros((), jnp.int32), params, variables["batch_stats"], opt_state)


init_state_jit = jax.jit(init_state, static_argnums=(0, 2), static_argnames="total_steps")


@jax.jit
def step_key(seed) -> jax.Array:
    """The key every step's randomness is folded from (the other half of `init_state`'s)."""
    return jax.random.split(run_key(seed))[1]


def random_shift(key: jax.Array, images: jax.Array, shift: int) -> jax.Array:
    """Translates each image by its own random (dy, dx) in [-shift, shift]^2, zero fill.

    float[N, H, W, C] -> same. Zero-padding then one gather of every image's window.
    """
    if shift == 0:
        return images
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * shift + 1)
    rows = offsets[:, 0, None] + jnp.arange(h)[None, :]          # [N, H]
    cols = offsets[:, 1, None] + jnp.arange(w)[None, :]          # [N, W]
    batch = jnp.arange(n)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def augmentation(config: SpeedrunConfig):
    """The recipe's `augment` keywords as a jaxscale AugmentConfig."""
    return jaxscale.augment_config(**dict(config.augment))


def loss_fn(config: SpeedrunConfig, params, batch_stats, images, labels):
    """Mean label-smoothed cross-entropy of a batch in train mode, and BN's new statistics."""
    logits, updates = make_model(config).apply({"params": params, "batch_stats": batch_stats},
                                           images, train=True, mutable=["batch_stats"])
    targets = optax.smooth_labels(jax.nn.one_hot(labels, NUM_CLASSES), config.label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, (updates["batch_stats"], logits)


def train_step(config: SpeedrunConfig, total_steps: int, state: TrainState,
               images: jax.Array, labels: jax.Array, rows: jax.Array, key: jax.Array
               ) -> tuple[TrainState, dict]:
    """One optimiser step on the batch `rows` of the device-resident training set. Pure.

    Args:
      config, total_steps: the recipe and its schedule's length (static).
      state: the current TrainState.
      images: uint8[N, H, W, C], the whole training set (on the device).
      labels: int32[N].
      rows: int32[B], this step's rows of the training set.
      key: the step key; the augmentation's key is fold_in(key, state.step).

    Returns:
      (new state, {"loss": float32[], "correct": int32[]} of this batch before the update).
    """
    batch = take_rows(images, labels, rows)
    x = jaxscale.scaling.scale(batch.images, SCALING)
    step_key = jax.random.fold_in(key, state.step)
    x = random_shift(step_key, x, config.shift)
    if config.augment:
        x = jaxscale.augmentation.augment(jax.random.fold_in(step_key, 1), x,
                                          augmentation(config))
    y = batch.labels
    (loss, (batch_stats, logits)), grads = jax.value_and_grad(
        functools.partial(loss_fn, config), has_aux=True)(state.params, state.batch_stats, x, y)
    updates, opt_state = optimizer(config, total_steps).update(grads, state.opt_state,
                                                               state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "correct": (logits.argmax(-1) == y).sum()}
    return TrainState(state.step + 1, params, batch_stats, opt_state), metrics


def train_steps(config: SpeedrunConfig, total_steps: int, state: TrainState,
                images: jax.Array, labels: jax.Array, rows: jax.Array, key: jax.Array
                ) -> tuple[TrainState, dict]:
    """K train steps in one call: `lax.scan` of `train_step` over rows int32[K, B].

    Returns the state after the K steps and each metric stacked over the steps ([K]).
    """
    def body(carry, step_rows):
        return train_step(config, total_steps, carry, images, labels, step_rows, key)

    return jax.lax.scan(body, state, rows)


def evaluate(config: SpeedrunConfig, params, batch_stats, images: jax.Array,
             labels: jax.Array) -> jax.Array:
    """Number of correctly classified images, on the device in one call (BatchNorm's running
    averages). images uint8[N, H, W, C], labels int32[N]; N a multiple of eval_batch_size or
    smaller than it. Returns int32[]."""
    n = images.shape[0]
    chunk = min(config.eval_batch_size, n)
    if n % chunk:
        raise ValueError(f"{n} evaluation images are not a multiple of eval_batch_size {chunk}")
    model = make_model(config)

    def correct(batch):
        x, y = batch
        logits = model.apply({"params": params, "batch_stats": batch_stats},
                             jaxscale.scaling.scale(x, SCALING), train=False)
        return (logits.argmax(-1) == y).sum()

    batches = (images.reshape(n // chunk, chunk, *images.shape[1:]),
               labels.reshape(n // chunk, chunk))
    return jax.lax.map(correct, batches).sum()


def epoch_rows(seed: int, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
    """int32[S, B]: epoch `epoch`'s order (jaxscale's `epoch_order`, the same on every
    backend) cut into S = N // B batches, the remainder dropped."""
    rows, _ = epoch_batches(epoch_order(seed, epoch, num_examples), batch_size,
                            drop_remainder=True)
    return rows
