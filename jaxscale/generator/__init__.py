"""`ImageDataGenerator`: Keras' constructor keywords and methods, computed with JAX on device.

For users coming from Keras: change the import (`from jaxscale import ImageDataGenerator`) and
keep the code: the same knobs with the same meaning, `fit` / `standardize` / `flow` /
`flow_from_directory` / `flow_from_dataframe`, and iterators that `model.fit` takes. Statistics
are computed on device in one streaming pass; batches are gathered (or decoded from files on
the host), augmented and scaled on the device, several per compiled call
(`jaxscale.generator.iterators`). Keras' module-level functions (`random_rotation`, ...)
are in `jaxscale.generator.functions` and importable from here, as from
`keras.preprocessing.image`.

Every difference from Keras 3's `keras.src.legacy.preprocessing.image` is listed, with the
test that pins it, in docs/keras.md. The main ones: featurewise modes raise before `fit`
(Keras warns and skips them); `fit` applies the steps `standardize` applies before the
featurewise ones; `standardize` of a batch is per image and returns a new array; batches are
jax.Arrays, images stay in their dtype on device; validation subsets are not augmented; random
draws come from `jax.random` (seeded from NumPy's global generator when `seed` is None, as
Keras draws from it), so a seed reproduces our numbers, not Keras'.
"""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale import augmentation, scaling, statistics
from jaxscale.generator.iterators import (
    DataFrameIterator,
    DirectoryIterator,
    FlowIterator,
    Iterator,
    NumpyArrayIterator,
    keras_iterator_class,
    resolve_seed,
)
from jaxscale.generator.functions import (
    apply_affine_transform,
    apply_brightness_shift,
    apply_channel_shift,
    random_brightness,
    random_channel_shift,
    random_rotation,
    random_shear,
    random_shift,
    random_zoom,
)
from jaxscale.scaling import ScalingConfig, ScalingParams
from jaxscale.validation import as_array, channel_axis, check_images

# What `keras.preprocessing.image` offered, under the same names.
__all__ = ["DataFrameIterator", "DirectoryIterator", "FlowIterator", "ImageDataGenerator",
           "Iterator", "NumpyArrayIterator", "apply_affine_transform", "apply_brightness_shift",
           "apply_channel_shift", "random_brightness", "random_channel_shift",
           "random_rotation", "random_shear", "random_shift", "random_zoom"]

# dtype -> (ScalingConfig dtype, cast on device, cast on the host)
_DTYPES = {"float32": ("float32", None, None), "bfloat16": ("bfloat16", None, None),
           "float16": ("float32", "float16", None), "float64": ("float32", None, "float64")}


