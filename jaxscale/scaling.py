"""Every scaling mode of Keras' ImageDataGenerator as one pure, jittable function.

A mode is data: a frozen `ScalingConfig` (hashable, so it is a static argument of `jit`). The
fitted numbers a config needs (featurewise mean/std, the ZCA matrix) are a pytree,
`ScalingParams`, computed on device by `fit_scaling`. `scale(images, config, params)` applies
the steps in the order of Keras 3's `ImageDataGenerator.standardize`:

    preprocessing_function -> rescale -> samplewise center -> samplewise std
    -> featurewise center -> featurewise std -> ZCA whitening

Keras' implications between flags hold here too (with the same warnings): `zca_whitening`
turns on `featurewise_center` and off `featurewise_std_normalization`;
`featurewise_std_normalization` turns on `featurewise_center`; `samplewise_std_normalization`
turns on `samplewise_center`.

One deliberate difference: Keras' `fit` computes featurewise statistics on rescaled data but
skips `preprocessing_function` and the samplewise steps that `standardize` applies before the
featurewise ones, so with both kinds enabled its output is not centred. `fit_scaling` applies
every step that precedes the featurewise ones, so fitted data comes out with mean 0, std 1.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxscale import statistics
from jaxscale.reductions import sum_middle_axis
from jaxscale.statistics import Scope
from jaxscale.validation import (
    DataFormat,
    as_array,
    check_data_format,
    check_images,
    check_representable,
    finite,
    raise_on_flags,
)

STD_EPSILON = 1e-6  # Keras adds this to every std it divides by
OUTPUT_DTYPES = ("float32", "bfloat16")
# The ZCA matrix is D x D float32 (D = H*W*C); beyond this it would not fit comfortably.
MAX_ZCA_FEATURES = 16384


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
    """What to do to pixels; the same knobs and meaning as Keras' ImageDataGenerator.

    Attributes:
      rescale: multiply by this (e.g. 1/255); None or 0 disables, as in Keras.
      samplewise_center: subtract each image's mean (over all its pixels and channels).
      samplewise_std_normalization: divide each image by its std + 1e-6.
      featurewise_center: subtract the dataset mean (needs `fit_scaling`).
      featurewise_std_normalization: divide by the dataset std + 1e-6.
      zca_whitening: multiply each flattened image by the ZCA matrix of the dataset.
      zca_epsilon: added to singular values, as in Keras 3.
      preprocessing_function: float32[N, H, W, C] -> same shape, jittable; runs first.
      statistics_scope: featurewise statistics per "channel" (Keras), "pixel" or "global".
      data_format: "channels_last" (NHWC) or "channels_first" (NCHW).
      dtype: output dtype, "float32" or "bfloat16" (arithmetic is float32 either way).
    """

    rescale: float | None = None
    samplewise_center: bool = False
    samplewise_std_normalization: bool = False
    featurewise_center: bool = False
    featurewise_std_normalization: bool = False
    zca_whitening: bool = False
    zca_epsilon: float = 1e-6
    preprocessing_function: Callable | None = None
    statistics_scope: Scope = "channel"
    data_format: DataFormat = "channels_last"
    dtype: str = "float32"

    def __post_init__(self):
        check_data_format(self.data_format)
        if self.dtype not in OUTPUT_DTYPES:
            raise ValueError(f"dtype must be one of {OUTPUT_DTYPES}, got {self.dtype!r}")
        if self.statistics_scope not in statistics.SCOPES:
            raise ValueError(f"statistics_scope must be one of {statistics.SCOPES}, "
                             f"got {self.statistics_scope!r}")
        if self.rescale is not None and not math.isfinite(self.rescale):
            raise ValueError(f"rescale must be finite, got {self.rescale}")
        if self.zca_epsilon < 0:
            raise ValueError(f"zca_epsilon must be >= 0, got {self.zca_epsilon}")
        if self.preprocessing_function is not None and not callable(
                self.preprocessing_function):
            raise ValueError("preprocessing_function must be callable")
        self._apply_keras_implications()

    def _apply_keras_implications(self):
        def override(field, value, because):
            object.__setattr__(self, field, value)
            warnings.warn(f"This ScalingConfig specifies `{because}`, which overrides "
                          f"setting of `{field}`.", stacklevel=4)

        if self.zca_whitening:
            if not self.featurewise_center:
                override("featurewise_center", True, "zca_whitening")
            if self.featurewise_std_normalization:
                override("featurewise_std_normalization", False, "zca_whitening")
        if self.featurewise_std_normalization and not self.featurewise_center:
            override("featurewise_center", True, "featurewise_std_normalization")
        if self.samplewise_std_normalization and not self.samplewise_center:
            override("samplewise_center", True, "samplewise_std_normalization")

    @property
    def needs_fit(self) -> bool:
        """Whether `scale` needs `ScalingParams` from `fit_scaling`."""
        return self.featurewise_center or self.featurewise_std_normalization or \
            self.zca_whitening

    def replace(self, **changes) -> "ScalingConfig":
        return dataclasses.replace(self, **changes)


MODES: dict[str, ScalingConfig] = {
    "none": ScalingConfig(),
    "normalize": ScalingConfig(rescale=1.0 / 255.0),
    "center": ScalingConfig(featurewise_center=True),
    "standardize": ScalingConfig(featurewise_center=True, featurewise_std_normalization=True),
    "sample_center": ScalingConfig(samplewise_center=True),
    "sample_standardize": ScalingConfig(samplewise_center=True,
                                        samplewise_std_normalization=True),
    "zca": ScalingConfig(featurewise_center=True, zca_whitening=True),
}


def keras_keywords(config: ScalingConfig) -> dict:
    """The keywords of Keras' ImageDataGenerator that scale as `config` does.

    The fields Keras knows (every field but `statistics_scope`, with Keras' names and
    defaults) where they differ from the defaults, so `ImageDataGenerator(**keras_keywords(c))`
    builds `c` in Keras and in jaxscale alike. The one table of mode -> Keras keywords: the
    README's mode table, the benchmarks' Keras peer and the tests read it from here.

    Raises:
      ValueError: `config` has no Keras equivalent (`statistics_scope` other than "channel").
    """
    if config.statistics_scope != "channel":
        raise ValueError(f"Keras has no statistics_scope={config.statistics_scope!r}: its "
                         "featurewise statistics are per channel")
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(config)
            if field.name != "statistics_scope" and getattr(config, field.name) != field.default}


def scaling_config(mode: str | ScalingConfig, **overrides) -> ScalingConfig:
    """A config from a mode name (see `MODES`) or a config, with fields overridden."""
    if isinstance(mode, ScalingConfig):
        config = mode
    elif mode in MODES:
        config = MODES[mode]
    else:
        raise ValueError(f"unknown scaling mode {mode!r}; known: {sorted(MODES)}")
    return config.replace(**overrides) if overrides else config


@flax.struct.dataclass
class ScalingParams:
    """Numbers fitted on a dataset, in channels_last order whatever the data's layout.

    Attributes:
      mean: float32[C], [H, W, C] or [] (by statistics scope), or None if not centring.
      std: same shape as mean, or None if not dividing by the std.
      zca_matrix: float32[D, D], D = H*W*C flattened in channels_last order, or None.
      stats: the DatasetStats the mean and std came from (kept for saving), or None.
    """

    mean: jax.Array | None = None
    std: jax.Array | None = None
    zca_matrix: jax.Array | None = None
    stats: statistics.DatasetStats | None = None


def _samplewise_and_before(images: jax.Array, config: ScalingConfig) -> jax.Array:
    """float32 images after the steps that precede the featurewise ones."""
    x = images.astype(jnp.float32)
    if config.preprocessing_function is not None:
        x = config.preprocessing_function(x).astype(jnp.float32)
    if config.rescale:
        x = x * jnp.float32(config.rescale)
    if config.samplewise_center or config.samplewise_std_normalization:
        # Each image's mean and std over all its values (Keras: np.mean / np.std with
        # keepdims), two-pass, summed by `sum_middle_axis` (a GEMV on CPU).
        flat = x.reshape(x.shape[0], -1, 1)
        values = flat.shape[1]
        centered = flat - (sum_middle_axis(flat) / values)[:, None, :]
        if config.samplewise_center:
            flat = centered
        if config.samplewise_std_normalization:
            std = jnp.sqrt(sum_middle_axis(centered * centered) / values)
            flat = flat / (std[:, None, :] + STD_EPSILON)
        x = flat.reshape(x.shape)
    return x


def _broadcastable(stat: jax.Array, data_format: DataFormat) -> jax.Array:
    """A channels_last statistic ([C], [H, W, C] or []) shaped to broadcast over a batch."""
    if stat.ndim == 0:
        return stat
    if stat.ndim == 1:
        return stat if data_format == "channels_last" else stat.reshape(-1, 1, 1)
    return stat if data_format == "channels_last" else jnp.transpose(stat, (2, 0, 1))


def _check_params(images, config: ScalingConfig, params: ScalingParams | None) -> None:
    if not config.needs_fit:
        return
    missing = []
    if params is None or (config.featurewise_center and params.mean is None):
        missing.append("featurewise_center")
    if params is None or (config.featurewise_std_normalization and params.std is None):
        missing.append("featurewise_std_normalization")
    if params is None or (config.zca_whitening and params.zca_matrix is None):
        missing.append("zca_whitening")
    missing = [m for m in missing if getattr(config, m)]
    if missing:
        raise ValueError(f"{', '.join(missing)} needs statistics of the training data: "
                         "call fit_scaling(config, train_images) (or ImageDataGenerator.fit) "
                         "and pass its result as params")
    shape = tuple(images.shape)
    hwc = shape[1:] if config.data_format == "channels_last" else (*shape[2:], shape[1])
    for name in ("mean", "std"):
        stat = getattr(params, name)
        if stat is None:
            continue
        expected = statistics.stat_shape(hwc, config.statistics_scope)
        if tuple(stat.shape) != expected:
            raise ValueError(
                f"fitted {name} has shape {tuple(stat.shape)} but images of shape {shape} "
                f"({config.data_format}, scope {config.statistics_scope!r}) need {expected}: "
                "were the statistics fitted on other data?")
    if config.zca_whitening and params.zca_matrix.shape != (math.prod(hwc),) * 2:
        raise ValueError(f"ZCA matrix has shape {tuple(params.zca_matrix.shape)} but images "
                         f"of shape {shape} need {(math.prod(hwc),) * 2}")


_PARAM_FIELDS = ("mean", "std", "zca_matrix")


def _used_params(config: ScalingConfig, params: ScalingParams | None) -> dict:
    """The fitted arrays `config` uses: {field: array}."""
    if params is None:
        return {}
    used = {"mean": config.featurewise_center, "std": config.featurewise_std_normalization,
            "zca_matrix": config.zca_whitening}
    return {name: getattr(params, name) for name in _PARAM_FIELDS
            if used[name] and getattr(params, name) is not None}


def check_params(params: ScalingParams | None, config: ScalingConfig | None = None, *,
                 name: str = "params") -> None:
    """Validates fitted numbers on the host: a ScalingParams (or None), float arrays,
    mean and std of one shape, a square 2-D ZCA matrix, all finite, std >= 0.

    With `config`, only the arrays it uses are checked for values. No-op under tracing
    (`scale_jit` checks the values on device instead).

    Raises:
      ValueError: naming `name`'s field and what is wrong with it.
    """
    if params is None:
        return
    if not isinstance(params, ScalingParams):
        raise ValueError(f"{name} must be a ScalingParams (from fit_scaling or load_scaling), "
                         f"got {type(params).__name__}")
    arrays = {field: getattr(params, field) for field in _PARAM_FIELDS
              if getattr(params, field) is not None}
    for field, value in arrays.items():
        if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            raise ValueError(f"{name}.{field} must be a float array, got "
                             f"{jnp.result_type(value)}")
    if "mean" in arrays and "std" in arrays and (
            np.shape(arrays["mean"]) != np.shape(arrays["std"])):
        raise ValueError(f"{name}.mean has shape {np.shape(arrays['mean'])} but {name}.std "
                         f"{np.shape(arrays['std'])}: they must be statistics of one scope")
    zca = arrays.get("zca_matrix")
    if zca is not None and (np.ndim(zca) != 2 or np.shape(zca)[0] != np.shape(zca)[1]):
        raise ValueError(f"{name}.zca_matrix must be a square [D, D] matrix, got shape "
                         f"{np.shape(zca)}")
    checked = _used_params(config, params) if config is not None else arrays
    if any(isinstance(v, jax.core.Tracer) for v in checked.values()):
        return
    # On the host with NumPy: inside a trace (scale() in a train step, with the params
    # closed over) a jnp operation would be staged, not evaluated.
    for field, value in checked.items():
        if not np.isfinite(np.asarray(value)).all():
            raise ValueError(f"{name}.{field} holds NaN or inf values")
    if "std" in checked and (np.asarray(checked["std"]) < 0).any():
        raise ValueError(f"{name}.std holds negative values: a standard deviation is >= 0")


def scale(images: jax.Array, config: ScalingConfig,
          params: ScalingParams | None = None) -> jax.Array:
    """Applies a scaling config to a batch of images. Pure; jit with `config` static.

    Args:
      images: uint8 or float[N, H, W, C] (channels_last) or [N, C, H, W] (channels_first),
        C in {1, 3, 4}.
      config: the scaling config (see `MODES` for named ones).
      params: fitted numbers, required when `config.needs_fit`.

    Returns:
      `config.dtype` (float32 by default)[same shape as images].

    Raises:
      ValueError: bad images (rank, channels, dtype, empty, non-finite when concrete), a
        featurewise mode without params, params fitted on a different image shape, or (when
        concrete) params holding NaN, inf or a negative std.
    """
    images = as_array(images)
    check_images(images, config.data_format)
    check_params(params, config)
    _check_params(images, config, params)
    x = _samplewise_and_before(jnp.asarray(images), config)
    if config.featurewise_center:
        x = x - _broadcastable(params.mean, config.data_format)
    if config.featurewise_std_normalization:
        x = x / (_broadcastable(params.std, config.data_format) + STD_EPSILON)
    if config.zca_whitening:
        x = _apply_zca(x, params.zca_matrix, config.data_format)
    return x.astype(config.dtype)


def output_bound(config: ScalingConfig, params: ScalingParams | None,
                 input_bound: float) -> float:
    """An upper bound on |scale(x)| for every x with |x| <= input_bound (float64, on the host).

    Each step's worst case, in `scale`'s order: rescale multiplies by |rescale|, samplewise
    centering at most doubles, a division by a std + STD_EPSILON multiplies by at most
    1 / (min std + STD_EPSILON), featurewise centering adds max |mean|, ZCA multiplies by the
    largest column sum of |matrix| (`flat @ matrix`). A `preprocessing_function` can do
    anything: the bound is then inf. Callers compare it with the output dtype's largest
    finite value to know that a batch of such images cannot overflow (so needs no NaN/inf
    check once its params are checked finite).
    """
    if config.preprocessing_function is not None:
        return math.inf
    bound = float(input_bound)
    if config.rescale:
        bound *= abs(float(config.rescale))
    if config.samplewise_center:
        bound *= 2.0
    if config.samplewise_std_normalization:
        bound /= STD_EPSILON
    used = _used_params(config, params)
    if "mean" in used:
        bound += float(np.max(np.abs(np.asarray(used["mean"], np.float64)), initial=0.0))
    if "std" in used:
        bound /= float(np.min(np.asarray(used["std"], np.float64), initial=math.inf)) + \
            STD_EPSILON
    if "zca_matrix" in used:
        bound *= float(np.max(np.abs(np.asarray(used["zca_matrix"], np.float64)).sum(axis=0),
                              initial=0.0))
    return bound if math.isfinite(bound) else math.inf


def _apply_zca(x: jax.Array, matrix: jax.Array, data_format: DataFormat) -> jax.Array:
    if data_format == "channels_first":
        x = jnp.transpose(x, (0, 2, 3, 1))
    flat = x.reshape(x.shape[0], -1)
    white = jnp.matmul(flat, matrix, precision=jax.lax.Precision.HIGHEST).reshape(x.shape)
    return white if data_format == "channels_last" else jnp.transpose(white, (0, 3, 1, 2))


def _scale_and_flags(images, config: ScalingConfig, params: ScalingParams | None):
    """`scale` and, in the same program, bool[5]: images finite, each used params array
    valid (mean finite, std finite and >= 0, ZCA matrix finite), output finite."""
    out = scale(images, config, params)
    used = _used_params(config, params)
    std = used.get("std")
    flags = [finite(images),
             finite(used["mean"]) if "mean" in used else jnp.bool_(True),
             jnp.all(jnp.isfinite(std) & (std >= 0)) if std is not None else jnp.bool_(True),
             finite(used["zca_matrix"]) if "zca_matrix" in used else jnp.bool_(True),
             finite(out)]
    return out, jnp.stack(flags)


_SCALE_MESSAGES = (
    "images contains NaN or inf values",
    "params.mean holds NaN or inf values",
    "params.std holds NaN, inf or negative values",
    "params.zca_matrix holds NaN or inf values",
    "the scaled images hold NaN or inf although the images and params are finite: float32 "
    "overflowed (values times rescale, or over a tiny std, beyond 3.4e38) or the "
    "preprocessing_function produced them",
)
_scale_unchecked = jax.jit(scale, static_argnames=("config",))
_scale_checked = jax.jit(_scale_and_flags, static_argnames=("config",))


def scale_jit(images, config: ScalingConfig, params: ScalingParams | None = None, *,
              check: bool = True) -> jax.Array:
    """`scale` compiled once per (config, shape, dtype), checked for NaN and inf.

    Args:
      images, config, params: as `scale`; images may be any array-like.
      check: compute, in the same compiled call, whether the images, the params the config
        uses and the output are finite (and std >= 0), and raise if not. Costs one
        reduction per checked array and a device-to-host read of 5 bools per call (the
        `scale_checked` rows of `make bench`); False skips both and returns as soon as the
        call is dispatched.

    Raises:
      ValueError: as `scale`; with `check`, NaN/inf images or params, a negative std, or an
        output that overflowed float32.
    """
    images = as_array(images)
    check_representable(images)
    if not check:
        return _scale_unchecked(images, config, params)
    out, flags = _scale_checked(images, config, params)
    raise_on_flags(flags, _SCALE_MESSAGES, caller="scale_jit")
    return out


@flax.struct.dataclass
class SecondMoments:
    """Per-feature mean and co-moment matrix of flattened images (for ZCA), mergeable.

    Attributes:
      count: int32[] images seen.
      mean: float32[D] per-feature mean (D = H*W*C, channels_last order).
      comoment: float32[D, D] sum over images of (x - mean)(x - mean)^T.
    """

    count: jax.Array
    mean: jax.Array
    comoment: jax.Array


def _batch_moments(flat: jax.Array) -> SecondMoments:
    mean = jnp.mean(flat, axis=0)
    centered = flat - mean
    comoment = jnp.matmul(centered.T, centered, precision=jax.lax.Precision.HIGHEST)
    return SecondMoments(jnp.int32(flat.shape[0]), mean, comoment)


def _merge_moments(a: SecondMoments, b: SecondMoments) -> SecondMoments:
    count = a.count + b.count
    n = jnp.maximum(count.astype(jnp.float32), 1.0)
    na, nb = a.count.astype(jnp.float32), b.count.astype(jnp.float32)
    delta = b.mean - a.mean
    mean = a.mean + delta * (nb / n)
    comoment = a.comoment + b.comoment + jnp.outer(delta, delta) * (na * nb / n)
    return SecondMoments(count, mean, comoment)


def _fit_batch(carry, images: jax.Array, config: "ScalingConfig"):
    """One streaming step of `fit_scaling`: featurewise statistics (and, for ZCA, second
    moments) of a batch as the featurewise steps see it."""
    stats, moments = carry
    x = _to_last(_samplewise_and_before(images, config), config.data_format)
    # With nothing before the featurewise steps, the statistics are those of the raw images,
    # and 8-bit integer images get batch_stats' exact integer path.
    raw = _to_last(images, config.data_format) if _identity_before_featurewise(config) else x
    stats = statistics.merge_stats(stats, statistics.batch_stats(raw, scope=stats.scope))
    if config.zca_whitening:
        moments = _merge_moments(moments, _batch_moments(x.reshape(x.shape[0], -1)))
    return stats, moments


def _identity_before_featurewise(config: ScalingConfig) -> bool:
    """Whether `_samplewise_and_before` only converts to float32."""
    return (config.preprocessing_function is None and not config.rescale
            and not config.samplewise_center and not config.samplewise_std_normalization)


def _zca_matrix(moments: SecondMoments, channel_mean: np.ndarray, epsilon: float,
                image_shape_hwc: tuple[int, int, int]) -> np.ndarray:
    """Keras 3's ZCA matrix from streamed moments.

    Keras takes the SVD of the (featurewise-centred) data X [n, D]: U, s, and builds
    W = U diag(sqrt(n) / (s + eps)) U^T over the min(n, D) singular vectors. With
    S = X^T X / n = U diag(s^2 / n) U^T, that is eigh(S) with s = sqrt(n * lambda).
    X is centred per channel, not per feature, so S = cov + (m_feature - m_channel)(...)^T.
    The D x D eigendecomposition runs once, in float64 on the host: ZCA divides by the square
    roots of the smallest eigenvalues, which float32 gets wrong.
    """
    n = int(moments.count)
    cov = np.asarray(moments.comoment, np.float64) / n
    offset = (np.asarray(moments.mean, np.float64).reshape(image_shape_hwc)
              - np.asarray(channel_mean, np.float64)).reshape(-1)
    second = cov + np.outer(offset, offset)
    eigenvalues, vectors = np.linalg.eigh(second)
    rank = min(n, second.shape[0])
    eigenvalues, vectors = eigenvalues[::-1][:rank], vectors[:, ::-1][:, :rank]
    singular = np.sqrt(np.clip(eigenvalues, 0.0, None) * n)
    inverse = np.sqrt(n) / (singular + epsilon)
    return ((vectors * inverse) @ vectors.T).astype(np.float32)


def fit_scaling(config: ScalingConfig, images, *, batch_size: int | None = None,
                progress: bool = False) -> ScalingParams:
    """Fits the featurewise statistics (and ZCA matrix) a config needs, in one device pass.

    Statistics are taken of the images as `scale` sees them just before the featurewise steps
    (after preprocessing_function, rescale and the samplewise steps).

    Args:
      config: the scaling config.
      images: uint8 or float[N, H, W, C] (or channels_first), NumPy or JAX; or an iterable of
        such batches for data that does not fit in memory.
      batch_size: images per device step when `images` is one array; None: about 2M values
        per step (`statistics.auto_batch_size`).
      progress: show a progress bar.

    Returns:
      ScalingParams; all fields None when the config needs no fit.
    """
    if not config.needs_fit:
        return ScalingParams()
    first, images = statistics.checked_source(images, config.data_format,
                                              caller="fit_scaling")
    shape = tuple(first.shape[1:])
    hwc = shape if config.data_format == "channels_last" else (*shape[1:], shape[0])
    features = math.prod(hwc)
    if config.zca_whitening and features > MAX_ZCA_FEATURES:
        raise ValueError(
            f"ZCA needs a {features}x{features} matrix for images of shape {hwc}; "
            f"the limit is {MAX_ZCA_FEATURES} features. Downscale the images first.")
    # statistics of the prepared (channels_last) images the featurewise steps see
    stats = statistics.empty_stats_for(hwc, scope=config.statistics_scope)
    d = features if config.zca_whitening else 1
    moments = SecondMoments(jnp.zeros((), jnp.int32), jnp.zeros((d,), jnp.float32),
                            jnp.zeros((d, d), jnp.float32))
    (stats, moments), seen = statistics.fold_batches(
        _fit_batch, (stats, moments), images, batch_size=batch_size, options=(config,),
        progress=progress, desc="fit scaling")
    if seen == 0:
        raise ValueError("fit_scaling got no images")
    what = "images" if _identity_before_featurewise(config) else "the images as scaled"
    statistics.check_stats_finite(stats, first.dtype, caller="fit_scaling", what=what)
    if config.zca_whitening and not bool(jnp.all(jnp.isfinite(moments.comoment))):
        raise ValueError(f"fit_scaling: the ZCA second moments of {what} overflow float32; "
                         "scale the data down first (e.g. rescale)")
    zca = None
    if config.zca_whitening:
        zca = jnp.asarray(_zca_matrix(moments, np.asarray(stats.mean), config.zca_epsilon,
                                      hwc))
    return ScalingParams(
        mean=stats.mean if config.featurewise_center else None,
        std=stats.std if config.featurewise_std_normalization else None,
        zca_matrix=zca, stats=stats)


def _to_last(x, data_format):
    return x if data_format == "channels_last" else jnp.transpose(x, (0, 2, 3, 1))


_CONFIG_FIELDS = ("rescale", "samplewise_center", "samplewise_std_normalization",
                  "featurewise_center", "featurewise_std_normalization", "zca_whitening",
                  "zca_epsilon", "statistics_scope", "data_format", "dtype")


def save_scaling(path, config: ScalingConfig, params: ScalingParams | None) -> None:
    """Writes a config and its fitted numbers to one `.npz`, to serve a model as trained.

    A `preprocessing_function` cannot be stored (it is code): it is refused here, and the
    caller passes it again to `load_scaling`. `params` may be None for a config that needs
    no fit.

    Raises:
      ValueError: not a ScalingConfig, params missing or invalid for the config (NaN, a
        negative std, missing fields), a preprocessing_function, or a suffix other than .npz.
    """
    import json
    from pathlib import Path

    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"scaling files end in .npz, got {path.name!r}")
    if not isinstance(config, ScalingConfig):
        raise ValueError(f"save_scaling takes a ScalingConfig, got {type(config).__name__}")
    if config.preprocessing_function is not None:
        raise ValueError("a preprocessing_function is code and cannot be saved; save the "
                         "config without it and pass it to load_scaling(..., "
                         "preprocessing_function=...)")
    if params is None:
        if config.needs_fit:
            raise ValueError("save_scaling got params=None for a config that needs fitted "
                             "statistics: pass fit_scaling(config, train_images)")
        params = ScalingParams()
    check_params(params, config)
    missing = [name for name in ("mean", "std", "zca_matrix")
               if _uses(config, name) and getattr(params, name) is None]
    if missing:
        raise ValueError(f"save_scaling: the config uses {missing} but params lacks them: "
                         "were they fitted for another config?")
    arrays = {name: np.asarray(getattr(params, name))
              for name in ("mean", "std", "zca_matrix") if getattr(params, name) is not None}
    if params.stats is not None:
        arrays.update({f"stats_{k}": np.asarray(getattr(params.stats, k))
                       for k in statistics.STATS_FIELDS})
    meta = {"kind": statistics.SCALING_KIND,
            "config": {k: getattr(config, k) for k in _CONFIG_FIELDS},
            "stats": None if params.stats is None else {
                "scope": params.stats.scope,
                "elements_per_image": params.stats.elements_per_image}}
    np.savez(path, meta=json.dumps(meta), **arrays)


def _uses(config: ScalingConfig, name: str) -> bool:
    return {"mean": config.featurewise_center, "std": config.featurewise_std_normalization,
            "zca_matrix": config.zca_whitening}[name]


def load_scaling(path, *, preprocessing_function: Callable | None = None
                 ) -> tuple[ScalingConfig, ScalingParams]:
    """Reads what `save_scaling` wrote: (config, params).

    Raises:
      ValueError: naming the file, when it cannot be read, holds something else (statistics
        from save_stats, other keys) or holds a config or params that cannot be right.
    """
    from pathlib import Path

    path = Path(path)
    meta, arrays = statistics.read_saved_npz(path, "scaling")
    if meta.get("kind") == statistics.STATS_KIND or "config" not in meta:
        kind = ("statistics (save_stats): read it with load_stats"
                if meta.get("kind") == statistics.STATS_KIND or "scope" in meta
                else f"an object with keys {sorted(meta)}")
        raise ValueError(f"{path}: not a scaling file, it holds {kind}")
    if not isinstance(meta["config"], dict) or set(meta["config"]) - set(_CONFIG_FIELDS):
        raise ValueError(f"{path}: its config must be an object with keys among "
                         f"{_CONFIG_FIELDS}, got {meta['config']!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flag implications were applied when saved
            config = ScalingConfig(preprocessing_function=preprocessing_function,
                                   **meta["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: holds an invalid scaling config: {error}") from None
    stats = None
    if meta.get("stats") is not None:
        info = meta["stats"]
        missing = [f"stats_{k}" for k in statistics.STATS_FIELDS if f"stats_{k}" not in arrays]
        if not isinstance(info, dict) or missing:
            raise ValueError(f"{path}: its statistics are incomplete (missing {missing})")
        stats = statistics.checked_loaded_stats(
            path, arrays["stats_count"],
            {k: np.asarray(arrays[f"stats_{k}"], np.float32)
             for k in statistics.STATS_FIELDS[1:]},
            info.get("scope"), info.get("elements_per_image"))
    params = ScalingParams(**{name: jnp.asarray(arrays[name]) for name in _PARAM_FIELDS
                              if name in arrays}, stats=stats)
    try:
        check_params(params, config)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    missing = [name for name in _PARAM_FIELDS
               if _uses(config, name) and getattr(params, name) is None]
    if missing:
        raise ValueError(f"{path}: its config uses {missing} but the file lacks them")
    return config, params
