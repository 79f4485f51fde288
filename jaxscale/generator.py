"""`ImageDataGenerator`: Keras' constructor keywords and methods, computed with JAX on device.

For users coming from Keras: the same knobs with the same meaning, `fit` / `standardize` /
`flow`, but statistics are computed on device in one streaming pass and every batch is
gathered and scaled by one compiled function from a device-resident copy of the data.

Differences from Keras 3's `keras.src.legacy.preprocessing.image.ImageDataGenerator`:

- `fit` computes featurewise statistics after `preprocessing_function` and the samplewise
  steps, the same steps `standardize` applies before the featurewise ones, so fitted data comes
  out centred (Keras skips them in `fit`).
- `standardize` on a rank-4 array treats it as a batch and applies the samplewise steps per
  image; Keras computes one mean over the whole array. A rank-3 array is one image, as in Keras.
- `standardize` returns a new array instead of modifying its argument in place.
- A featurewise mode used before `fit` raises `ValueError` (Keras warns and skips the step).
- `flow` yields JAX arrays on the default device; images stay on device in their own dtype
  (uint8 stays uint8: 4x less memory than Keras' float32 copy).
- Augmentation (`jaxscale.augmentation`) runs on device inside the same compiled gather as
  the scaling, with a per-batch key folded from the flow's seed, epoch and batch index.
  `flow(subset="validation")` batches are never augmented (Keras augments them too).
  See `jaxscale.augmentation` for the transform conventions and their deviations from Keras
  (height/width shift axes, centre of non-square images, brightness without 8-bit rounding).
- `fit(augment=True)` augments the raw images and then applies the scaling steps, the order
  `flow` uses (Keras' fit rescales first, then augments).
- Random draws come from `jax.random`, not NumPy's global state: a seed gives reproducible
  results, but not Keras' numbers.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale import augmentation, scaling, statistics
from jaxscale.augmentation import AugmentConfig
from jaxscale.scaling import ScalingConfig, ScalingParams
from jaxscale.validation import as_array, channel_axis, check_images, finite, raise_on_flags

class ImageDataGenerator:
    """Keras' ImageDataGenerator, backed by `jaxscale.scaling` on device.

    Args:
      featurewise_center, samplewise_center, featurewise_std_normalization,
      samplewise_std_normalization, zca_whitening, zca_epsilon, rescale,
      preprocessing_function, data_format: as in Keras (see `ScalingConfig`);
        data_format None means "channels_last".
      validation_split: fraction of the data `flow(subset="validation")` yields, taken from
        the start of the array as Keras does.
      dtype: output dtype, "float32" (default) or "bfloat16".
      statistics_scope: featurewise statistics per "channel" (Keras), "pixel" or "global".
      rotation_range, width_shift_range, height_shift_range, shear_range, zoom_range,
      horizontal_flip, vertical_flip, brightness_range, channel_shift_range, fill_mode, cval,
      interpolation_order: Keras' augmentation keywords (see `AugmentConfig`); stored as
        `self.augment_config`.
      check_finite: check every jitted call's inputs and output for NaN/inf (and the fitted
        std for negative values) in the same compiled call, raising ValueError; False skips
        the check (see `scaling.scale_jit`).
    """

    def __init__(self, featurewise_center=False, samplewise_center=False,
                 featurewise_std_normalization=False, samplewise_std_normalization=False,
                 zca_whitening=False, zca_epsilon=1e-6, rescale=None,
                 preprocessing_function=None, data_format=None, validation_split=0.0,
                 dtype=None, statistics_scope="channel", check_finite=True,
                 **augment_kwargs):
        unknown = set(augment_kwargs) - set(augmentation.AUGMENTATION_KEYWORDS)
        if unknown:
            raise TypeError(f"ImageDataGenerator got unexpected keyword(s) {sorted(unknown)}")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(
                f"validation_split must be in [0, 1), got {validation_split}")
        self.config = ScalingConfig(
            rescale=rescale, samplewise_center=samplewise_center,
            samplewise_std_normalization=samplewise_std_normalization,
            featurewise_center=featurewise_center,
            featurewise_std_normalization=featurewise_std_normalization,
            zca_whitening=zca_whitening, zca_epsilon=zca_epsilon,
            preprocessing_function=preprocessing_function,
            statistics_scope=statistics_scope,
            data_format=data_format or "channels_last",
            dtype=dtype or "float32")
        self.augment_config = augmentation.augment_config(
            data_format=self.config.data_format, **augment_kwargs)
        self.validation_split = validation_split
        self.check_finite = bool(check_finite)
        self.params: ScalingParams | None = None if self.config.needs_fit else ScalingParams()

    # Keras-shaped views of the fitted numbers, for code that reads them.
    @property
    def mean(self) -> np.ndarray | None:
        """Fitted featurewise mean, shaped like Keras' ([1, 1, C] or [C, 1, 1]), or None."""
        return self._keras_shaped(None if self.params is None else self.params.mean)

    @property
    def std(self) -> np.ndarray | None:
        """Fitted featurewise std, shaped like Keras', or None."""
        return self._keras_shaped(None if self.params is None else self.params.std)

    @property
    def zca_whitening_matrix(self) -> np.ndarray | None:
        return None if self.params is None or self.params.zca_matrix is None else np.asarray(
            self.params.zca_matrix)

    def _keras_shaped(self, stat):
        if stat is None:
            return None
        stat = np.asarray(stat)
        if stat.ndim == 1:
            shape = [1, 1, 1]
            shape[channel_axis(self.config.data_format) - 1] = stat.shape[0]
            return stat.reshape(shape)
        if stat.ndim == 3 and self.config.data_format == "channels_first":
            return np.transpose(stat, (2, 0, 1))
        return stat

    @property
    def data_format(self) -> str:
        return self.config.data_format

    def fit(self, x, augment: bool = False, rounds: int = 1, seed: int | None = None,
            *, batch_size: int | None = None, progress: bool = False) -> "ImageDataGenerator":
        """Computes the featurewise statistics (and ZCA matrix) on device.

        Args:
          x: uint8 or float[N, H, W, C] (or channels_first), NumPy or JAX.
          augment: fit on `rounds` augmented passes over `x` (as Keras).
          rounds: number of passes when augmenting.
          seed: seed of the augmentation.
          batch_size: images per device step; None: about 2M values per step
            (`statistics.auto_batch_size`).
          progress: show a progress bar.

        Returns:
          self, with `params` (and Keras-shaped `mean`, `std`, `zca_whitening_matrix`) set.
        """
        x = as_array(x, name="x")
        check_images(x, self.config.data_format, name="x")
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
                batch_size, (int, np.integer)) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got "
                             f"{batch_size!r}")
        data = x
        if augment:
            data = self._augmented_passes(
                x, rounds, seed, batch_size or statistics.auto_batch_size(tuple(x.shape[1:])))
        self.params = scaling.fit_scaling(self.config, data, batch_size=batch_size,
                                          progress=progress)
        return self

    def _augmented_passes(self, x, rounds: int, seed: int | None, batch_size: int):
        """`rounds` passes over x in batches, each batch augmented with its own key."""
        key = _key_from_seed(seed)
        for r in range(rounds):
            for b, s in enumerate(range(0, x.shape[0], batch_size)):
                chunk = x[s:s + batch_size]
                if self.augment_config.is_identity:
                    yield chunk
                else:
                    yield augmentation.augment_jit(
                        jax.random.fold_in(jax.random.fold_in(key, r), b), chunk,
                        self.augment_config, check=self.check_finite)

    def get_random_transform(self, img_shape, seed: int | None = None) -> dict:
        """Random parameters for one image of shape img_shape, a dict with Keras' keys.

        Keys: theta, tx, ty, shear, zx, zy, flip_horizontal, flip_vertical,
        channel_shift_intensity (None when disabled), brightness (None when disabled); the
        meaning of Keras' `apply_transform` (see `jaxscale.augmentation`).
        """
        if len(img_shape) != 3:
            raise ValueError(f"img_shape must be one image's (H, W, C) or (C, H, W), "
                             f"got {tuple(img_shape)}")
        hw = (tuple(img_shape[1:3]) if self.config.data_format == "channels_first"
              else tuple(img_shape[:2]))
        transforms = augmentation.sample_transforms(_key_from_seed(seed), 1, hw,
                                                    self.augment_config)
        return augmentation.transforms_to_dicts(transforms, self.augment_config)[0]

    def apply_transform(self, x, transform_parameters: dict) -> jax.Array:
        """Applies Keras-style parameters to one image [H, W, C] (or [C, H, W]); float32.

        As Keras, the channel shift and brightness steps run when their entries are not None,
        whatever the constructor enabled; fill_mode, cval and interpolation_order come from
        the constructor.
        """
        _check_single_image(x, self.config.data_format)
        params = transform_parameters
        config = self.augment_config.replace(
            rotation_range=self.augment_config.rotation_range or 360.0,  # always resample
            channel_shift_range=(
                1.0 if params.get("channel_shift_intensity") is not None else 0.0),
            brightness_range=(1.0, 1.0) if params.get("brightness") is not None else None)
        transforms = augmentation.transforms_from_dicts([params])
        return augmentation.apply_transforms_jit(jnp.asarray(x)[None], transforms, config,
                                                 check=self.check_finite)[0]

    def random_transform(self, x, seed: int | None = None) -> jax.Array:
        """One image [H, W, C] (or [C, H, W]) randomly augmented; float32, same shape."""
        _check_single_image(x, self.config.data_format)
        return augmentation.augment_jit(_key_from_seed(seed), jnp.asarray(x)[None],
                                        self.augment_config, check=self.check_finite)[0]

    def _require_fit(self):
        if self.params is None:
            raise ValueError(
                "This ImageDataGenerator uses featurewise_center, "
                "featurewise_std_normalization or zca_whitening but has not been fit: call "
                ".fit(train_images) first")

    def standardize(self, x) -> jax.Array:
        """Scales a batch [N, H, W, C] (or one image [H, W, C]); returns a new array."""
        self._require_fit()
        x = as_array(x, name="x")
        single = np.ndim(x) == 3
        batch = x[None] if single else x
        out = scaling.scale_jit(batch, self.config, self.params, check=self.check_finite)
        return out[0] if single else out

    def flow(self, x, y=None, batch_size: int = 32, shuffle: bool = True,
             sample_weight=None, seed: int | None = None, subset: str | None = None
             ) -> "FlowIterator":
        """An endless iterator of scaled batches (x, y[, sample_weight]), as Keras' flow.

        `len()` is the number of batches per epoch; the order is reshuffled every epoch from
        `seed`; the last batch of an epoch is smaller when N is not a multiple of batch_size.
        """
        self._require_fit()
        x = as_array(x, name="x")
        check_images(x, self.config.data_format, name="x")
        scaling.check_params(self.params, self.config)
        n = x.shape[0]
        for name, other in (("y", y), ("sample_weight", sample_weight)):
            if other is not None and len(other) != n:
                raise ValueError(f"x and {name} must have the same length: "
                                 f"{n} != {len(other)}")
        if subset is not None:
            if subset not in ("training", "validation"):
                raise ValueError(f"subset must be 'training' or 'validation', got {subset!r}")
            if not self.validation_split:
                raise ValueError("subset needs validation_split > 0 in the constructor")
            split = int(n * self.validation_split)
            part = slice(0, split) if subset == "validation" else slice(split, n)
            x = x[part]
            y = None if y is None else y[part]
            sample_weight = None if sample_weight is None else sample_weight[part]
        # Evaluation data is never augmented.
        augment_config = None if (subset == "validation"
                                  or self.augment_config.is_identity) else self.augment_config
        return FlowIterator(x, y, sample_weight, config=self.config, params=self.params,
                            batch_size=batch_size, shuffle=shuffle, seed=seed,
                            augment_config=augment_config, check_finite=self.check_finite)


