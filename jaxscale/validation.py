"""Checks at the public boundary: rank, layout, channel count, dtype, emptiness, finiteness.

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
    dtype = jnp.asarray(images).dtype if not hasattr(images, "dtype") else images.dtype
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise ValueError(f"{name} must have an integer or floating dtype, got {dtype}")
    if not allow_empty and (shape[0] == 0 or any(d == 0 for d in shape[1:])):
        raise ValueError(f"{name} is empty: shape {shape}")
    check_finite(images, name=name)


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
