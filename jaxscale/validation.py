"""Checks at the public boundary: rank, layout, channel count, dtype, emptiness, finiteness,
values the device types can hold.

Every public function that takes images calls these before tracing, so a bad array fails with a
`ValueError` naming its shape or dtype instead of broadcasting silently or producing NaN.
Checks that need the array's values (finiteness) run only on concrete arrays: inside `jit` the
values are unknown and the check is skipped.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

DataFormat = Literal["channels_last", "channels_first"]
DATA_FORMATS = ("channels_last", "channels_first")
ALLOWED_CHANNELS = (1, 3, 4)


def channel_axis(data_format: DataFormat) -> int:
    """The channel axis of a rank-4 batch: 3 for NHWC (`channels_last`), 1 for NCHW."""
    check_data_format(data_format)
    return 3 if data_format == "channels_last" else 1


def check_data_format(data_format: str) -> None:
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")


def check_images(images, data_format: DataFormat = "channels_last", *, name: str = "images",
                 allow_empty: bool = False) -> None:
    """Validates a batch of images: rank 4, 1/3/4 channels, real dtype, non-empty, finite.

    Args:
      images: uint8 or float array, [N, H, W, C] (`channels_last`) or [N, C, H, W].
      data_format: where the channel axis is.
      name: the argument's name, used in error messages.
      allow_empty: accept N == 0 (streaming updates may see an empty last batch).

    Raises:
      ValueError: on wrong rank, channel count, dtype, an empty batch or non-finite values.
    """
    shape = tuple(np.shape(images))
    if len(shape) != 4:
        layout = "[N, H, W, C]" if data_format == "channels_last" else "[N, C, H, W]"
        raise ValueError(
            f"{name} must be a rank-4 batch {layout} ({data_format}); got shape {shape}. "
            "Add a batch axis with images[None] or a channel axis with images[..., None].")
    channels = shape[channel_axis(data_format)]
    if channels not in ALLOWED_CHANNELS:
        other = "channels_first" if data_format == "channels_last" else "channels_last"
        raise ValueError(
            f"{name} has {channels} channels on axis {channel_axis(data_format)} "
            f"({data_format}), expected one of {ALLOWED_CHANNELS}; shape {shape}. "
            f"Is the data {other}?")
    dtype = np.dtype(images.dtype if hasattr(images, "dtype") else np.asarray(images).dtype)
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise ValueError(f"{name} must have an integer or floating dtype, got {dtype}")
    if not allow_empty and (shape[0] == 0 or any(d == 0 for d in shape[1:])):
        raise ValueError(f"{name} is empty: shape {shape}")
    check_finite(images, name=name)
    check_representable(images, name=name)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_finite(values, *, name: str = "images") -> None:
    """Raises ValueError if a concrete float array holds NaN or inf; no-op under tracing."""
    if isinstance(values, jax.core.Tracer):
        return
    dtype = values.dtype if hasattr(values, "dtype") else np.asarray(values).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        return
    finite = bool(jnp.all(jnp.isfinite(values))) if isinstance(values, jax.Array) else bool(
        np.all(np.isfinite(values)))
    if not finite:
        raise ValueError(f"{name} contains NaN or inf values")


def check_representable(values, *, name: str = "images") -> None:
    """Raises ValueError if a concrete host array holds values the device arrays (float32,
    and int32/uint32 without JAX's 64-bit mode) cannot hold; no-op for device arrays and
    under tracing.

    JAX converts int64 to int32 and uint64 to uint32 by dropping the high bits (2^32 becomes
    0), and float64 beyond float32's range to inf: both would turn into silent wrong numbers.
    """
    if isinstance(values, (jax.core.Tracer, jax.Array)):
        return
    values = np.asarray(values)
    dtype = values.dtype
    if values.size == 0 or dtype.itemsize <= 4:
        return
    if jnp.issubdtype(dtype, jnp.integer):
        device = np.dtype(jnp.asarray(np.zeros((), dtype)).dtype)
        if device == dtype:
            return  # 64-bit mode is on
        info = np.iinfo(device)
        lo, hi = values.min(), values.max()
        if lo < info.min or hi > info.max:
            raise ValueError(
                f"{name} ({dtype}) holds values in [{lo}, {hi}], outside {device}'s range "
                f"[{info.min}, {info.max}]: JAX keeps {device} without 64-bit mode and would "
                "drop the high bits. Subtract an offset or convert to a float dtype first.")
    elif jnp.issubdtype(dtype, jnp.floating):
        largest = float(np.max(np.abs(values)))
        if largest > FLOAT32_MAX:
            raise ValueError(
                f"{name} ({dtype}) holds values up to {largest:.3g} in magnitude, beyond "
                f"float32's range ({FLOAT32_MAX:.3g}); jaxscale computes in float32. Scale "
                "the data down first.")


# ---------------------------------------------------------------- checked jitted entry points
#
# Inside `jit` the values are unknown, so the public jitted entry points (`scale_jit`,
# `augment_jit`, `apply_transforms_jit` and the ImageDataGenerator facade) compute a few
# bools in the same compiled call, whether its inputs and output are finite, and check
# them when the call returns: one reduction per checked array in the program and one
# device-to-host read of a bool vector per call (its cost is a row of `make bench`). Pass
# `check=False` (the facade: `check_finite=False`) to skip both.


def finite(values) -> jax.Array:
    """bool[]: all values finite (True, traced as a constant, for integer arrays)."""
    values = jnp.asarray(values)
    if not jnp.issubdtype(values.dtype, jnp.inexact):
        return jnp.bool_(True)
    return jnp.all(jnp.isfinite(values))


def raise_on_flags(flags: jax.Array, messages: tuple[str, ...], *, caller: str) -> None:
    """Reads the bool flags of a checked call (one device-to-host transfer) and raises
    ValueError with the message of the first False one."""
    host = np.asarray(flags)
    if host.all():
        return
    raise ValueError(f"{caller}: {messages[int(np.argmin(host))]}")


def as_array(values, *, name: str = "images"):
    """A jax/NumPy array as it is; anything else NumPy can read as an array (nested lists,
    tuples, objects with __array__) as a NumPy array; an error naming `name` otherwise."""
    if isinstance(values, (jax.Array, np.ndarray, jax.core.Tracer)):
        return values
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be an array or array-like, got "
                         f"{type(values).__name__}: {error}") from None
    if array.dtype == object:
        raise ValueError(f"{name} must be a numeric array or a nested list of numbers of one "
                         f"shape, got {type(values).__name__} that NumPy reads as objects")
    return array
