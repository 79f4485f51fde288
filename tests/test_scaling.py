"""Scaling modes: float64 references, Keras 3 equivalence, errors, zero variance, jit."""

import os
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxscale
from jaxscale.scaling import (MODES, ScalingConfig, ScalingParams, fit_scaling, keras_keywords,
                              scale, scale_jit)
from tests.reference import reference_scale, to_format

FORMATS = ["channels_last", "channels_first"]


def images_for(n=24, h=5, w=4, c=3, dtype=np.uint8, data_format="channels_last", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, h, w, c))
    x = x.astype(np.uint8) if dtype == np.uint8 else (x / 7.0).astype(dtype)
    return to_format(x, data_format)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("channels", [1, pytest.param(3, marks=pytest.mark.numerics), 4])
def test_every_mode_matches_float64_reference(mode, data_format, dtype, channels):
    # n > H*W*C keeps the ZCA problem well conditioned for float32
    x = images_for(n=96 if mode == "zca" else 24, c=channels, dtype=dtype,
                   data_format=data_format)
    config = jaxscale.scaling_config(mode, data_format=data_format)
    params = fit_scaling(config, x, batch_size=10)
    out = scale_jit(x, config, params)
    assert out.dtype == jnp.float32 and out.shape == x.shape
    expected = reference_scale(x, config, fit_images=x)
    tol = 2e-4 if mode == "zca" else 1e-5
    np.testing.assert_allclose(np.asarray(out), expected, rtol=tol, atol=tol * max(
        1.0, float(np.abs(expected).max()) * 0.01))


@pytest.mark.parametrize("scope", ["channel", "pixel", "global"])
def test_statistics_scope_changes_what_is_averaged(scope):
    x = images_for(n=30, dtype=np.float32)
    config = ScalingConfig(featurewise_center=True, featurewise_std_normalization=True,
                           statistics_scope=scope)
    out = np.asarray(scale(x, config, fit_scaling(config, x)))
    axes = {"channel": (0, 1, 2), "pixel": (0,), "global": (0, 1, 2, 3)}[scope]
    np.testing.assert_allclose(out.mean(axis=axes), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=axes), 1.0, atol=1e-4)
    np.testing.assert_allclose(out, reference_scale(x, config, x), rtol=1e-5, atol=1e-5)


def test_preprocessing_function_runs_first():
    x = images_for(dtype=np.float32)
    config = ScalingConfig(preprocessing_function=lambda im: im[:, ::-1], rescale=0.5,
                           featurewise_center=True)
    out = scale(x, config, fit_scaling(config, x))
    np.testing.assert_allclose(out, reference_scale(x, config, x), rtol=1e-5, atol=1e-5)


def test_bfloat16_output():
    x = images_for()
    config = jaxscale.scaling_config("standardize", dtype="bfloat16")
    out = scale_jit(x, config, fit_scaling(config, x))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), reference_scale(x, config, x),
                               atol=0.02)


@pytest.mark.parametrize("mode", ["standardize", "sample_standardize", "center", "zca"])
def test_zero_variance_channels_stay_finite(mode):
    x = images_for(n=40, c=3)
    x[..., 0] = 0      # an all-black channel
    x[5] = 17          # a constant image
    config = jaxscale.scaling_config(mode)
    out = np.asarray(scale_jit(x, config, fit_scaling(config, x)))
    assert np.isfinite(out).all()
    if mode == "sample_standardize":
        np.testing.assert_array_equal(out[5], 0.0)


def test_featurewise_mode_without_fit_is_an_error():
    with pytest.raises(ValueError, match="fit_scaling"):
        scale(images_for(), MODES["standardize"])
    with pytest.raises(ValueError, match="fit_scaling"):
        scale(images_for(), MODES["zca"], ScalingParams())


def test_statistics_for_other_channel_count_are_rejected():
    config = MODES["standardize"]
    params = fit_scaling(config, images_for(c=3))
    with pytest.raises(ValueError, match=r"shape \(3,\).*need \(1,\)"):
        scale(images_for(c=1), config, params)