def _key_from_seed(seed: int | None) -> jax.Array:
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    return jax.random.PRNGKey(seed)


def _check_single_image(x, data_format: str) -> None:
    if np.ndim(x) != 3:
        raise ValueError(f"expected one image of rank 3 ({data_format}), got shape "
                         f"{tuple(np.shape(x))}")
    check_images(np.asarray(x)[None] if not isinstance(x, jax.Array) else x[None],
                 data_format, name="x")


@functools.partial(jax.jit, static_argnames=("size", "config", "augment_config", "check"))
def _gather_and_scale(images, extras, order, start, params, key, epoch, *, size: int,
                      config: ScalingConfig, augment_config: AugmentConfig | None = None,
                      check: bool = False):
    """Rows order[start:start+size] of images (augmented, then scaled, as Keras) and of every
    array in extras, and bool[]: the scaled batch is finite (True unless `check`). The
    augmentation key is folded from key, epoch and start on device."""
    rows = jax.lax.dynamic_slice_in_dim(order, start, size)
    batch = jnp.take(images, rows, axis=0)
    if augment_config is not None:
        batch_key = jax.random.fold_in(jax.random.fold_in(key, epoch), start)
        batch = augmentation.augment(batch_key, batch, augment_config)
    batch = scaling.scale(batch, config, params)
    return (batch, tuple(jnp.take(e, rows, axis=0) for e in extras),
            finite(batch) if check else jnp.bool_(True))