class ImageDataGenerator:
    """Keras' ImageDataGenerator, backed by `jaxscale.scaling` on device.

    Keras' keywords with Keras' meaning: the scaling ones (featurewise_center,
    samplewise_center, featurewise_std_normalization, samplewise_std_normalization,
    zca_whitening, zca_epsilon, rescale, preprocessing_function, data_format: see
    `ScalingConfig`; data_format None means "channels_last") and the augmentation ones
    (rotation_range, width_shift_range, height_shift_range, shear_range, zoom_range,
    horizontal_flip, vertical_flip, brightness_range, channel_shift_range, fill_mode, cval,
    interpolation_order: see `AugmentConfig`; stored as `self.augment_config`).

    Args:
      validation_split: fraction of the data `flow(subset="validation")` yields, taken from
        the start of the array (of each class folder for `flow_from_directory`) as Keras does.
      dtype: output dtype: "float32" (default), "bfloat16", "float16" (cast on device), or
        "float64" (computed in float32, cast on the host: batches are then NumPy arrays).
      statistics_scope: featurewise statistics per "channel" (Keras), "pixel" or "global".
      check_finite: check the inputs and output of every compiled call for NaN/inf (and the
        fitted std for negative values) in that same call and raise ValueError; False skips
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
        dtype = np.dtype(dtype).name if dtype not in (None, "bfloat16") else dtype
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.dtype = dtype or "float32"
        self.config = ScalingConfig(
            rescale=rescale, samplewise_center=samplewise_center,
            samplewise_std_normalization=samplewise_std_normalization,
            featurewise_center=featurewise_center,
            featurewise_std_normalization=featurewise_std_normalization,
            zca_whitening=zca_whitening, zca_epsilon=zca_epsilon,
            preprocessing_function=preprocessing_function,
            statistics_scope=statistics_scope,
            data_format=data_format or "channels_last",
            dtype=_DTYPES[self.dtype][0])
        self.augment_config = augmentation.augment_config(
            data_format=self.config.data_format, **augment_kwargs)
        self.validation_split = validation_split
        self.check_finite = bool(check_finite)
        self.params: ScalingParams | None = None if self.config.needs_fit else ScalingParams()

    # Keras' attribute names, for code that reads them.
    @property
    def _validation_split(self) -> float:
        return self.validation_split

    def __getattr__(self, name):
        # featurewise_center, rescale, rotation_range, ...: read from the two configs.
        for config in ("config", "augment_config"):
            holder = self.__dict__.get(config)
            if holder is not None and hasattr(holder, name) and not name.startswith("_"):
                return getattr(holder, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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

    def _iterator_options(self, subset: str | None) -> dict:
        """What every iterator gets from the generator; validation data is not augmented."""
        self._require_fit()
        if self.check_finite:
            scaling.check_params(self.params, self.config)  # once: the batches then check x
        augment_config = None if (subset == "validation"
                                  or self.augment_config.is_identity) else self.augment_config
        _, device_dtype, host_dtype = _DTYPES[self.dtype]
        return {"config": self.config, "params": self.params, "augment_config": augment_config,
                "out_dtype": device_dtype, "host_dtype": host_dtype,
                "check_finite": self.check_finite}

    def _split(self, subset: str | None) -> tuple[float, float] | None:
        if subset is None:
            return None
        if subset not in ("training", "validation"):
            raise ValueError(f'Invalid subset name: {subset}; expected "training" or '
                             '"validation".')
        if not self.validation_split:
            raise ValueError(f"subset={subset!r} needs validation_split > 0 in the "
                             "ImageDataGenerator constructor")
        return ((0.0, self.validation_split) if subset == "validation"
                else (self.validation_split, 1.0))

    def flow(self, x, y=None, batch_size: int = 32, shuffle: bool = True,
             sample_weight=None, seed: int | None = None, save_to_dir=None,
             save_prefix: str = "", save_format: str = "png",
             ignore_class_split: bool = False, subset: str | None = None
             ) -> NumpyArrayIterator:
        """Batches of x (and y, sample_weight), augmented and scaled, as Keras' flow.

        Args:
          x: images uint8 or float[N, H, W, C] (or channels_first), NumPy or JAX; or a tuple
            (images, extra) where extra is an array or a list of arrays of N rows, passed
            through: batches then have x = [images, *extras].
          y: targets, any array of N rows (numeric ones live on the device).
          batch_size, shuffle, seed: as Keras; seed None draws one from NumPy's generator.
          sample_weight: float[N], yielded third (only with y, as Keras).
          save_to_dir, save_prefix, save_format: save every image handed out, as Keras.
          ignore_class_split: skip the check that the training and validation subsets hold
            the same classes.
          subset: "training" or "validation" (needs validation_split): the end or the
            start of the arrays.

        Returns:
          A `NumpyArrayIterator` (a `keras.utils.PyDataset` when Keras is imported):
          `len()` batches per epoch, the last one smaller when batch_size does not divide N.
        """
        x_misc = []
        # Keras' (images, extra) pair; a nested list of numbers is the images themselves
        if isinstance(x, (tuple, list)) and not (
                len(x) and isinstance(x[0], (list, tuple)) and len(x[0]) and not isinstance(
                    x[0][0], (np.ndarray, jax.Array))):
            x, extra = x[0], x[1]
            x_misc = [np.asarray(extra)] if not isinstance(extra, list) else [
                np.asarray(e) for e in extra]
            for misc in x_misc:
                if len(x) != len(misc):
                    raise ValueError("All of the arrays in `x` should have the same length. "
                                     f"Found a pair with: len(x[0]) = {len(x)}, "
                                     f"len(x[?]) = {len(misc)}")
        if y is not None and len(x) != len(y):
            raise ValueError("`x` (images tensor) and `y` (labels) should have the same "
                             f"length. Found: x.shape = {tuple(np.shape(x))}, "
                             f"y.shape = {tuple(np.shape(y))}")
        if sample_weight is not None and len(x) != len(sample_weight):
            raise ValueError("`x` (images tensor) and `sample_weight` should have the same "
                             f"length. Found: x.shape = {tuple(np.shape(x))}, "
                             f"sample_weight.shape = {tuple(np.shape(sample_weight))}")
        x = as_array(x, name="x")
        split = self._split(subset)
        options = self._iterator_options(subset)
        check_images(x, self.config.data_format, name="x")
        if split is not None:
            n = len(x)
            cut = int(n * self.validation_split)
            if (y is not None and not ignore_class_split and not np.array_equal(
                    np.unique(np.asarray(y[:cut])), np.unique(np.asarray(y[cut:])))):
                raise ValueError("Training and validation subsets have different number of "
                                 "classes after the split. If your numpy arrays are sorted by "
                                 "the label, you might want to shuffle them.")
            part = slice(0, cut) if subset == "validation" else slice(cut, n)
            x = x[part]
            x_misc = [m[part] for m in x_misc]
            y = None if y is None else y[part]
            sample_weight = None if sample_weight is None else sample_weight[part]
        if save_to_dir:
            os.makedirs(save_to_dir, exist_ok=True)
        return keras_iterator_class(NumpyArrayIterator)(
            x, y, batch_size=batch_size, shuffle=shuffle, sample_weight=sample_weight,
            seed=seed, x_misc=x_misc, save_to_dir=save_to_dir, save_prefix=save_prefix,
            save_format=save_format, **options)

    def flow_from_directory(self, directory, target_size=(256, 256), color_mode="rgb",
                            classes=None, class_mode="categorical", batch_size=32,
                            shuffle=True, seed=None, save_to_dir=None, save_prefix="",
                            save_format="png", follow_links=False, subset=None,
                            interpolation="nearest", keep_aspect_ratio=False, *,
                            decode_workers: int | None = None) -> DirectoryIterator:
        """Batches of the image files in `directory`, one subfolder per class, as Keras'.

        Files are listed in Keras' order and decoded and resized on the host with Pillow as
        Keras does (`jaxscale.data.image_files`, in `decode_workers` processes: None, one per
        CPU; 1, in this process), then augmented and
        scaled on the device. Keras' arguments, same meaning: target_size (height, width),
        color_mode "grayscale" / "rgb" / "rgba", classes (subfolders, in index order),
        class_mode "categorical" (one-hot) / "binary" / "sparse" (float32 indices) /
        "input" (x as target) / None (x only), follow_links, subset (validation_split of
        each class folder), interpolation, keep_aspect_ratio, save_to_dir / save_prefix /
        save_format.

        Returns:
          A `DirectoryIterator` with Keras' attributes (filenames, classes, class_indices,
          ...).
        """
        split = self._split(subset)
        options = self._iterator_options(subset)
        if save_to_dir:
            os.makedirs(save_to_dir, exist_ok=True)
        return keras_iterator_class(DirectoryIterator)(
            directory, target_size=target_size, color_mode=color_mode, classes=classes,
            class_mode=class_mode, batch_size=batch_size, shuffle=shuffle, seed=seed,
            save_to_dir=save_to_dir, save_prefix=save_prefix, save_format=save_format,
            follow_links=follow_links, split=split, subset=subset,
            interpolation=interpolation, keep_aspect_ratio=keep_aspect_ratio,
            label_dtype=self._label_dtype, decode_workers=decode_workers, **options)

    def flow_from_dataframe(self, dataframe, directory=None, x_col="filename", y_col="class",
                            weight_col=None, target_size=(256, 256), color_mode="rgb",
                            classes=None, class_mode="categorical", batch_size=32,
                            shuffle=True, seed=None, save_to_dir=None, save_prefix="",
                            save_format="png", subset=None, interpolation="nearest",
                            validate_filenames=True, keep_aspect_ratio=False, *,
                            decode_workers: int | None = None, **kwargs
                            ) -> DataFrameIterator:
        """Batches of the image files named in `dataframe[x_col]`, as Keras' method.

        Keras' arguments, same meaning: directory (joined to each name; None: names are
        paths), y_col (a column, or a list of columns for "multi_output" / "raw"), weight_col,
        class_mode "categorical" / "binary" / "sparse" / "input" / "multi_output" / "raw" /
        None, classes, validate_filenames (drop names that are not image files, with a
        warning), and those of `flow_from_directory`. Keras' deprecated keywords (has_ext,
        sort, drop_duplicates, class_mode="other") warn as in Keras.

        Returns:
          A `DataFrameIterator` with Keras' attributes.
        """
        for name, message in (("has_ext", "has_ext is deprecated, filenames in the dataframe "
                                          "have to match the exact filenames in disk."),
                              ("sort", "sort is deprecated, batches will be created in the"
                                       "same order than the filenames provided if `shuffle`"
                                       "is set to `False`."),
                              ("drop_duplicates", "drop_duplicates is deprecated, you can "
                                                  "drop duplicates by using the "
                                                  "pandas.DataFrame.drop_duplicates method.")):
            if kwargs.pop(name, None) is not None:
                warnings.warn(message, DeprecationWarning, stacklevel=2)
        if kwargs:
            raise TypeError(f"flow_from_dataframe got unexpected keyword(s) {sorted(kwargs)}")
        if class_mode == "other":
            warnings.warn('`class_mode="other"` is deprecated, please use `class_mode="raw"`.',
                          DeprecationWarning, stacklevel=2)
            class_mode = "raw"
        split = self._split(subset)
        options = self._iterator_options(subset)
        if save_to_dir:
            os.makedirs(save_to_dir, exist_ok=True)
        return keras_iterator_class(DataFrameIterator)(
            dataframe, directory, x_col=x_col, y_col=y_col, weight_col=weight_col,
            target_size=target_size, color_mode=color_mode, classes=classes,
            class_mode=class_mode, batch_size=batch_size, shuffle=shuffle, seed=seed,
            save_to_dir=save_to_dir, save_prefix=save_prefix, save_format=save_format,
            split=split, subset=subset, interpolation=interpolation,
            keep_aspect_ratio=keep_aspect_ratio, validate_filenames=validate_filenames,
            label_dtype=self._label_dtype, decode_workers=decode_workers, **options)

    @property
    def _label_dtype(self) -> str:
        """Keras builds file iterators' labels in the generator's dtype; float32 here for
        bfloat16 and float64 (labels stay on the device, which has no float64)."""
        return "float16" if self.dtype == "float16" else "float32"


def _key_from_seed(seed: int | None) -> jax.Array:
    return jax.random.PRNGKey(resolve_seed(seed))


def _check_single_image(x, data_format: str) -> None:
    if np.ndim(x) != 3:
        raise ValueError(f"expected one image of rank 3 ({data_format}), got shape "
                         f"{tuple(np.shape(x))}")
    check_images(np.asarray(x)[None] if not isinstance(x, jax.Array) else x[None],
                 data_format, name="x")
