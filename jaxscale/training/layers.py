"""Layers of the speedrun network that XLA runs fast on every backend, CPU included.

Pure functions of arrays; `jaxscale.training.models.SpeedrunNet` is built from them.

Why the convolution has its own gradient (`conv2d`): XLA:CPU (jaxlib 0.10) rewrites the
weight gradient of a convolution into the layout its Eigen kernels want only outside loops.
Inside a `while` body (a `lax.scan` that is not unrolled) it stays in the form `jax.grad`
emits and runs as a naive loop nest, many times slower (jax-ml/jax#12868 is the same effect
for forward convolutions). `conv2d` hands JAX both backward convolutions already in the
canonical layout (NHWC x HWIO -> NHWC), so K steps in one `lax.scan` cost what K single calls
cost. The numbers are those of `lax.conv_general_dilated`'s own gradient up to float rounding
(the sums run in another order).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                        dimension_numbers=_DIMENSIONS)


@jax.custom_vjp
def conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A stride-1 VALID convolution whose gradients are convolutions in the canonical layout.

    Args:
      x: float[N, H, W, C_in].
      kernel: float[kh, kw, C_in, C_out], the same dtype.

    Returns:
      float[N, H - kh + 1, W - kw + 1, C_out], the numbers of
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
    """float[N, H, W, C] -> [N, H/block, W/block, block*block*C]: each block's pixels as
    channels, row-major within the block. block 1 returns x.

    Raises:
      ValueError: block does not divide H and W.
    """
    if block == 1:
        return x
    n, h, w, c = x.shape
    if h % block or w % block:
        raise ValueError(f"space_to_depth block {block} does not divide image size {h}x{w}")
    x = x.reshape(n, h // block, block, w // block, block, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // block, w // block, block * block * c)


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max pool, stride 2, odd edges dropped (as VALID pooling): float[N, H, W, C] ->
    [N, H // 2, W // 2, C]. A reshape and a max: XLA:CPU differentiates it several times
    faster than `reduce_window`, whose gradient is a select-and-scatter."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
