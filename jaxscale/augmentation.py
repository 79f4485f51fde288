"""Keras ImageDataGenerator's random augmentation as jitted, per-sample pure functions.

A recipe is data: a frozen, hashable `AugmentConfig` (a static argument of `jit`) with Keras'
keyword names and meanings. `augment(key, images, config)` draws one transform per image from
`key` (`sample_transforms`), composes rotation, shift, shear, zoom and the flips into ONE 3x3
matrix per image (`transform_matrices`) and resamples every image once with vectorised gathers
(`resample`), then applies Keras' channel shift and brightness. Same key, same output; every
image in a batch gets its own transform.

Conventions follow Keras 3's `keras.src.legacy.preprocessing.image.apply_affine_transform`:
the matrix is built as rotation @ shift @ shear @ zoom in Keras' (x, y) = (column, row)
coordinates, taken about the image centre, and maps each OUTPUT pixel to the INPUT position it
reads (`out[r, c] = in[M @ (r, c, 1)]`, as `scipy.ndimage.affine_transform`). A positive
`theta` turns the content counter-clockwise (`theta=90` is `np.rot90(image, 1)`); `tx` moves
the content left by `tx` columns and `ty` up by `ty` rows; `zx, zy > 1` zoom out. Transform
parameters use Keras' dictionary names (theta, tx, ty, shear, zx, zy, flip_horizontal,
flip_vertical, channel_shift_intensity, brightness) with the meaning Keras' `apply_transform`
gives them. The order of Keras' `apply_transform` is kept: affine, channel shift, flips,
brightness (the flips are folded into the matrix; they commute with the channel shift).

Deviations from Keras, all documented here:

- Keras samples `tx` (which its matrix applies along columns) from `height_shift_range`
  scaled by the height, and `ty` from `width_shift_range`, so its `height_shift_range` moves
  images horizontally. Here `width_shift_range` moves columns (scaled by W) and
  `height_shift_range` moves rows (scaled by H), as Keras documents. Identical distributions
  when both ranges are equal on square images (MNIST, the seed recipe).
- Keras centres rows at W/2 - 0.5 and columns at H/2 - 0.5 (swapped); here the centre is
  ((H-1)/2, (W-1)/2). Identical on square images.
- `brightness` multiplies pixel values (clipped to [0, 255], or to the image's own range when
  it lies outside [0, 255], as Keras) without Keras' round trip through an 8-bit PIL image,
  so there is no quantisation and float images in [0, 1] are not truncated to 0/1.
- `fill_mode="constant"` fills exactly where scipy (float64) does, except for source
  coordinates within float32 rounding of an edge (`border_tolerance`: about 4e-5 px on
  28x28), which count as inside: float32 cannot tell their side, and mathematically they are
  on the edge. Keras' float64 arithmetic puts some exact-edge coordinates just outside
  (a 180 degree rotation of a 28x28 image fills 26 border pixels with cval there).
- `fill_mode="wrap"` is scipy's (and so Keras') "wrap": coordinates wrap with period n-1
  (first and last pixel overlap). "grid-wrap" (period n, like `jnp.roll`) is offered as well.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.validation import (DataFormat, as_array, check_data_format, check_images,
                                 check_representable, finite, raise_on_flags)

FILL_MODES = ("constant", "nearest", "reflect", "wrap", "grid-wrap")
INTERPOLATION_ORDERS = (0, 1)
# "constant" mode decides inside/outside per coordinate, as scipy does in float64 (inside iff
# 0 <= coordinate <= n - 1). A float32 coordinate differs from scipy's float64 one by at most
# about eps32 * ((|m0| + |m1|) * (H + W) + |m2|) for its matrix row m (measured worst case
# 1.8x that over random rotation/shift/shear/zoom up to 3x, sizes 17 to 224); coordinates
# within _BORDER_ULPS times that of an edge are on it up to rounding and count as inside, as
# scipy counts an exact edge coordinate. Anything farther out is outside, as in scipy.
_BORDER_ULPS = 4.0

ShiftRange = float | int | tuple[float, ...]


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else value


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """A random augmentation recipe: Keras ImageDataGenerator's keywords, same meaning.

    Attributes:
      rotation_range: degrees; theta ~ U(-r, r).
      width_shift_range, height_shift_range: float f: shift ~ U(-f, f), times the width
        (height) when f < 1; int k: a whole number of pixels in (-k, k); a tuple of choices:
        one of them times a random sign, times the width (height) when all are < 1 (Keras).
      shear_range: degrees; shear ~ U(-s, s).
      zoom_range: float z for [1 - z, 1 + z] or a pair (lo, hi); zx, zy drawn independently.
        Stored as the pair.
      horizontal_flip, vertical_flip: flip with probability 1/2.
      brightness_range: None or (lo, hi); pixel values times U(lo, hi).
      channel_shift_range: intensity ~ U(-c, c) added to every channel, clipped to the
        image's range (Keras).
      fill_mode: "constant", "nearest", "reflect", "wrap" (as Keras / scipy) or "grid-wrap".
      cval: the fill value of "constant".
      interpolation_order: 0 (nearest) or 1 (bilinear).
      data_format: "channels_last" (NHWC) or "channels_first" (NCHW).
    """

    rotation_range: float = 0.0
    width_shift_range: ShiftRange = 0.0
    height_shift_range: ShiftRange = 0.0
    shear_range: float = 0.0
    zoom_range: float | tuple[float, float] = 0.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    brightness_range: tuple[float, float] | None = None
    channel_shift_range: float = 0.0
    fill_mode: str = "nearest"
    cval: float = 0.0
    interpolation_order: int = 1
    data_format: DataFormat = "channels_last"

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        for name in ("rotation_range", "shear_range", "channel_shift_range"):
            value = getattr(self, name)
            if not _is_number(value) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("width_shift_range", "height_shift_range"):
            value = _as_tuple(getattr(self, name))
            set_(name, value)
            values = value if isinstance(value, tuple) else (value,)
            if (not values or not all(_is_number(v) and np.isfinite(v) for v in values)
                    or (not isinstance(value, tuple) and value < 0)):
                raise ValueError(f"{name} must be a number >= 0, an int or a non-empty "
                                 f"sequence of numbers, got {value!r}")
        zoom = _as_tuple(self.zoom_range)
        if _is_number(zoom):
            zoom = (1.0 - zoom, 1.0 + zoom)
        if (not isinstance(zoom, tuple) or len(zoom) != 2 or not all(map(_is_number, zoom))
                or not 0 < zoom[0] <= zoom[1] or not np.isfinite(zoom[1])):
            raise ValueError("zoom_range must be a float z in [0, 1) or a pair 0 < lo <= hi, "
                             f"got {self.zoom_range!r}")
        set_("zoom_range", (float(zoom[0]), float(zoom[1])))
        if self.brightness_range is not None:
            bright = _as_tuple(self.brightness_range)
            if (not isinstance(bright, tuple) or len(bright) != 2
                    or not all(map(_is_number, bright)) or not 0 <= bright[0] <= bright[1]):
                raise ValueError("brightness_range must be None or a pair 0 <= lo <= hi, got "
                                 f"{self.brightness_range!r}")
            set_("brightness_range", (float(bright[0]), float(bright[1])))
        if self.fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {self.fill_mode!r}")
        if not _is_number(self.cval) or not np.isfinite(self.cval):
            raise ValueError(f"cval must be a finite number, got {self.cval!r}")
        if self.interpolation_order not in INTERPOLATION_ORDERS:
            raise ValueError(f"interpolation_order must be one of {INTERPOLATION_ORDERS}, "
                             f"got {self.interpolation_order!r}")
        for name in ("horizontal_flip", "vertical_flip"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        check_data_format(self.data_format)

    @property
    def has_geometry(self) -> bool:
        """Whether any knob moves pixels (so images are resampled)."""
        return bool(self.rotation_range or _shift_active(self.width_shift_range)
                    or _shift_active(self.height_shift_range) or self.shear_range
                    or self.zoom_range != (1.0, 1.0) or self.horizontal_flip
                    or self.vertical_flip)

    @property
    def is_identity(self) -> bool:
        """True when every range is zero: `augment` only converts to float32."""
        return (not self.has_geometry and not self.channel_shift_range
                and self.brightness_range is None)

    def replace(self, **changes) -> "AugmentConfig":
        return dataclasses.replace(self, **changes)


SEED_RECIPE = AugmentConfig(rotation_range=8, width_shift_range=0.08, height_shift_range=0.08,
                            shear_range=0.3, zoom_range=0.08)

AUGMENTATION_KEYWORDS = tuple(f.name for f in dataclasses.fields(AugmentConfig)
                              if f.name != "data_format")


def keras_keywords(config: AugmentConfig) -> dict:
    """The keywords of Keras' ImageDataGenerator that augment as `config` does: the fields
    that differ from the defaults (both use Keras' names and defaults). The benchmarks' Keras
    peer, the tests and the CLI's help state `SEED_RECIPE` through this."""
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(config)
            if getattr(config, field.name) != field.default}