def test_zca_for_other_image_size_is_rejected():
    config = MODES["zca"]
    params = fit_scaling(config, images_for(n=80, h=4, w=4, c=1))
    with pytest.raises(ValueError, match="ZCA matrix"):
        scale(images_for(h=5, w=4, c=1), config, params)


@pytest.mark.parametrize("images, message", [
    (np.zeros((4, 4, 3)), "rank-4"),
    (np.zeros((2, 4, 4, 2)), "2 channels"),
    (np.zeros((2, 4, 4, 5)), "5 channels"),
    (np.zeros((0, 4, 4, 3)), "empty"),
    (np.array([[[[np.inf]]]], np.float32), "NaN or inf"),
])
def test_bad_images_raise(images, message):
    with pytest.raises(ValueError, match=message):
        scale(images, MODES["normalize"])


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": "float16"}, "dtype"),
    ({"data_format": "NHWC"}, "data_format"),
    ({"statistics_scope": "row"}, "statistics_scope"),
    ({"zca_epsilon": -1.0}, "zca_epsilon"),
    ({"rescale": float("nan")}, "rescale"),
])
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScalingConfig(**kwargs)


def test_unknown_mode_name_lists_known_ones():
    with pytest.raises(ValueError, match="standardize"):
        jaxscale.scaling_config("whiten")


@pytest.mark.parametrize("kwargs, implied", [
    ({"zca_whitening": True}, {"featurewise_center": True}),
    ({"zca_whitening": True, "featurewise_std_normalization": True},
     {"featurewise_center": True, "featurewise_std_normalization": False}),
    ({"featurewise_std_normalization": True}, {"featurewise_center": True}),
    ({"samplewise_std_normalization": True}, {"samplewise_center": True}),
])
def test_keras_flag_implications_warn_and_apply(kwargs, implied):
    with pytest.warns(UserWarning, match="overrides"):
        config = ScalingConfig(**kwargs)
    for field, value in implied.items():
        assert getattr(config, field) is value


def test_zca_refuses_huge_feature_counts():
    x = np.zeros((2, 128, 128, 3), np.uint8)
    x[1] = 1
    with pytest.raises(ValueError, match="Downscale"):
        fit_scaling(MODES["zca"], x)


@pytest.mark.numerics
def test_fit_on_iterable_of_batches_equals_fit_on_array():
    x = images_for(n=50)
    config = MODES["standardize"]
    whole = fit_scaling(config, x)
    streamed = fit_scaling(config, (x[i:i + 8] for i in range(0, 50, 8)))
    np.testing.assert_allclose(streamed.mean, whole.mean, rtol=1e-6)
    np.testing.assert_allclose(streamed.std, whole.std, rtol=1e-6)


