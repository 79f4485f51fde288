"""Keras' module-level image functions: one image at a time, on host arrays, as Keras has them.

Same names, signatures and defaults as `keras.src.legacy.preprocessing.image` (one image
[.., .., ..] with `row_axis`, `col_axis`, `channel_axis`, channels first by default), each a
thin wrapper over the batched on-device code of `jaxscale.augmentation`: the image goes to
the device as a batch of one and comes back as a NumPy array.

The random functions draw their parameters from NumPy's global generator in the order Keras
draws them, so after the same `np.random.seed` they transform an image as Keras does (up to
the documented differences). Differences from Keras (see docs/keras.md):

- `random_shift(x, wrg, hrg)`: `wrg` moves columns (times the width) and `hrg` rows (times
  the height), as documented; Keras moves columns by `hrg` times the height and rows by `wrg`
  times the width. The same numbers when wrg == hrg on square images.
- The centre of rotation, shear and zoom is ((H-1)/2, (W-1)/2); Keras swaps the two on
  non-square images (see `jaxscale.augmentation`).
- Geometric functions return the input's dtype as Keras (scipy) does, integers rounded half
  up and clipped; the channel shift and brightness functions return float32 (Keras: float64
  for integer input from the channel shift). Brightness is not rounded to 8 bits.
"""

from __future__ import annotations

import numpy as np

from jaxscale import augmentation
from jaxscale.augmentation import AugmentConfig

__all__ = ["apply_affine_transform", "apply_brightness_shift", "apply_channel_shift",
           "random_brightness", "random_channel_shift", "random_rotation", "random_shear",
           "random_shift", "random_zoom"]


def _check_axes(x, row_axis: int, col_axis: int, channel_axis: int) -> None:
    # Keras' checks and messages.
    if np.unique([row_axis, col_axis, channel_axis]).size != 3:
        raise ValueError("'row_axis', 'col_axis', and 'channel_axis' must be distinct")
    actual = {row_axis, col_axis, channel_axis}
    if actual != {0, 1, 2}:
        raise ValueError(f"Invalid axis' indices: {actual - {0, 1, 2}}")
    if np.ndim(x) != 3:
        raise ValueError("Input arrays must be multi-channel 2D images.")
    if channel_axis not in (0, 2):
        raise ValueError("Channels are allowed and the first and last dimensions.")


def _transform(x, params: dict, *, row_axis: int, col_axis: int, channel_axis: int,
               fill_mode: str = "nearest", cval: float = 0.0, order: int = 1,
               channel_shift: bool = False, brightness: bool = False) -> np.ndarray:
    """One image through `augmentation.apply_transforms` (as a batch of one), float32, in
    the image's own axis order."""
    x = np.asarray(x)
    _check_axes(x, row_axis, col_axis, channel_axis)
    hwc = np.transpose(x, (row_axis, col_axis, channel_axis))
    geometry = any(params.get(k, d) != d for k, d in
                   (("theta", 0), ("tx", 0), ("ty", 0), ("shear", 0), ("zx", 1), ("zy", 1)))
    config = AugmentConfig(rotation_range=360.0 if geometry else 0.0, fill_mode=fill_mode,
                           cval=float(cval), interpolation_order=order,
                           channel_shift_range=1.0 if channel_shift else 0.0,
                           brightness_range=(1.0, 1.0) if brightness else None)
    transforms = augmentation.transforms_from_dicts([params])
    out = np.asarray(augmentation.apply_transforms_jit(hwc[None], transforms, config))[0]
    return np.transpose(out, np.argsort((row_axis, col_axis, channel_axis)))


def _like_input(out: np.ndarray, x) -> np.ndarray:
    """Keras (scipy) returns the input's dtype: integers rounded half up and clipped."""
    dtype = np.asarray(x).dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.floor(out + 0.5), info.min, info.max).astype(dtype)
    return out.astype(dtype) if np.issubdtype(dtype, np.floating) else out


def apply_affine_transform(x, theta=0, tx=0, ty=0, shear=0, zx=1, zy=1, row_axis=1,
                           col_axis=2, channel_axis=0, fill_mode="nearest", cval=0.0,
                           order=1) -> np.ndarray:
    """Keras' apply_affine_transform: rotation, shift, shear and zoom of one image.

    Args:
      x: one image, rank 3, axes given by row_axis / col_axis / channel_axis (channels
        first or last).
      theta: rotation in degrees (counter-clockwise); tx, ty: the content moves left by tx
        columns and up by ty rows; shear in degrees; zx, zy zoom factors (> 1 zooms out).
      fill_mode, cval, order: as Keras (scipy's modes; order 0 or 1).

    Returns:
      The transformed image, same shape and dtype.
    """
    params = {"theta": theta, "tx": tx, "ty": ty, "shear": shear, "zx": zx, "zy": zy}
    out = _transform(x, params, row_axis=row_axis, col_axis=col_axis,
                     channel_axis=channel_axis, fill_mode=fill_mode, cval=cval, order=order)
    return _like_input(out, x)


