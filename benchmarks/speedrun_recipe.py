"""The speedrun recipe's pieces: a small Flax CNN, its schedule, a pure train step, K steps per
dispatch, and evaluation on the device in one call.

Everything here is a pure function of a frozen `SpeedrunConfig` and arrays, so the same code
runs one step per dispatch or `lax.scan`s K of them, and phase 2 of issue 19 can move it into
`jaxscale.train` as it is. The timing harness is `benchmarks/speedrun.py`; the recipes
themselves (with their command and expected numbers) are in `RECIPES` at the end.

Data layout: the whole training set lives on the device as uint8[N, 28, 28, 1]; a batch is a
gather of rows inside the compiled step (`images[rows]`), scaled there with
`jaxscale.scaling.scale` and, when the recipe shifts, translated there too.

Why the convolution is written by hand (`conv2d`): XLA:CPU (jaxlib 0.10) rewrites the weight
gradient of a convolution into the layout its Eigen kernels want only outside loops. Inside a
`while` body (`lax.scan` that is not fully unrolled) it stays in the form `jax.grad` emits and
is run as a naive loop nest: a train step of this net ran 5-20x slower inside `lax.scan` than
dispatched on its own (jax-ml/jax#12868 is the same effect for forward convolutions).
`conv2d` gives JAX the backward convolutions already in that layout (NHWC x HWIO -> NHWC), so
K steps in one `lax.scan` cost what K single dispatches cost.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxscale
from jaxscale.data.pipeline import epoch_batches, epoch_order, take_rows
from benchmarks.speedrun_config import RECIPES, SpeedrunConfig  # noqa: F401 (re-exported)

NUM_CLASSES = 10
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


# --------------------------------------------------------------------------------------------
# The convolution and the model
# --------------------------------------------------------------------------------------------

def _conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                        dimension_numbers=_DIMENSIONS)


def conv2d_xla_vjp(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`conv2d` with JAX's own gradient (what `speedrun_ablations` times the recipe against)."""
    return _conv(x, kernel, "VALID")


@jax.custom_vjp
def conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A stride-1 VALID convolution whose gradients are convolutions in the canonical layout.

    Args:
      x: float[N, H, W, C_in].
      kernel: float[kh, kw, C_in, C_out].

    Returns:
      float[N, H - kh + 1, W - kw + 1, C_out], the same numbers as
      `lax.conv_general_dilated(x, kernel, (1, 1), "VALID")`.
    """
    return _conv(x, kernel, "VALID")


def _conv2d_forward(x, kernel):
    return _conv(x, kernel, "VALID"), (x, kernel)


def _conv2d_backward(residuals, grad):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    # d/dx: the full correlation of the output gradient with the flipped kernel, in and out
    # channels swapped.
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    grad_x = _conv(grad, flipped, ((kh - 1, kh - 1), (kw - 1, kw - 1)))
    # d/dkernel[a, b, i, o] = sum_{n,h,w} x[n, h+a, w+b, i] grad[n, h, w, o]: a convolution
    # whose "batch" is C_in and whose contracted "feature" axis is N.
    grad_kernel = _conv(x.transpose(3, 1, 2, 0), grad.transpose(1, 2, 0, 3), "VALID")
    return grad_x, grad_kernel.transpose(1, 2, 0, 3)


conv2d.defvjp(_conv2d_forward, _conv2d_backward)


def space_to_depth(x: jax.Array, block: int) -> jax.Array:
    """float[N, H, W, C] -> [N, H/block, W/block, block*block*C] (each block's pixels as
    channels, row-major within the block). block 1 returns x."""
    if block == 1:
        return x
    n, h, w, c = x.shape
    if h % block or w % block:
        raise ValueError(f"space_to_depth block {block} does not divide image size {h}x{w}")
    x = x.reshape(n, h // block, block, w // block, block, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // block, w // block, block * block * c)


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max pool, stride 2, odd edges dropped (as `VALID` pooling): float[N, H, W, C] ->
    [N, H // 2, W // 2, C]. A reshape and a max: XLA:CPU differentiates it ~6x faster than
    `reduce_window` (whose gradient is a select-and-scatter)."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class SpeedrunNet(nn.Module):
    """space-to-depth, then [conv3x3 (no bias) - BatchNorm - ReLU - (2x2 max pool)] per width,
    flatten, [Dense(hidden) (no bias) - BatchNorm - ReLU] when hidden > 0, Dense(num_classes).

    Takes float32[N, H, W, C] (scaled) and returns float32 logits [N, num_classes]. `train`
    switches BatchNorm to batch statistics (and makes `batch_stats` mutable).

    Attributes:
      config: the recipe; its widths, pools, hidden, kernel_size, space_to_depth,
        bn_momentum and bn_epsilon define the net (see `SpeedrunConfig`).
      num_classes: logits per image.
    """

    config: SpeedrunConfig
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = self.config
        x = space_to_depth(x, c.space_to_depth)
        init = nn.initializers.lecun_normal()
        k = c.kernel_size
        for i, (width, pool) in enumerate(zip(c.widths, c.pools)):
            kernel = self.param(f"conv{i}", init, (k, k, x.shape[-1], width))
            x = conv2d(x, kernel)
            x = nn.BatchNorm(use_running_average=not train, momentum=c.bn_momentum,
                             epsilon=c.bn_epsilon, name=f"bn{i}")(x)
            x = nn.relu(x)
            if pool:
                x = max_pool2(x)
        x = x.reshape(x.shape[0], -1)
        if c.hidden:
            x = nn.Dense(c.hidden, use_bias=False, name="hidden")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=c.bn_momentum,
                             epsilon=c.bn_epsilon, name="bn_hidden")(x)
            x = nn.relu(x)
        return nn.Dense(self.num_classes, name="head")(x)


def make_model(config: SpeedrunConfig) -> SpeedrunNet:
    """The recipe's network."""
    return SpeedrunNet(config)


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
