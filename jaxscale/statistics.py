"""Dataset statistics in one streaming pass, on device, mergeable across batches, devices, hosts.

A `DatasetStats` holds, for every entry of its statistic shape, the number of images seen, the
mean and the sum of squared deviations M2. Two of them combine exactly with the pairwise update
of Chan, Golub & LeVeque (1979)::

    n = nA + nB,  d = meanB - meanA,  mean = meanA + d * nB / n,  M2 = M2A + M2B + d^2 nA nB / n

so statistics of a whole dataset equal the merge of statistics of any split of it: batch by
batch, device by device (`allreduce_stats` inside `pmap`/`shard_map`) and host by host.

Precision. Values are float32, but a long chain of merges (a thousand batches of 64) would lose
about sqrt(k) float32 roundings in the running mean. Mean and M2 are therefore kept as
unevaluated float32 sums hi + lo ("double-float"), updated with error-free TwoSum, which keeps
the result within a few float32 roundings of the float64 answer whatever the split. Inside a
batch, each image's statistics are computed two-pass and images are merged as a balanced tree.

Speed. `compute_stats` folds a whole array on device with one compiled `lax.scan` over steps
of about 2M values (`fold_batches`), and per-image sums go through `reductions.sum_middle_axis`
(a matrix-vector product on CPU, where XLA's own reduction is a scalar loop).

Counts are int32 numbers of *images* (2.1e9 images, far past ImageNet), and
`elements_per_image` (static) says how many values of an image fall into each entry, so the
per-entry element count (2.1e9 * H * W) never overflows.

Scopes (which axes are reduced, with channels_last names):

- ``"channel"``: per channel, reducing N, H, W. Keras' ``featurewise_*``. Shape [C].
- ``"pixel"``: per pixel and channel, reducing N. Shape [H, W, C].
- ``"global"``: one number, reducing N, H, W, C. Shape [].
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.reductions import fused_reduction_options, sum_middle_axis
from jaxscale.validation import DataFormat, check_data_format, check_images

Scope = Literal["channel", "pixel", "global"]
SCOPES = ("channel", "pixel", "global")
FORMAT_VERSION = 1


@flax.struct.dataclass
class DatasetStats:
    """Count, mean and M2 of a set of images, per entry of a statistic shape S.

    Attributes:
      count: int32[] number of images merged so far.
      mean_hi, mean_lo: float32[*S]; the mean is mean_hi + mean_lo.
      m2_hi, m2_lo: float32[*S]; the sum of squared deviations from the mean is m2_hi + m2_lo.
      elements_per_image: static; how many values of one image fall into each entry
        (H*W for "channel", 1 for "pixel", H*W*C for "global").
      scope: static; "channel", "pixel" or "global".
    """

    count: jax.Array
    mean_hi: jax.Array
    mean_lo: jax.Array
    m2_hi: jax.Array
    m2_lo: jax.Array
    elements_per_image: int = flax.struct.field(pytree_node=False, default=1)
    scope: str = flax.struct.field(pytree_node=False, default="channel")

    @property
    def mean(self) -> jax.Array:
        """float32[*S]: the mean of every entry (NaN where no image was seen)."""
        return jnp.where(self.count > 0, self.mean_hi + self.mean_lo, jnp.nan)

    @property
    def variance(self) -> jax.Array:
        """float32[*S]: population variance (ddof=0, as NumPy and Keras), >= 0."""
        elements = self.count.astype(jnp.float32) * self.elements_per_image
        m2 = jnp.maximum(self.m2_hi + self.m2_lo, 0.0)
        return jnp.where(self.count > 0, m2 / jnp.maximum(elements, 1.0), jnp.nan)

    @property
    def std(self) -> jax.Array:
        """float32[*S]: population standard deviation."""
        return jnp.sqrt(self.variance)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean_hi.shape)


def empty_stats(shape: tuple[int, ...], *, scope: Scope = "channel",
                elements_per_image: int = 1) -> DatasetStats:
    """Statistics of no images: the identity of `merge_stats`."""
    zeros = jnp.zeros(shape, jnp.float32)
    return DatasetStats(jnp.zeros((), jnp.int32), zeros, zeros, zeros, zeros,
                        elements_per_image=elements_per_image, scope=scope)


def _two_sum(a, b):
    """Error-free transformation: a + b == s + err exactly (Knuth's TwoSum)."""
    s = a + b
    b_virtual = s - a
    err = (a - (s - b_virtual)) + (b - b_virtual)
    return s, err


def merge_stats(a: DatasetStats, b: DatasetStats) -> DatasetStats:
    """Statistics of the union of two disjoint sets of images (Chan et al. pairwise merge).

    Works elementwise, so `a` and `b` may carry extra leading axes (e.g. a stack of per-image
    statistics), and either may be empty (count 0).

    Raises:
      ValueError: statistics of other scopes or image sizes (their counts weigh different
        numbers of values).
    """
    if (a.scope, a.elements_per_image) != (b.scope, b.elements_per_image):
        raise ValueError(
            f"cannot merge statistics of scope {a.scope!r} with {a.elements_per_image} values "
            f"per image and entry with scope {b.scope!r} with {b.elements_per_image}: they "
            "come from other statistics scopes or image sizes")
    count = a.count + b.count
    n = count.astype(jnp.float32)
    na = a.count.astype(jnp.float32)
    nb = b.count.astype(jnp.float32)
    weight_b = jnp.where(count > 0, nb / jnp.maximum(n, 1.0), 0.0)
    # expand the per-image counts over the statistic axes
    extra = a.mean_hi.ndim - count.ndim
    weight_b = weight_b.reshape(weight_b.shape + (1,) * extra)
    na_elems = (na * a.elements_per_image).reshape(weight_b.shape)

    delta = (b.mean_hi - a.mean_hi) + (b.mean_lo - a.mean_lo)
    hi, err = _two_sum(a.mean_hi, delta * weight_b)
    mean_hi, mean_lo = _two_sum(hi, a.mean_lo + err)

    # delta * (delta * w): with an empty side w = 0 gives 0 even where delta^2 overflows
    correction = b.m2_hi + delta * (delta * (na_elems * weight_b))
    hi, err = _two_sum(a.m2_hi, correction)
    m2_hi, m2_lo = _two_sum(hi, a.m2_lo + b.m2_lo + err)
    return DatasetStats(count, mean_hi, mean_lo, m2_hi, m2_lo,
                        elements_per_image=a.elements_per_image, scope=a.scope)


def merge_stacked_stats(stacked: DatasetStats) -> DatasetStats:
    """Merges statistics stacked along a leading axis [K, *S] into one, as a balanced tree.

    The tree keeps rounding error at O(log K) merges deep; Python recursion depth is only
    log2(K) levels at trace time, each a vectorised merge over half the stack.
    """
    while stacked.count.shape[0] > 1:
        k = stacked.count.shape[0]
        if k % 2:
            pad = jax.tree_util.tree_map(lambda x: jnp.zeros((1,) + x.shape[1:], x.dtype),
                                         stacked)
            stacked = jax.tree_util.tree_map(lambda x, p: jnp.concatenate([x, p]), stacked, pad)
        stacked = merge_stats(jax.tree_util.tree_map(lambda x: x[0::2], stacked),
                              jax.tree_util.tree_map(lambda x: x[1::2], stacked))
    return jax.tree_util.tree_map(lambda x: x[0], stacked)


def _to_channels_last(images, data_format: DataFormat):
    return images if data_format == "channels_last" else jnp.transpose(images, (0, 2, 3, 1))


def stat_shape(image_shape_hwc: tuple[int, int, int], scope: Scope) -> tuple[int, ...]:
    """Statistic shape for one channels_last image shape (H, W, C) under `scope`."""
    h, w, c = image_shape_hwc
    return {"channel": (c,), "pixel": (h, w, c), "global": ()}[scope]


def empty_stats_for(image_shape: tuple[int, ...], *, scope: Scope = "channel",
                    data_format: DataFormat = "channels_last") -> DatasetStats:
    """`empty_stats` for images of `image_shape` (one image, in `data_format`'s layout)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    shape = tuple(image_shape)
    h, w, c = shape if data_format == "channels_last" else (*shape[1:], shape[0])
    elements = {"channel": h * w, "pixel": 1, "global": h * w * c}[scope]
    return empty_stats(stat_shape((h, w, c), scope), scope=scope, elements_per_image=elements)


def batch_stats(images: jax.Array, *, scope: Scope = "channel",
                data_format: DataFormat = "channels_last",
                mask: jax.Array | None = None) -> DatasetStats:
    """Statistics of one batch, computed on device (jit-compatible).

    Args:
      images: uint8, int8, other integer or float[N, H, W, C] (or [N, C, H, W] with
        `channels_first`).
      scope: "channel", "pixel" or "global" (see module docstring).
      data_format: layout of `images`.
      mask: optional bool[N]; False rows (padding of a last partial batch) are not counted.

    Returns:
      DatasetStats with count = number of (unmasked) images, statistic shape [C], [H, W, C]
      or [] in channels_last order.

    8-bit integer images are summed exactly (`_exact_stats`); other integers and floats take
    the corrected two-pass per image, merged as a balanced tree. Inside jit nothing can be
    refused: statistics float32 cannot hold come out NaN or inf (integers beyond 2^24 as
    NaN), which `compute_stats` turns into an error (`check_stats_finite`).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    x = _to_channels_last(jnp.asarray(images), data_format)
    n, h, w, c = x.shape
    counts = (jnp.ones((n,), jnp.int32) if mask is None
              else jnp.asarray(mask).astype(jnp.int32))
    if scope == "pixel":
        grouped, elements = x.reshape(n, 1, h * w * c), 1
    elif scope == "channel":
        grouped, elements = x.reshape(n, h * w, c), h * w
    else:
        grouped, elements = x.reshape(n, h * w * c, 1), h * w * c
    if _exact_path(grouped.dtype, n, elements, grouped.shape[2], scope):
        stats = _exact_stats(grouped, counts, scope)
    else:
        stats = _float_stats(grouped, counts, scope)
    stat_shape = {"channel": (c,), "pixel": (h, w, c), "global": ()}[scope]
    stats = jax.tree_util.tree_map(lambda v: v.reshape(v.shape[:-1] + stat_shape)
                                   if v.ndim else v, stats)
    beyond = _beyond_exact_float32(x)
    if beyond is not None:
        # float32 would round these integers: NaN statistics, which compute_stats reports
        stats = stats.replace(mean_hi=jnp.where(beyond, jnp.nan, stats.mean_hi))
    return stats


# Integers of wider types than 16 bits are exact in float32 only up to 2^24.
EXACT_FLOAT32_INTEGER = 2 ** 24


def _beyond_exact_float32(x: jax.Array) -> jax.Array | None:
    """bool[]: whether an integer batch of a type wider than 16 bits holds a value beyond
    +-2^24 (float32 rounds those); None for types whose values are all exact."""
    if not jnp.issubdtype(x.dtype, jnp.integer) or np.dtype(x.dtype).itemsize <= 2:
        return None
    if jnp.issubdtype(x.dtype, jnp.unsignedinteger):
        return jnp.any(x > EXACT_FLOAT32_INTEGER)
    return jnp.any((x > EXACT_FLOAT32_INTEGER) | (x < -EXACT_FLOAT32_INTEGER))


# 8-bit integer images are summed exactly. Shifted by the dtype's midpoint (uint8 - 128, int8
# as is), every value d has |d| <= 2^7 and d^2 <= 2^14, so any sum of at most EXACT_TERMS =
# 2^10 of them stays <= 2^24: float32 holds every partial sum of d and of d^2 exactly,
# whatever order a backend adds them in. Two float32 stages of such sums (within images,
# then over blocks of images) leave a few thousand exact block sums, which int32 adds, the
# sums of squares as two 15-bit limbs. A batch entry may hold at most EXACT_MAX_VALUES values
# (2M-value steps are 2^21): the int32 bounds are in `_exact_stats`.
EXACT_SHIFT = {np.dtype(np.uint8): 128, np.dtype(np.int8): 0}
EXACT_TERMS = 2 ** 10
EXACT_MAX_VALUES = 2 ** 22
_LIMB = 15
# Stage one sums `rows` values of every image into lanes of about this many values, the
# width XLA:CPU's fused loops vectorise well over (MNIST: 7 rows of 112 lanes).
_LANES = 128


_MAX_BLOCK_SUMS = 2 ** 13  # block sums per entry whose low limbs int32 adds


def _exact_path(dtype, n: int, values: int, channels: int, scope: str) -> bool:
    if np.dtype(dtype) not in EXACT_SHIFT or n * values > EXACT_MAX_VALUES:
        return False
    if scope == "pixel":
        return True  # ceil(N / 2^10) <= 2^12 block sums
    lanes = _lanes(values, channels)
    images_per_block = max(1, EXACT_TERMS // (values // lanes))
    return -(-n // images_per_block) * lanes <= _MAX_BLOCK_SUMS


@functools.cache
def _lanes(values: int, channels: int) -> int:
    """Values of one image and channel per lane: a divisor L of `values` with
    values / L <= EXACT_TERMS and L * channels nearest _LANES."""
    divisors = {d for i in range(1, math.isqrt(values) + 1) if values % i == 0
                for d in (i, values // i)}
    candidates = [lanes for lanes in divisors if values // lanes <= EXACT_TERMS]
    return min(candidates, key=lambda lanes: abs(math.log2(lanes * channels / _LANES)))


def _block_sums(parts: jax.Array, block: int) -> jax.Array:
    """Sums of `block` consecutive rows of parts [R, ...] (the last block may be shorter):
    [ceil(R / block), ...]. Exact when every block's sum is an integer below 2^24."""
    rows = parts.shape[0]
    full = rows // block
    sums = [jnp.sum(parts[:full * block].reshape(full, block, *parts.shape[1:]), axis=1)]
    if rows % block:
        sums.append(jnp.sum(parts[full * block:], axis=0, keepdims=True))
    return sums[0] if len(sums) == 1 else jnp.concatenate(sums)


def _exact_stats(grouped: jax.Array, counts: jax.Array, scope: str) -> DatasetStats:
    """Statistics of an 8-bit integer batch [N, K, C] from exact integer sums.

    s1 = sum d and s2 = sum d^2 over the batch (d = x - shift) are exact (see EXACT_SHIFT),
    s2 = 2^15 H + L in int32 limbs. With q the integer nearest the mean of d and
    r = s1 - q T (T values, |r| <= T/2), Q = sum (d - q)^2 = s2 - q (s1 + r) is an exact
    integer, the mean is shift + q + r / T (an exact integer and one rounding) and
    M2 = Q - r^2 / T. For integer data with |r / T| <= 1/2, M2 >= r^2 / T, so the subtraction
    cancels at most half of Q: M2 is within ~5 float32 roundings of exact.

    int32 bounds, with N K <= 2^22 values per entry and |d| <= 2^7: |s1| <= 2^29 and
    T <= 2^22, so 2 s1 + T and q T fit; H <= s2 / 2^15 <= 2^21; at most 2^13 block sums
    (each <= 2^24) per entry are split (`_exact_path`), so L < 2^28.
    """
    n, k, c = grouped.shape
    shift = EXACT_SHIFT[np.dtype(grouped.dtype)]
    keep = counts.astype(bool)
    if scope == "pixel":
        # every entry's values are the batch's images: blocks of EXACT_TERMS images
        d = jnp.where(keep[:, None], grouped.reshape(n, c).astype(jnp.float32) - shift, 0.0)
        s1_parts = _block_sums(d, EXACT_TERMS)
        s2_parts = _block_sums(d * d, EXACT_TERMS)
    else:
        # stage one: each image's values as `rows` rows of `lanes` values per channel, summed
        # over the rows (exact: rows <= EXACT_TERMS); stage two: blocks of images
        lanes = _lanes(k, c)
        rows = k // lanes
        d = grouped.reshape(n, rows, lanes * c).astype(jnp.float32) - shift
        weight = keep[:, None].astype(jnp.float32)
        p1 = jnp.sum(d, axis=1) * weight
        p2 = jnp.sum(d * d, axis=1) * weight
        images_per_block = max(1, EXACT_TERMS // rows)
        s1_parts = _block_sums(p1, images_per_block).reshape(-1, c)
        s2_parts = _block_sums(p2, images_per_block).reshape(-1, c)
    # int32 throughout, also under jax_enable_x64 (where sums of int32 default to int64)
    s1_parts, s2_parts = s1_parts.astype(jnp.int32), s2_parts.astype(jnp.int32)
    s1 = jnp.sum(s1_parts, axis=0, dtype=jnp.int32)
    high = jnp.sum(s2_parts >> _LIMB, axis=0, dtype=jnp.int32)
    low = jnp.sum(s2_parts & ((1 << _LIMB) - 1), axis=0, dtype=jnp.int32)
    count = jnp.sum(counts, dtype=jnp.int32)
    total = jnp.maximum(count * k, 1)  # values per entry
    q = jnp.floor_divide(2 * s1 + total, 2 * total)
    r = s1 - q * total
    # Q = s2 - q t with t = s1 + r = 2^15 u + v: Q = 2^15 (H - q u) + (L - q v), the low
    # part's carry moved up so that both parts are exact in float32 (Q >= 0: a >= 0).
    t = s1 + r
    a = high - q * (t >> _LIMB)
    b = low - q * (t & ((1 << _LIMB) - 1))
    a, b = a + (b >> _LIMB), b & ((1 << _LIMB) - 1)
    moment = a.astype(jnp.float32) * np.float32(1 << _LIMB) + b.astype(jnp.float32)
    r_float = r.astype(jnp.float32)
    m2 = jnp.maximum(moment - r_float * r_float / total, 0.0)
    empty = count == 0
    mean_hi = jnp.where(empty, 0.0, (q + shift).astype(jnp.float32))
    mean_lo = jnp.where(empty, 0.0, r_float / total)
    m2 = jnp.where(empty, 0.0, m2)
    return DatasetStats(count, mean_hi, mean_lo, m2, jnp.zeros_like(m2),
                        elements_per_image=k, scope=scope)


def _float_stats(grouped: jax.Array, counts: jax.Array, scope: str) -> DatasetStats:
    """Per-image statistics (`_float_image_moments`), merged as a balanced tree."""
    n, k, c = grouped.shape
    if scope == "pixel":
        # one value per image and entry: its own exact mean (integers up to 2^24, floats)
        mean = grouped.reshape(n, c).astype(jnp.float32)
        mean_lo, m2 = jnp.zeros_like(mean), jnp.zeros_like(mean)
    else:
        mean, mean_lo, m2 = _float_image_moments(grouped.astype(jnp.float32))
    keep = counts.astype(bool)[:, None]
    mean, mean_lo, m2 = (jnp.where(keep, v, 0.0) for v in (mean, mean_lo, m2))
    per_image = DatasetStats(counts, mean, mean_lo, m2, jnp.zeros_like(m2),
                             elements_per_image=k, scope=scope)
    return merge_stacked_stats(per_image)


def _float_image_moments(grouped: jax.Array):
    """Per-image (mean_hi, mean_lo, M2), float32[N, C], of float32 images [N, K, C].

    The corrected two-pass algorithm (Chan, Golub & LeVeque 1983): with m the float32 mean
    and d = x - m, the exact mean is m + sum(d) / K and M2 = sum d^2 - (sum d)^2 / K, which
    removes the error of m from both (a constant image of 1e7 + 3 has M2 = 0, not K * 3^2).
    Sums go through `sum_middle_axis` (a GEMV on CPU). The batch is first scaled by a power
    of two that brings its largest magnitude near 1 (exact), so d^2 cannot overflow where
    M2 itself does not: only statistics float32 cannot hold come out inf, which
    `compute_stats` reports.
    """
    k = grouped.shape[1]
    largest = jnp.max(jnp.abs(grouped))
    _, exponent = jnp.frexp(jnp.where(largest > 0, largest, 1.0))
    # 2^-exponent as a product of two powers of two, each a normal float32
    half = exponent // 2
    down = (jnp.ldexp(jnp.float32(1), -half), jnp.ldexp(jnp.float32(1), half - exponent))
    up = (jnp.ldexp(jnp.float32(1), half), jnp.ldexp(jnp.float32(1), exponent - half))
    x = grouped * down[0] * down[1]
    first = sum_middle_axis(x) / k
    d = x - first[:, None, :]
    s1 = sum_middle_axis(d)
    correction = s1 / k
    mean_hi, mean_lo = _two_sum(first, correction)
    m2 = jnp.maximum(sum_middle_axis(d * d) - s1 * correction, 0.0)  # >= 0 exactly
    return ((mean_hi * up[0]) * up[1], (mean_lo * up[0]) * up[1],
            ((m2 * up[0]) * up[0]) * (up[1] * up[1]))


def update_stats(stats: DatasetStats, images: jax.Array, *,
                 data_format: DataFormat = "channels_last",
                 mask: jax.Array | None = None) -> DatasetStats:
    """`stats` merged with the statistics of one more batch (same scope). jit-compatible."""
    return merge_stats(stats, batch_stats(images, scope=stats.scope, data_format=data_format,
                                          mask=mask))


def allreduce_stats(stats: DatasetStats, axis_name) -> DatasetStats:
    """Merges the statistics held by every device along `axis_name` (inside pmap/shard_map).

    Every device ends with the statistics of all devices' data, bit-identical across devices.
    """
    gathered = jax.tree_util.tree_map(lambda x: jax.lax.all_gather(x, axis_name), stats)
    return merge_stacked_stats(gathered)


def merge_stats_across_hosts(stats: DatasetStats) -> DatasetStats:
    """Merges the statistics of every process of a multi-host job (outside jit).

    Each process passes its local statistics; all return the global ones. A single process
    gets its own statistics back.
    """
    if jax.process_count() == 1:
        return stats
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(stats, tiled=False)
    gathered = jax.tree_util.tree_map(jnp.asarray, gathered)
    return merge_stacked_stats(gathered)


# About 2M values (8 MiB as float32) per device step: on CPU the step's float32 temporaries
# then stay in cache (larger steps were slower: docs/performance.md); on accelerators it is
# still thousands of small images per step.
VALUES_PER_STEP = 2 ** 21
# Batches per host call when folding an array: one call (one compiled scan) covers MNIST.
BATCHES_PER_CALL = 64


def auto_batch_size(image_shape: tuple[int, ...]) -> int:
    """Images per step for images of `image_shape` (one image, any layout): ~2M values."""
    return max(1, VALUES_PER_STEP // max(1, math.prod(image_shape)))


def _fold_slice_body(carry, images, start, *, step, options, batch_size: int, length: int):
    """`carry` after `step` over images[start:start + length], `batch_size` rows at a time.

    Full batches run as one `lax.scan` reading the array in place; a shorter last batch runs
    once after it. Compiled once per (step, options, array shape, batch_size, length).
    """
    full = length // batch_size
    if full:
        def body(carry, i):
            batch = jax.lax.dynamic_slice_in_dim(images, start + i * batch_size, batch_size)
            return step(carry, batch, *options), None

        carry, _ = jax.lax.scan(body, carry, jnp.arange(full))
    if length % batch_size:
        tail = jax.lax.dynamic_slice_in_dim(images, start + full * batch_size,
                                            length % batch_size)
        carry = step(carry, tail, *options)
    return carry


_FOLD_STATIC = ("step", "options", "batch_size", "length")
_fold_slice = jax.jit(_fold_slice_body, static_argnames=_FOLD_STATIC)


@functools.cache
def _fold_program(platform: str):
    """The compiled fold for `platform`: on CPU with XLA's own fused reductions
    (`reductions.fused_reduction_options`), else `_fold_slice`."""
    options = fused_reduction_options(platform)
    if not options:
        return _fold_slice
    return jax.jit(_fold_slice_body, static_argnames=_FOLD_STATIC, compiler_options=options)


def fold_batches(step, carry, images, *, batch_size: int | None = None, options: tuple = (),
                 progress: bool = False, desc: str = "batches"):
    """Folds `step(carry, batch, *options) -> carry` over the batches of `images` on device.

    Args:
      step: a jittable function defined at module level (it is a static argument of `jit`:
        a new closure per call would recompile every time).
      carry: the initial pytree (e.g. `empty_stats(...)`).
      images: [N, ...] NumPy or JAX array; or an iterable of such batches (each batch is
        one step; one compilation per distinct batch shape).
      batch_size: rows per step for an array; None picks `auto_batch_size`.
      options: hashable extra arguments passed to `step` (static).
      progress: show a tqdm progress bar (images done).
      desc: the progress bar's label.

    Returns:
      (carry, number of rows seen).

    A device array is read in place, `BATCHES_PER_CALL` batches per host call (one compiled
    `lax.scan`); a NumPy array is transferred one call's rows at a time. No Python loop runs
    per batch; a call compiles once per length, so an array costs at most two compilations
    (full calls, and the shorter last one).
    """
    fold = _fold_program(jax.default_backend())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = images.shape[0] if hasattr(images, "shape") else None
        bar = tqdm(total=total, desc=desc, unit="img")
    seen = 0
    try:
        if hasattr(images, "shape"):
            n = images.shape[0]
            if batch_size is None:
                batch_size = auto_batch_size(tuple(images.shape[1:]))
            if batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch_size}")
            batch_size = min(batch_size, max(n, 1))
            per_call = batch_size * BATCHES_PER_CALL
            in_place = isinstance(images, jax.Array)
            for start in range(0, n, per_call):
                length = min(per_call, n - start)
                source = images if in_place else jnp.asarray(images[start:start + length])
                carry = fold(carry, source, start if in_place else 0, step=step,
                             options=options, batch_size=batch_size, length=length)
                seen += length
                if bar is not None:
                    bar.update(length)
        else:
            for batch in images:
                length = int(batch.shape[0])
                if length == 0:
                    continue
                carry = fold(carry, jnp.asarray(batch), 0, step=step, options=options,
                             batch_size=length, length=length)
                seen += length
                if bar is not None:
                    bar.update(length)
    finally:
        if bar is not None:
            bar.close()
    return carry, seen


def _stats_step(stats: DatasetStats, batch, data_format: DataFormat) -> DatasetStats:
    return update_stats(stats, batch, data_format=data_format)


def compute_stats(images, *, scope: Scope = "channel",
                  data_format: DataFormat = "channels_last",
                  batch_size: int | None = None, progress: bool = False) -> DatasetStats:
    """Statistics of a whole dataset in one streaming pass on the default device.

    Args:
      images: uint8, other integer or float[N, H, W, C] (or channels_first), a NumPy or JAX
        array; or an iterable of such batches of one image shape (a dataset that does not
        fit in memory).
      scope: "channel" (Keras' featurewise), "pixel" or "global".
      data_format: layout of `images`.
      batch_size: images per device step when `images` is one array; None: about 2M values
        per step (`auto_batch_size`). The result does not depend on it beyond float32
        rounding. uint8/int8 steps of at most EXACT_MAX_VALUES values per entry are summed
        exactly; larger steps take the float path.
      progress: show a tqdm progress bar.

    Returns:
      DatasetStats with statistic shape [C], [H, W, C] or [] (channels_last order).

    Raises:
      ValueError: bad rank/channels/dtype, no images, non-finite values, batches of another
        image shape, values the device types cannot hold (int64 beyond int32, float64
        beyond float32), integers beyond 2^24, or statistics that overflow float32.
    """
    check_data_format(data_format)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    first, images = checked_source(images, data_format, caller="compute_stats")
    stats = empty_stats_for(first.shape[1:], scope=scope, data_format=data_format)
    stats, seen = fold_batches(_stats_step, stats, images, batch_size=batch_size,
                               options=(data_format,), progress=progress,
                               desc=f"stats ({scope})")
    if seen == 0:
        raise ValueError("compute_stats got no images")
    check_stats_finite(stats, first.dtype, caller="compute_stats")
    return stats


def check_stats_finite(stats: DatasetStats, dtype, *, caller: str,
                       what: str = "images") -> None:
    """Raises ValueError when statistics came out NaN or inf (one device-to-host sync).

    The inputs were checked finite, so this is float32 running out of range (squares of
    values beyond ~1.8e19 overflow), or integers beyond 2^24 (`_beyond_exact_float32`).
    """
    finite = jnp.all(jnp.isfinite(stats.mean_hi + stats.mean_lo)) & jnp.all(
        jnp.isfinite(stats.m2_hi + stats.m2_lo))
    if bool(finite):
        return
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(
            f"{caller}: {what} ({dtype}) hold integers beyond +-2^24, which float32 (the "
            "statistics' type) rounds; subtract an offset or convert them to float first")
    raise ValueError(
        f"{caller}: the statistics of {what} ({dtype}) overflow float32: values beyond "
        "~1e19 square past its range (3.4e38). Scale the data down first (e.g. rescale)")


def checked_source(images, data_format: DataFormat, *, caller: str):
    """(first batch, images) for `fold_batches`, validated: an array is checked whole; a
    stream has its first batch taken (to learn the image shape) and put back, and every batch
    is checked as it arrives.

    Raises:
      ValueError: bad images (see `check_images`), or a stream with no batches.
    """
    if hasattr(images, "shape"):
        check_images(images, data_format)
        return images, images
    stream = iter(images)
    first = next(stream, None)
    if first is None:
        raise ValueError(f"{caller} got no images")
    check_images(first, data_format, name="first batch")

    def batches():
        yield first
        for index, batch in enumerate(stream, start=1):
            check_images(batch, data_format, name=f"batch {index}", allow_empty=True)
            if tuple(np.shape(batch))[1:] != tuple(np.shape(first))[1:]:
                raise ValueError(
                    f"{caller}: batch {index} has images of shape {tuple(np.shape(batch))[1:]}"
                    f" but the first batch had {tuple(np.shape(first))[1:]}: the statistics "
                    "of a dataset need one image shape (resize, or compute them per size)")
            yield batch

    return first, batches()


STATS_FIELDS = ("count", "mean_hi", "mean_lo", "m2_hi", "m2_lo")
STATS_KIND = "jaxscale.statistics"  # files from save_stats say what they hold
SCALING_KIND = "jaxscale.scaling"   # ... and so do scaling.save_scaling's


def save_stats(stats: DatasetStats, path: str | Path) -> None:
    """Writes statistics to `.npz` (exact) or `.json` (human-readable, float32 round-trips).

    Raises:
      ValueError: `stats` is not a DatasetStats, or the suffix is neither.
    """
    path = Path(path)
    if not isinstance(stats, DatasetStats):
        raise ValueError(f"save_stats takes a DatasetStats (from compute_stats), got "
                         f"{type(stats).__name__}")
    if path.suffix not in (".json", ".npz"):
        raise ValueError(f"statistics files end in .json or .npz, got {path.name!r}")
    fields = {name: np.asarray(getattr(stats, name)) for name in STATS_FIELDS}
    meta = {"kind": STATS_KIND, "format_version": FORMAT_VERSION, "scope": stats.scope,
            "elements_per_image": stats.elements_per_image}
    if path.suffix == ".json":
        doc = dict(meta, **{k: v.tolist() for k, v in fields.items()},
                   mean=np.asarray(stats.mean).tolist(), std=np.asarray(stats.std).tolist())
        path.write_text(json.dumps(doc, indent=2))
    else:
        np.savez(path, **fields, meta=json.dumps(meta))


def load_stats(path: str | Path) -> DatasetStats:
    """Reads statistics written by `save_stats`.

    Raises:
      ValueError: naming the file, when it cannot be read, holds something else (a scaling
        file, a list, other keys), or holds statistics that cannot be right (arrays of
        different shapes, a negative count or M2, NaN, an unknown scope).
    """
    path = Path(path)
    if path.suffix not in (".json", ".npz"):
        raise ValueError(f"statistics files end in .json or .npz, got {path.name!r}")
    if path.suffix == ".json":
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable statistics file ({error})") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: holds a JSON {type(doc).__name__}, not the object "
                             "save_stats writes")
        meta, raw = doc, doc
    else:
        meta, raw = read_saved_npz(path, "statistics")
    if meta.get("kind") == SCALING_KIND or "config" in meta:
        raise ValueError(f"{path}: holds a scaling config and its params (save_scaling), "
                         "not statistics: read it with load_scaling")
    missing = [k for k in (*STATS_FIELDS, "scope", "elements_per_image") if
               k not in raw and k not in meta]
    if missing:
        raise ValueError(f"{path}: not a statistics file: it lacks {missing}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported statistics format {meta.get('format_version')}")
    try:
        fields = {k: np.asarray(raw[k], np.float32) for k in STATS_FIELDS[1:]}
        count = np.asarray(raw["count"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: its statistics arrays are not numeric arrays of one shape "
                         f"({error})") from None
    return checked_loaded_stats(path, count, fields, meta["scope"], meta["elements_per_image"])


def read_saved_npz(path: Path, what: str) -> tuple[dict, dict]:
    """(meta, arrays) of a `.npz` written by save_stats or save_scaling (`scaling` reads its
    files with it too); a ValueError naming the file when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path}: not a readable {what} file ({error})") from None
    if "meta" not in arrays:
        raise ValueError(f"{path}: an .npz without the 'meta' entry save_stats and "
                         f"save_scaling write (it holds {sorted(arrays)})")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: its 'meta' entry is not JSON ({error})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its 'meta' entry is a {type(meta).__name__}, not an object")
    return meta, arrays


def checked_loaded_stats(path, count, fields: dict, scope, elements_per_image
                         ) -> DatasetStats:
    """DatasetStats from arrays read from `path`, refusing what save_stats never writes
    (shared with `scaling.load_scaling`)."""
    if scope not in SCOPES:
        raise ValueError(f"{path}: unknown statistics scope {scope!r}; known: {SCOPES}")
    if isinstance(elements_per_image, bool) or not isinstance(
            elements_per_image, (int, np.integer)) or elements_per_image < 1:
        raise ValueError(f"{path}: elements_per_image must be a positive integer, got "
                         f"{elements_per_image!r}")
    if (count.shape != () or not (np.issubdtype(count.dtype, np.integer) or (
            np.issubdtype(count.dtype, np.floating) and float(count) == int(count)))
            or int(count) < 0 or int(count) > np.iinfo(np.int32).max):
        raise ValueError(f"{path}: count must be one non-negative int32 number of images, "
                         f"got {count.tolist()!r}")
    shapes = {k: v.shape for k, v in fields.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{path}: the statistics arrays disagree in shape: {shapes}")
    shape = next(iter(shapes.values()))
    rank = {"channel": 1, "pixel": 3, "global": 0}[scope]
    if len(shape) != rank:
        raise ValueError(f"{path}: scope {scope!r} has statistics of rank {rank}, got shape "
                         f"{shape}")
    if not all(np.isfinite(v).all() for v in fields.values()):
        raise ValueError(f"{path}: the statistics hold NaN or inf values")
    if (fields["m2_hi"].astype(np.float64) + fields["m2_lo"] < 0).any():
        raise ValueError(f"{path}: a sum of squared deviations (m2) is negative")
    return DatasetStats(jnp.asarray(np.int32(count)),
                        **{k: jnp.asarray(v) for k, v in fields.items()},
                        elements_per_image=int(elements_per_image), scope=str(scope))