def augment_config(data_format: str | None = None, **keras_kwargs) -> AugmentConfig:
    """An `AugmentConfig` from Keras' ImageDataGenerator augmentation keywords.

    Raises:
      TypeError: on a keyword that is not one of Keras' augmentation keywords.
    """
    unknown = set(keras_kwargs) - set(AUGMENTATION_KEYWORDS)
    if unknown:
        raise TypeError(f"unknown augmentation keyword(s) {sorted(unknown)}; expected some "
                        f"of {AUGMENTATION_KEYWORDS}")
    return AugmentConfig(data_format=data_format or "channels_last", **keras_kwargs)


def _shift_active(spec: ShiftRange) -> bool:
    return bool(np.any(np.asarray(spec) != 0)) if isinstance(spec, tuple) else bool(spec)


@flax.struct.dataclass
class Transforms:
    """Per-image transform parameters, Keras' `apply_transform` names; every field float32[N].

    theta, shear in degrees; tx, ty in pixels (content moves left / up by tx / ty); zx, zy
    zoom factors; flips as 0/1; channel_shift_intensity added; brightness a factor.
    """

    theta: jax.Array
    tx: jax.Array
    ty: jax.Array
    shear: jax.Array
    zx: jax.Array
    zy: jax.Array
    flip_horizontal: jax.Array
    flip_vertical: jax.Array
    channel_shift_intensity: jax.Array
    brightness: jax.Array

    @classmethod
    def identity(cls, n: int) -> "Transforms":
        zeros, ones = jnp.zeros((n,), jnp.float32), jnp.ones((n,), jnp.float32)
        return cls(theta=zeros, tx=zeros, ty=zeros, shear=zeros, zx=ones, zy=ones,
                   flip_horizontal=zeros, flip_vertical=zeros,
                   channel_shift_intensity=zeros, brightness=ones)