class JitAndEagerAgree(chex.TestCase):
    """The same scaling under jit and without it (chex variants)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_modes(self):
        x = images_for()
        for mode in ("normalize", "sample_standardize", "standardize", "zca"):
            config = MODES[mode]
            params = fit_scaling(config, x)
            got = self.variant(lambda images, p: scale(images, config, p))(x, params)
            np.testing.assert_allclose(np.asarray(got), reference_scale(x, config, x),
                                       rtol=2e-4, atol=2e-4)


def test_scale_jit_compiles_once_per_shape():
    config = MODES["standardize"]
    x = images_for(n=16)
    params = fit_scaling(config, x)
    fn = jax.jit(lambda images, p: scale(images, config, p))
    for seed in range(5):
        fn(images_for(n=16, seed=seed), params).block_until_ready()
    assert fn._cache_size() == 1


# ---- the system we replace: Keras 3 legacy ImageDataGenerator, applied per image ----



def keras_generator(**kwargs):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    legacy = pytest.importorskip("keras.src.legacy.preprocessing.image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return legacy.ImageDataGenerator(**kwargs)


# Every mode by its Keras keywords (`keras_keywords`, the one table), Keras' bare
# `zca_whitening` (which implies featurewise_center), and one combination.
KERAS_MODES = {
    **{mode: keras_keywords(config) for mode, config in MODES.items() if mode != "none"},
    "zca_alone": {"zca_whitening": True},
    "rescaled_standardize": {"rescale": 1 / 255, "featurewise_center": True,
                             "featurewise_std_normalization": True},
}


@pytest.mark.parametrize("name", sorted(KERAS_MODES))
@pytest.mark.parametrize("data_format", [pytest.param("channels_last", marks=pytest.mark.numerics),
                                         "channels_first"])
def test_same_numbers_as_keras(name, data_format):
    kwargs = KERAS_MODES[name]
    x = images_for(n=80, h=4, w=4, c=3, data_format=data_format)
    keras_gen = keras_generator(data_format=data_format, **kwargs)
    keras_gen.fit(x.astype(np.float32))
    expected = np.stack([keras_gen.standardize(img.astype(np.float32).copy()) for img in x])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = jaxscale.ImageDataGenerator(data_format=data_format, **kwargs).fit(x)
    got = np.asarray(ours.standardize(x))
    tol = 1e-4 if name.startswith("zca") else 1e-5
    # float32 on both sides: allow 1e-5 of the data's magnitude (one rounding of x - mean)
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * max(
        1.0, float(np.abs(expected).max())))
    if keras_gen.mean is not None:
        np.testing.assert_allclose(ours.mean, keras_gen.mean, rtol=1e-5)
    if keras_gen.std is not None:
        np.testing.assert_allclose(ours.std, keras_gen.std, rtol=1e-5)


def test_where_keras_is_inconsistent_we_center_the_fitted_data():
    # Keras' fit ignores the samplewise steps that standardize applies before the featurewise
    # ones, so its "standardized" training data is not centred. Ours is.
    x = images_for(n=60, h=4, w=4, c=3) + np.arange(60, dtype=np.uint8)[:, None, None, None]
    kwargs = {"samplewise_center": True, "featurewise_center": True,
              "featurewise_std_normalization": True}
    keras_gen = keras_generator(**kwargs)
    keras_gen.fit(x.astype(np.float32))
    keras_out = np.stack([keras_gen.standardize(img.astype(np.float32).copy()) for img in x])
    ours = np.asarray(jaxscale.ImageDataGenerator(**kwargs).fit(x).standardize(x))
    np.testing.assert_allclose(ours.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ours.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
    assert np.abs(keras_out.mean(axis=(0, 1, 2))).max() > 0.1


@pytest.mark.parametrize("mode", sorted(MODES))
def test_save_and_load_scaling_reproduces_outputs(tmp_path, mode):
    x = images_for(n=80, h=4, w=4)
    config = jaxscale.scaling_config(mode, data_format="channels_last")
    params = fit_scaling(config, x)
    jaxscale.save_scaling(tmp_path / "scaling.npz", config, params)
    loaded_config, loaded_params = jaxscale.load_scaling(tmp_path / "scaling.npz")
    assert loaded_config == config
    np.testing.assert_array_equal(np.asarray(scale(x, loaded_config, loaded_params)),
                                  np.asarray(scale(x, config, params)))


def test_save_scaling_refuses_code():
    config = ScalingConfig(preprocessing_function=lambda im: im)
    with pytest.raises(ValueError, match="preprocessing_function"):
        jaxscale.save_scaling("unused.npz", config, ScalingParams())


@pytest.mark.parametrize("mode", ["center", "standardize", "zca"])
def test_repeated_fits_do_not_recompile(mode):
    compiles = []

    def count(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    config = MODES[mode]
    fit_scaling(config, images_for(n=24, h=4, w=4, seed=0), batch_size=8)  # warm-up
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        for seed in (1, 2):
            fit_scaling(config, images_for(n=24, h=4, w=4, seed=seed), batch_size=8)
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert len(compiles) == 0


# ---- NaN/inf in the jitted paths, params validation, files, array-likes (issue 16) ----


def _fitted(mode="standardize", **overrides):
    x = images_for(n=12)
    config = jaxscale.scaling_config(mode, **overrides)
    return x, config, fit_scaling(config, x)


def _with_nan(x):
    x = x.astype(np.float32)
    x[1, 2, 3, 0] = np.nan
    return x


def test_scale_jit_refuses_nan_images_unless_unchecked():
    x, config, params = _fitted()
    with pytest.raises(ValueError, match="scale_jit: images contains NaN or inf values"):
        scale_jit(_with_nan(x), config, params)
    out = np.asarray(scale_jit(_with_nan(x), config, params, check=False))
    assert np.isnan(out[1, 2, 3, 0]) and np.isfinite(np.delete(out.ravel(), 0)).sum() > 0


@pytest.mark.parametrize("field,value,message", [
    ("mean", np.nan, r"params.mean holds NaN or inf"),
    ("std", np.inf, r"params.std holds NaN, inf or negative"),
    ("std", -1.0, r"params.std holds NaN, inf or negative"),
])
def test_scale_jit_refuses_broken_params(field, value, message):
    x, config, params = _fitted()
    broken = params.replace(**{field: jnp.full_like(getattr(params, field), value)})
    with pytest.raises(ValueError, match=f"scale_jit: {message}"):
        scale_jit(x, config, broken)


def test_scale_jit_refuses_a_nan_zca_matrix():
    x = images_for(n=40, h=3, w=3, c=1)
    config = jaxscale.scaling_config("zca")
    params = fit_scaling(config, x)
    broken = params.replace(zca_matrix=params.zca_matrix.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="params.zca_matrix holds NaN or inf"):
        scale_jit(x, config, broken)


@pytest.mark.parametrize("field,value,message", [
    ("mean", np.nan, "params.mean holds NaN or inf values"),
    ("std", -2.0, "params.std holds negative values"),
])
def test_scale_refuses_broken_params(field, value, message):
    # eager scale() used to return all-NaN (or sign-flipped) images
    x, config, params = _fitted()
    broken = params.replace(**{field: jnp.full_like(getattr(params, field), value)})
    with pytest.raises(ValueError, match=message):
        scale(x, config, broken)


def test_params_of_mismatched_shapes_are_refused():
    x, config, params = _fitted()
    with pytest.raises(ValueError, match=r"params.mean has shape \(3,\) but params.std \(1,\)"):
        scale(x, config, params.replace(std=params.std[:1]))
    with pytest.raises(ValueError, match=r"params.zca_matrix must be a square"):
        jaxscale.scaling.check_params(params.replace(zca_matrix=jnp.zeros((2, 3))))
    with pytest.raises(ValueError, match="must be a ScalingParams"):
        scale(x, config, {"mean": params.mean, "std": params.std})


def test_scale_jit_reports_float32_overflow():
    x = np.full((1, 2, 2, 1), 3e38, np.float32)
    with pytest.raises(ValueError, match="float32 overflowed"):
        scale_jit(x, jaxscale.scaling_config("none", rescale=10.0))


def test_float64_beyond_float32_is_refused_before_it_turns_inf():
    x = np.full((1, 2, 2, 1), 1e300)
    for fn in (scale, scale_jit):
        with pytest.raises(ValueError, match=r"float64\) holds values up to 1e\+300"):
            fn(x, MODES["normalize"])


def test_check_costs_nothing_when_off_and_gives_the_same_numbers():
    x, config, params = _fitted()
    np.testing.assert_array_equal(np.asarray(scale_jit(x, config, params)),
                                  np.asarray(scale_jit(x, config, params, check=False)))


@pytest.mark.parametrize("fn", [scale, scale_jit])
def test_nested_lists_scale_like_arrays(fn):
    x, config, params = _fitted()
    np.testing.assert_allclose(np.asarray(fn(x.tolist(), config, params)),
                               np.asarray(fn(x, config, params)), rtol=1e-6)
    with pytest.raises(ValueError, match="images must be an array or array-like, got list"):
        fn([[[[1]]], [[[1, 2]]]], config, params)


def test_save_scaling_refuses_none_and_bad_params(tmp_path):
    x, config, params = _fitted()
    with pytest.raises(ValueError, match="params=None for a config that needs fitted"):
        jaxscale.save_scaling(tmp_path / "s.npz", config, None)
    with pytest.raises(ValueError, match="params.std holds negative values"):
        jaxscale.save_scaling(tmp_path / "s.npz", config, params.replace(std=-params.std))
    with pytest.raises(ValueError, match=r"the config uses \['std'\] but params lacks"):
        jaxscale.save_scaling(tmp_path / "s.npz", config, params.replace(std=None))
    # a mode without a fit has nothing to save: None is its params
    jaxscale.save_scaling(tmp_path / "none.npz", MODES["normalize"], None)
    loaded, loaded_params = jaxscale.load_scaling(tmp_path / "none.npz")
    assert loaded == MODES["normalize"] and loaded_params.mean is None


@pytest.mark.parametrize("edit,message", [
    (lambda meta, arrays: meta.pop("config"), "not a scaling file"),
    (lambda meta, arrays: meta["config"].update(dtype="int8"), "invalid scaling config"),
    (lambda meta, arrays: meta["config"].update(colour=True), "its config must be an object"),
    (lambda meta, arrays: arrays.pop("std"), r"its config uses \['std'\] but the file lacks"),
    (lambda meta, arrays: arrays.update(std=-arrays["std"]), "params.std holds negative"),
    (lambda meta, arrays: arrays.update(stats_count=np.int32(-1)), "count must be one non-neg"),
])
def test_load_scaling_names_the_file_and_what_is_wrong(tmp_path, edit, message):
    import json

    x, config, params = _fitted()
    jaxscale.save_scaling(tmp_path / "good.npz", config, params)
    with np.load(tmp_path / "good.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays.pop("meta")))
    edit(meta, arrays)
    np.savez(tmp_path / "bad.npz", meta=json.dumps(meta), **arrays)
    with pytest.raises(ValueError, match=f"bad.npz: .*{message}"):
        jaxscale.load_scaling(tmp_path / "bad.npz")


def test_fit_scaling_refuses_statistics_that_overflow():
    images = (np.random.default_rng(0).uniform(1, 2, (4, 8, 8, 1)) * 1e30).astype(np.float32)
    with pytest.raises(ValueError, match="fit_scaling: the statistics of images .* overflow"):
        fit_scaling(MODES["standardize"], images)
    with pytest.raises(ValueError, match="fit_scaling: the statistics of the images as scaled"):
        fit_scaling(MODES["standardize"].replace(rescale=1e10), images / 1e20)


def test_load_scaling_names_a_statistics_file(tmp_path):
    jaxscale.save_stats(jaxscale.compute_stats(images_for()), tmp_path / "stats.npz")
    with pytest.raises(ValueError, match="stats.npz: not a scaling file, it holds statistics "
                                         r"\(save_stats\): read it with load_stats"):
        jaxscale.load_scaling(tmp_path / "stats.npz")
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"plain.npz: an .npz without the 'meta' entry"):
        jaxscale.load_scaling(tmp_path / "plain.npz")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_output_bound_holds_for_the_extreme_uint8_images(mode):
    # |scale(x)| <= output_bound for any uint8 x: black, white, a one-pixel image (samplewise
    # std near its smallest) and random ones, with params fitted on data unlike them.
    from jaxscale.scaling import output_bound
    rng = np.random.default_rng(3)
    fit_on = rng.integers(100, 140, (16, 8, 8, 1), dtype=np.uint8)
    config = jaxscale.scaling_config(mode)
    params = fit_scaling(config, fit_on) if config.needs_fit else None
    images = np.zeros((4, 8, 8, 1), np.uint8)
    images[1] = 255
    images[2, 0, 0, 0] = 255
    images[3] = rng.integers(0, 256, (8, 8, 1))
    largest = float(np.abs(np.asarray(jaxscale.scale(images, config, params),
                                      np.float64)).max())
    assert 0 < largest <= output_bound(config, params, 255.0) < np.inf