@functools.partial(jax.jit, static_argnames=("n", "shuffle"))
def _epoch_order(key, epoch, *, n: int, shuffle: bool):
    if not shuffle:
        return jnp.arange(n, dtype=jnp.int32)
    return jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)


class FlowIterator:
    """Iterator over scaled batches of a device-resident array (see `ImageDataGenerator.flow`).

    One compiled function gathers, augments (training data only) and scales a batch; it
    compiles once for the full batch shape and once more for the last, smaller batch of an
    epoch, never per batch.
    """

    def __init__(self, x, y, sample_weight, *, config: ScalingConfig,
                 params: ScalingParams, batch_size: int, shuffle: bool, seed: int | None,
                 augment_config: AugmentConfig | None = None, check_finite: bool = True):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or (
                batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.check_finite = check_finite
        self.images = jnp.asarray(x)
        self.extras = tuple(jnp.asarray(a) for a in (y, sample_weight) if a is not None)
        self.n = int(self.images.shape[0])
        if self.n == 0:
            raise ValueError("flow got no images")
        self.config, self.params = config, params
        self.batch_size, self.shuffle = batch_size, shuffle
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.key = jax.random.PRNGKey(seed)
        self.augment_config = augment_config
        # Its own stream, so turning augmentation on does not change the shuffle order.
        self.augment_key = jax.random.fold_in(self.key, 1)
        self.epoch, self.batch_index = 0, 0
        self._order = None

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        return self

    def reset(self) -> None:
        """Starts the next batch at the beginning of a new epoch."""
        self.batch_index = 0
        self._order = None

    def __next__(self):
        if self._order is None:
            self._order = _epoch_order(self.key, self.epoch, n=self.n, shuffle=self.shuffle)
        start = self.batch_index * self.batch_size
        size = min(self.batch_size, self.n - start)
        batch, extras, batch_finite = _gather_and_scale(
            self.images, self.extras, self._order, start, self.params, self.augment_key,
            self.epoch, size=size, config=self.config, augment_config=self.augment_config,
            check=self.check_finite)
        if self.check_finite:
            # the images and params were checked when the flow was made: only overflow (or
            # a preprocessing_function) can bring NaN/inf here
            raise_on_flags(batch_finite[None], (
                "a scaled batch holds NaN or inf: float32 overflowed, or the "
                "preprocessing_function produced them",), caller="flow")
        self.batch_index += 1
        if self.batch_index >= len(self):
            self.batch_index, self._order = 0, None
            self.epoch += 1
        return (batch, *extras) if extras else batch