def _sample_shift(key, n: int, spec: ShiftRange, size: int) -> jax.Array:
    """Keras' shift sampling for one axis, in pixels: float[N]."""
    if not _shift_active(spec):
        return jnp.zeros((n,), jnp.float32)
    if isinstance(spec, tuple) or isinstance(spec, numbers.Integral):
        # Keras: np.random.choice(spec) times a random sign (an int k chooses from range(k)).
        choices = np.asarray(spec if isinstance(spec, tuple) else range(spec), np.float32)
        pick_key, sign_key = jax.random.split(key)
        picked = jnp.asarray(choices)[jax.random.randint(pick_key, (n,), 0, choices.size)]
        shift = picked * jnp.where(jax.random.bernoulli(sign_key, 0.5, (n,)), 1.0, -1.0)
    else:
        shift = jax.random.uniform(key, (n,), jnp.float32, -spec, spec)
    return shift * size if np.max(spec) < 1 else shift


def sample_transforms(key: jax.Array, n: int, image_hw: tuple[int, int],
                      config: AugmentConfig) -> Transforms:
    """Draws one transform per image, independently, as Keras' `get_random_transform`.

    Args:
      key: a `jax.random` key.
      n: number of images.
      image_hw: (H, W), to turn fractional shifts into pixels.
      config: the recipe (static).

    Returns:
      Transforms with float32[n] fields; disabled knobs hold the identity value.
    """
    height, width = image_hw
    keys = jax.random.split(key, 9)
    out = Transforms.identity(n)

    def uniform(k, lo, hi):
        return jax.random.uniform(k, (n,), jnp.float32, lo, hi)

    changes = {
        "tx": _sample_shift(keys[1], n, config.width_shift_range, width),
        "ty": _sample_shift(keys[2], n, config.height_shift_range, height),
    }
    if config.rotation_range:
        changes["theta"] = uniform(keys[0], -config.rotation_range, config.rotation_range)
    if config.shear_range:
        changes["shear"] = uniform(keys[3], -config.shear_range, config.shear_range)
    if config.zoom_range != (1.0, 1.0):
        changes["zx"] = uniform(keys[4], *config.zoom_range)
        changes["zy"] = uniform(keys[5], *config.zoom_range)
    if config.horizontal_flip:
        changes["flip_horizontal"] = jax.random.bernoulli(keys[6], 0.5, (n,)).astype(jnp.float32)
    if config.vertical_flip:
        changes["flip_vertical"] = jax.random.bernoulli(keys[7], 0.5, (n,)).astype(jnp.float32)
    if config.channel_shift_range:
        changes["channel_shift_intensity"] = uniform(
            keys[8], -config.channel_shift_range, config.channel_shift_range)
    if config.brightness_range is not None:
        changes["brightness"] = uniform(jax.random.fold_in(keys[8], 1), *config.brightness_range)
    return out.replace(**changes)


