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

from jaxscale.reductions import sum_middle_axis
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
    """
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

    correction = b.m2_hi + delta * delta * (na_elems * weight_b)
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
      images: uint8 or float[N, H, W, C] (or [N, C, H, W] with `channels_first`).
      scope: "channel", "pixel" or "global" (see module docstring).
      data_format: layout of `images`.
      mask: optional bool[N]; False rows (padding of a last partial batch) are not counted.

    Returns:
      DatasetStats with count = number of (unmasked) images, statistic shape [C], [H, W, C]
      or [] in channels_last order.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    x = _to_channels_last(jnp.asarray(images), data_format).astype(jnp.float32)
    n, h, w, c = x.shape
    if scope == "pixel":
        elements = 1
        mean, m2 = x, jnp.zeros_like(x)
    else:
        # [N, K, C'] with K the values of one image that share an entry: per-image two-pass
        # mean and M2, summed by `sum_middle_axis` (a GEMV on CPU, a reduce elsewhere).
        grouped = x.reshape(n, h * w, c) if scope == "channel" else x.reshape(n, h * w * c, 1)
        elements = grouped.shape[1]
        mean = sum_middle_axis(grouped) / elements
        centered = grouped - mean[:, None, :]
        m2 = sum_middle_axis(centered * centered)
        if scope == "global":
            mean, m2 = mean[:, 0], m2[:, 0]
    counts = jnp.ones((x.shape[0],), jnp.int32)
    if mask is not None:
        counts = jnp.asarray(mask).astype(jnp.int32)
        keep = counts.reshape((-1,) + (1,) * (mean.ndim - 1)).astype(bool)
        mean = jnp.where(keep, mean, 0.0)
        m2 = jnp.where(keep, m2, 0.0)
    per_image = DatasetStats(counts, mean, jnp.zeros_like(mean), m2, jnp.zeros_like(m2),
                             elements_per_image=elements, scope=scope)
    return merge_stacked_stats(per_image)


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


@functools.partial(jax.jit, static_argnames=("step", "options", "batch_size", "length"))
def _fold_slice(carry, images, start, *, step, options, batch_size: int, length: int):
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
                carry = _fold_slice(carry, source, start if in_place else 0, step=step,
                                    options=options, batch_size=batch_size, length=length)
                seen += length
                if bar is not None:
                    bar.update(length)
        else:
            for batch in images:
                length = int(batch.shape[0])
                if length == 0:
                    continue
                carry = _fold_slice(carry, jnp.asarray(batch), 0, step=step, options=options,
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
      images: uint8 or float[N, H, W, C] (or channels_first), a NumPy or JAX array; or an
        iterable of such batches (a dataset that does not fit in memory).
      scope: "channel" (Keras' featurewise), "pixel" or "global".
      data_format: layout of `images`.
      batch_size: images per device step when `images` is one array; None: about 2M values
        per step (`auto_batch_size`). The result does not depend on it beyond float32
        rounding.
      progress: show a tqdm progress bar.

    Returns:
      DatasetStats with statistic shape [C], [H, W, C] or [] (channels_last order).

    Raises:
      ValueError: bad rank/channels/dtype, no images, or non-finite values.
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
    return stats


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
        for batch in stream:
            check_images(batch, data_format, name="batch", allow_empty=True)
            yield batch

    return first, batches()


def save_stats(stats: DatasetStats, path: str | Path) -> None:
    """Writes statistics to `.npz` (exact) or `.json` (human-readable, float32 round-trips)."""
    path = Path(path)
    fields = {
        "count": np.asarray(stats.count), "mean_hi": np.asarray(stats.mean_hi),
        "mean_lo": np.asarray(stats.mean_lo), "m2_hi": np.asarray(stats.m2_hi),
        "m2_lo": np.asarray(stats.m2_lo),
    }
    meta = {"format_version": FORMAT_VERSION, "scope": stats.scope,
            "elements_per_image": stats.elements_per_image}
    if path.suffix == ".json":
        doc = dict(meta, **{k: v.tolist() for k, v in fields.items()},
                   mean=np.asarray(stats.mean).tolist(), std=np.asarray(stats.std).tolist())
        path.write_text(json.dumps(doc, indent=2))
    elif path.suffix == ".npz":
        np.savez(path, **fields, meta=json.dumps(meta))
    else:
        raise ValueError(f"statistics files end in .json or .npz, got {path.name!r}")


def load_stats(path: str | Path) -> DatasetStats:
    """Reads statistics written by `save_stats`."""
    path = Path(path)
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        meta = doc
        fields = {k: np.asarray(doc[k], np.float32) for k in
                  ("mean_hi", "mean_lo", "m2_hi", "m2_lo")}
        fields["count"] = np.asarray(doc["count"], np.int32)
    elif path.suffix == ".npz":
        with np.load(path) as archive:
            meta = json.loads(str(archive["meta"]))
            fields = {k: archive[k] for k in ("count", "mean_hi", "mean_lo", "m2_hi", "m2_lo")}
    else:
        raise ValueError(f"statistics files end in .json or .npz, got {path.name!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported statistics format {meta.get('format_version')}")
    return DatasetStats(**{k: jnp.asarray(v) for k, v in fields.items()},
                        elements_per_image=int(meta["elements_per_image"]),
                        scope=str(meta["scope"]))