def _random_affine(x, axes, fill_mode, cval, order, **params) -> np.ndarray:
    """`apply_affine_transform` of the parameters a `random_*` function drew."""
    row_axis, col_axis, channel_axis = axes
    return apply_affine_transform(x, **params, row_axis=row_axis, col_axis=col_axis,
                                  channel_axis=channel_axis, fill_mode=fill_mode, cval=cval,
                                  order=order)


def random_rotation(x, rg, row_axis=1, col_axis=2, channel_axis=0, fill_mode="nearest",
                    cval=0.0, interpolation_order=1) -> np.ndarray:
    """A rotation by theta ~ U(-rg, rg) degrees (NumPy's global generator, as Keras)."""
    theta = np.random.uniform(-rg, rg)
    return _random_affine(x, (row_axis, col_axis, channel_axis), fill_mode, cval,
                          interpolation_order, theta=theta)


def random_shift(x, wrg, hrg, row_axis=1, col_axis=2, channel_axis=0, fill_mode="nearest",
                 cval=0.0, interpolation_order=1) -> np.ndarray:
    """A shift by U(-wrg, wrg) of the width along columns and U(-hrg, hrg) of the height
    along rows (Keras swaps the two: see the module docstring)."""
    h, w = np.shape(x)[row_axis], np.shape(x)[col_axis]
    tx = np.random.uniform(-wrg, wrg) * w  # drawn first, as Keras' column shift
    ty = np.random.uniform(-hrg, hrg) * h
    return _random_affine(x, (row_axis, col_axis, channel_axis), fill_mode, cval,
                          interpolation_order, tx=tx, ty=ty)


def random_shear(x, intensity, row_axis=1, col_axis=2, channel_axis=0, fill_mode="nearest",
                 cval=0.0, interpolation_order=1) -> np.ndarray:
    """A shear by U(-intensity, intensity) degrees."""
    shear = np.random.uniform(-intensity, intensity)
    return _random_affine(x, (row_axis, col_axis, channel_axis), fill_mode, cval,
                          interpolation_order, shear=shear)


def random_zoom(x, zoom_range, row_axis=1, col_axis=2, channel_axis=0, fill_mode="nearest",
                cval=0.0, interpolation_order=1) -> np.ndarray:
    """A zoom by zx, zy ~ U(zoom_range[0], zoom_range[1]), drawn independently."""
    if len(zoom_range) != 2:
        raise ValueError("`zoom_range` should be a tuple or list of two floats. "
                         f"Received: {zoom_range}")
    if zoom_range[0] == 1 and zoom_range[1] == 1:
        zx, zy = 1, 1
    else:
        zx, zy = np.random.uniform(zoom_range[0], zoom_range[1], 2)
    return _random_affine(x, (row_axis, col_axis, channel_axis), fill_mode, cval,
                          interpolation_order, zx=zx, zy=zy)


def _channel_axes(x, channel_axis: int) -> dict:
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"expected one image of rank 3, got shape {x.shape}")
    if channel_axis not in (0, 2, -1):
        raise ValueError(f"channel_axis must be 0 or 2 (-1), got {channel_axis}")
    return ({"row_axis": 1, "col_axis": 2, "channel_axis": 0} if channel_axis == 0
            else {"row_axis": 0, "col_axis": 1, "channel_axis": 2})


def apply_channel_shift(x, intensity, channel_axis=0) -> np.ndarray:
    """Adds `intensity` to every channel, clipped to the image's [min, max] (Keras); float32."""
    return _transform(x, {"channel_shift_intensity": intensity}, channel_shift=True,
                      **_channel_axes(x, channel_axis))


def random_channel_shift(x, intensity_range, channel_axis=0) -> np.ndarray:
    """`apply_channel_shift` by U(-intensity_range, intensity_range)."""
    intensity = np.random.uniform(-intensity_range, intensity_range)
    return apply_channel_shift(x, intensity, channel_axis=channel_axis)


def apply_brightness_shift(x, brightness, scale=True) -> np.ndarray:
    """Keras' brightness shift of one channels_last image [H, W, C]; float32.

    With `scale` (Keras' default) the image is first stretched to 0..255 (minus its min,
    over its max, as Keras' array_to_img does) and the result stays in 0..255; without it,
    values are multiplied in place, clipped to 0..255, or to the image's own range when that
    lies outside 0..255 (Keras). Not rounded to 8 bits (Keras goes through a PIL image).
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 3:
        raise ValueError(f"Expected image array to have rank 3 (single image). Got array "
                         f"with shape: {x.shape}")
    if scale:
        x = x - x.min()
        if x.max() != 0:
            x = x / x.max()
        x = x * 255.0
    return _transform(x, {"brightness": brightness}, brightness=True, row_axis=0, col_axis=1,
                      channel_axis=2)


def random_brightness(x, brightness_range, scale=True) -> np.ndarray:
    """`apply_brightness_shift` by U(brightness_range[0], brightness_range[1])."""
    if len(brightness_range) != 2:
        raise ValueError("`brightness_range should be tuple or list of two floats. "
                         f"Received: {brightness_range}")
    u = np.random.uniform(brightness_range[0], brightness_range[1])
    return apply_brightness_shift(x, u, scale)