def transform_matrices(transforms: Transforms, image_hw: tuple[int, int]) -> jax.Array:
    """One 3x3 matrix per image mapping output (row, col, 1) to the input position read.

    Keras' rotation @ shift @ shear @ zoom in (column, row) coordinates about the centre,
    permuted to (row, col), then the flips (which Keras applies after the affine part).

    Returns:
      float32[N, 3, 3].
    """
    height, width = image_hw
    t = transforms
    theta, shear = jnp.deg2rad(t.theta), jnp.deg2rad(t.shear)
    zeros, ones = jnp.zeros_like(theta), jnp.ones_like(theta)

    def mat(*rows):
        return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)

    cos, sin = jnp.cos(theta), jnp.sin(theta)
    rotation = mat((cos, -sin, zeros), (sin, cos, zeros), (zeros, zeros, ones))
    shift = mat((ones, zeros, t.tx), (zeros, ones, t.ty), (zeros, zeros, ones))
    shearing = mat((ones, -jnp.sin(shear), zeros), (zeros, jnp.cos(shear), zeros),
                   (zeros, zeros, ones))
    zoom = mat((t.zx, zeros, zeros), (zeros, t.zy, zeros), (zeros, zeros, ones))
    xy = rotation @ shift @ shearing @ zoom
    # (x, y) = (column, row): permute to (row, column) index order, M' = P M P.
    perm = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], jnp.float32)
    rc = perm @ xy @ perm
    centre_r, centre_c = (height - 1) / 2.0, (width - 1) / 2.0
    to_centre = jnp.array([[1.0, 0, centre_r], [0, 1.0, centre_c], [0, 0, 1.0]], jnp.float32)
    from_centre = jnp.array([[1.0, 0, -centre_r], [0, 1.0, -centre_c], [0, 0, 1.0]],
                            jnp.float32)
    centred = to_centre @ rc @ from_centre
    # Flipping the output: out'[r, c] = out[H-1-r, c] / out[r, W-1-c].
    fv, fh = t.flip_vertical, t.flip_horizontal
    flips = mat((1 - 2 * fv, zeros, fv * (height - 1)), (zeros, 1 - 2 * fh, fh * (width - 1)),
                (zeros, zeros, ones))
    return centred @ flips


def _fold_index(index: jax.Array, size: int, fill_mode: str) -> jax.Array:
    """Maps integer sample positions outside [0, size) into it, per fill mode."""
    if fill_mode == "reflect":  # half-sample symmetric: d c b a | a b c d | d c b a
        period = jnp.mod(index, 2 * size)
        return jnp.where(period >= size, 2 * size - 1 - period, period)
    if fill_mode == "grid-wrap":
        return jnp.mod(index, size)
    return jnp.clip(index, 0, size - 1)


def _wrap_coordinate(coord: jax.Array, size: int) -> jax.Array:
    """scipy's "wrap": positions outside [0, size-1] wrap with period size-1."""
    if size == 1:
        return jnp.zeros_like(coord)
    inside = (coord >= 0) & (coord <= size - 1)
    return jnp.where(inside, coord, jnp.mod(coord, size - 1))


def border_tolerance(matrix: jax.Array, image_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """(row, column) distance from an edge within which a float32 source coordinate of
    `matrix` (float32[3, 3]) is on the edge up to rounding (see `_BORDER_ULPS`)."""
    eps = jnp.finfo(jnp.float32).eps
    size = float(sum(image_hw))
    m = jnp.abs(matrix)
    return tuple(_BORDER_ULPS * eps * ((m[k, 0] + m[k, 1]) * size + m[k, 2]) for k in (0, 1))


def resample(image: jax.Array, matrix: jax.Array, *, fill_mode: str = "nearest",
             cval: float = 0.0, order: int = 1) -> jax.Array:
    """One image read at `matrix @ (r, c, 1)` for every output pixel (r, c).

    Matches `scipy.ndimage.affine_transform(channel, matrix[:2, :2], matrix[:2, 2],
    order=order, mode=fill_mode, cval=cval)` per channel ("grid-wrap" included).

    Args:
      image: uint8 or float[H, W, C].
      matrix: float32[3, 3], output -> input (row, col) coordinates.

    Returns:
      float32[H, W, C].
    """
    height, width, channels = image.shape
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                              jnp.arange(width, dtype=jnp.float32), indexing="ij")
    src_r = matrix[0, 0] * rows + matrix[0, 1] * cols + matrix[0, 2]
    src_c = matrix[1, 0] * rows + matrix[1, 1] * cols + matrix[1, 2]
    inside = None
    if fill_mode == "constant":
        tol_r, tol_c = border_tolerance(matrix, (height, width))
        inside = ((src_r >= -tol_r) & (src_r <= height - 1 + tol_r)
                  & (src_c >= -tol_c) & (src_c <= width - 1 + tol_c))
        src_r = jnp.clip(src_r, 0, height - 1)
        src_c = jnp.clip(src_c, 0, width - 1)
    elif fill_mode == "wrap":
        src_r, src_c = _wrap_coordinate(src_r, height), _wrap_coordinate(src_c, width)
    flat = image.reshape(height * width, channels)

    def read(r, c):
        r = _fold_index(r, height, fill_mode)
        c = _fold_index(c, width, fill_mode)
        # _fold_index keeps every index in range: skip the gather's bounds handling.
        values = flat.at[(r * width + c).reshape(-1)].get(mode="promise_in_bounds")
        return values.reshape(height, width, channels).astype(jnp.float32)

    if order == 0:
        # Round half up; exact half-pixel positions are rare with random parameters.
        out = read(jnp.floor(src_r + 0.5).astype(jnp.int32),
                   jnp.floor(src_c + 0.5).astype(jnp.int32))
    else:
        r0, c0 = jnp.floor(src_r), jnp.floor(src_c)
        fr, fc = (src_r - r0)[..., None], (src_c - c0)[..., None]
        r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
        top = read(r0, c0) * (1 - fc) + read(r0, c0 + 1) * fc
        bottom = read(r0 + 1, c0) * (1 - fc) + read(r0 + 1, c0 + 1) * fc
        out = top * (1 - fr) + bottom * fr
    if inside is not None:
        out = jnp.where(inside[..., None], out, jnp.float32(cval))
    return out


def _channel_shift(image: jax.Array, intensity: jax.Array) -> jax.Array:
    """Keras: every channel + intensity, clipped to the image's own [min, max]."""
    return jnp.clip(image + intensity, jnp.min(image), jnp.max(image))


def _brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Keras' brightness without the 8-bit round trip: values times factor, clipped to
    [0, 255], or to the image's own range when it lies outside [0, 255]."""
    lo, hi = jnp.min(image), jnp.max(image)
    in_byte_range = (lo >= 0) & (hi <= 255)
    lo = jnp.where(in_byte_range, 0.0, lo)
    hi = jnp.where(in_byte_range, 255.0, hi)
    return lo + jnp.clip((image - lo) * factor, 0.0, hi - lo)


def apply_transforms(images: jax.Array, transforms: Transforms,
                     config: AugmentConfig) -> jax.Array:
    """Applies given per-image transforms (Keras' `apply_transform`, batched).

    Args:
      images: uint8 or float[N, H, W, C] (or [N, C, H, W] for channels_first).
      transforms: Transforms with float32[N] fields.
      config: fill mode, cval, interpolation order, layout; the channel shift and brightness
        steps run only when the config enables them.

    Returns:
      float32 images, same shape and layout.
    """
    channels_first = config.data_format == "channels_first"
    x = jnp.transpose(images, (0, 2, 3, 1)) if channels_first else images
    if config.has_geometry:
        matrices = transform_matrices(transforms, x.shape[1:3])
        x = jax.vmap(functools.partial(
            resample, fill_mode=config.fill_mode, cval=config.cval,
            order=config.interpolation_order))(x, matrices)
    else:
        x = x.astype(jnp.float32)
    if config.channel_shift_range:
        x = jax.vmap(_channel_shift)(x, transforms.channel_shift_intensity)
    if config.brightness_range is not None:
        x = jax.vmap(_brightness)(x, transforms.brightness)
    return jnp.transpose(x, (0, 3, 1, 2)) if channels_first else x


def augment(key: jax.Array, images: jax.Array, config: AugmentConfig) -> jax.Array:
    """Randomly augments every image of a batch with its own transform.

    Jittable (config static); same key, same output.

    Args:
      key: a `jax.random` key.
      images: uint8 or float[N, H, W, C] (or [N, C, H, W] for channels_first).
      config: the recipe.

    Returns:
      float32 images, same shape and layout.
    """
    images = as_array(images)
    check_images(images, config.data_format)
    images = jnp.asarray(images)
    if config.is_identity:
        return images.astype(jnp.float32)
    hw = images.shape[2:4] if config.data_format == "channels_first" else images.shape[1:3]
    transforms = sample_transforms(key, images.shape[0], hw, config)
    return apply_transforms(images, transforms, config)


def _augment_and_flags(key, images, config: AugmentConfig):
    out = augment(key, images, config)
    return out, jnp.stack([finite(images), finite(out)])


def _apply_and_flags(images, transforms: Transforms, config: AugmentConfig):
    out = apply_transforms(images, transforms, config)
    parameters = jnp.all(jnp.stack([finite(v) for v in jax.tree_util.tree_leaves(transforms)]))
    return out, jnp.stack([finite(images), parameters, finite(out)])


_augment_unchecked = jax.jit(augment, static_argnames="config")
_augment_checked = jax.jit(_augment_and_flags, static_argnames="config")
_apply_unchecked = jax.jit(apply_transforms, static_argnames="config")
_apply_checked = jax.jit(_apply_and_flags, static_argnames="config")
_IMAGES_NOT_FINITE = "images contains NaN or inf values"
_OUTPUT_NOT_FINITE = ("the augmented images hold NaN or inf although the images are finite "
                      "(float32 overflow of values near 3.4e38)")


def augment_jit(key: jax.Array, images, config: AugmentConfig, *,
                check: bool = True) -> jax.Array:
    """`augment` compiled once per (config, shape, dtype), checked for NaN and inf.

    check: compute in the same compiled call whether the images and the output are finite
    and raise ValueError if not (one reduction each and a 2-bool device-to-host read per
    call); False skips both.
    """
    images = as_array(images)
    check_representable(images)
    if not check:
        return _augment_unchecked(key, images, config)
    out, flags = _augment_checked(key, images, config)
    raise_on_flags(flags, (_IMAGES_NOT_FINITE, _OUTPUT_NOT_FINITE), caller="augment_jit")
    return out


def apply_transforms_jit(images, transforms: Transforms, config: AugmentConfig, *,
                         check: bool = True) -> jax.Array:
    """`apply_transforms` compiled once per (config, shape, dtype), checked for NaN and inf
    in the images, the transform parameters and the output (see `augment_jit`)."""
    images = as_array(images)
    check_representable(images)
    if not check:
        return _apply_unchecked(images, transforms, config)
    out, flags = _apply_checked(images, transforms, config)
    raise_on_flags(flags, (_IMAGES_NOT_FINITE,
                           "the transform parameters hold NaN or inf values",
                           _OUTPUT_NOT_FINITE), caller="apply_transforms_jit")
    return out


TRANSFORM_DEFAULTS = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0,
                      "flip_horizontal": 0.0, "flip_vertical": 0.0,
                      "channel_shift_intensity": 0.0, "brightness": 1.0}


def transforms_from_dicts(params: Sequence[dict]) -> Transforms:
    """Transforms from Keras `get_random_transform`-style dicts (missing keys: identity).

    Raises:
      ValueError: a parameter set that is not a dict, an unknown key (Keras would ignore a
        misspelt one silently), or a value that is not a finite real number (NaN would turn
        every output pixel into NaN).
    """
    columns = {name: [] for name in TRANSFORM_DEFAULTS}
    for index, p in enumerate(params):
        if not isinstance(p, dict):
            raise ValueError(f"transform parameters must be dicts with Keras' keys, got "
                             f"{type(p).__name__} at index {index}")
        unknown = sorted(set(p) - set(TRANSFORM_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown transform parameter(s) {unknown}; known: "
                             f"{sorted(TRANSFORM_DEFAULTS)}")
        for name, default in TRANSFORM_DEFAULTS.items():
            value = p.get(name, default)
            if value is None:
                value = default
            if isinstance(value, (str, bytes)) or np.ndim(value) != 0 or (
                    np.asarray(value).dtype.kind not in "biuf"):
                raise ValueError(f"transform parameter {name!r} must be a real number, got "
                                 f"{type(value).__name__} {value!r}")
            value = float(value)
            if not np.isfinite(value):
                raise ValueError(f"transform parameter {name!r} must be finite, got {value}")
            columns[name].append(value)
    return Transforms(**{k: jnp.asarray(v, jnp.float32) for k, v in columns.items()})


def transforms_to_dicts(transforms: Transforms, config: AugmentConfig) -> list[dict]:
    """Keras-style parameter dicts (None for disabled channel shift / brightness)."""
    host = jax.tree_util.tree_map(np.asarray, transforms)
    out = []
    for i in range(host.theta.shape[0]):
        out.append({
            "theta": float(host.theta[i]), "tx": float(host.tx[i]), "ty": float(host.ty[i]),
            "shear": float(host.shear[i]), "zx": float(host.zx[i]), "zy": float(host.zy[i]),
            "flip_horizontal": bool(host.flip_horizontal[i]),
            "flip_vertical": bool(host.flip_vertical[i]),
            "channel_shift_intensity": (float(host.channel_shift_intensity[i])
                                        if config.channel_shift_range else None),
            "brightness": (float(host.brightness[i])
                           if config.brightness_range is not None else None),
        })
    return out
