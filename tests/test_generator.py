"""The Keras-compatible facade: fit / standardize / flow, against Keras 3 where installed."""

import os
import warnings

import jax
import numpy as np
import pytest

import jaxscale
from jaxscale import generator
from tests.reference import reference_scale


def digits(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 6, 6, 1)).astype(np.uint8), np.arange(n, dtype=np.int32)


def test_flow_yields_every_image_once_per_epoch_scaled():
    x, y = digits(50)
    gen = jaxscale.ImageDataGenerator(featurewise_center=True,
                                      featurewise_std_normalization=True).fit(x)
    flow = gen.flow(x, y, batch_size=16, seed=3)
    assert len(flow) == 4
    batches = [next(flow) for _ in range(len(flow))]
    assert [b[0].shape[0] for b in batches] == [16, 16, 16, 2]
    labels = np.concatenate([np.asarray(b[1]) for b in batches])
    assert sorted(labels.tolist()) == list(range(50))
    images = np.concatenate([np.asarray(b[0]) for b in batches])
    expected = reference_scale(x, gen.config, x)[labels]
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)


def test_flow_order_is_reproducible_and_differs_per_epoch():
    x, y = digits(40)
    gen = jaxscale.ImageDataGenerator(rescale=1 / 255)

    def epoch_labels(flow):
        return np.concatenate([np.asarray(next(flow)[1]) for _ in range(len(flow))])

    a, b = gen.flow(x, y, batch_size=8, seed=7), gen.flow(x, y, batch_size=8, seed=7)
    first_a, first_b = epoch_labels(a), epoch_labels(b)
    np.testing.assert_array_equal(first_a, first_b)
    assert not np.array_equal(first_a, epoch_labels(a))
    unshuffled = gen.flow(x, y, batch_size=8, shuffle=False)
    np.testing.assert_array_equal(epoch_labels(unshuffled), np.arange(40))


def test_flow_does_not_recompile_per_batch():
    x, y = digits(50)
    gen = jaxscale.ImageDataGenerator(samplewise_center=True)
    before = generator._gather_and_scale._cache_size()
    flow = gen.flow(x, y, batch_size=16, seed=0)
    for _ in range(3 * len(flow)):  # three epochs
        next(flow)[0].block_until_ready()
    # one compilation for the full batch, one for the last partial batch, none per batch
    assert generator._gather_and_scale._cache_size() - before <= 2


def test_flow_without_labels_yields_arrays_and_with_weights_triples():
    x, y = digits(10)
    gen = jaxscale.ImageDataGenerator()
    assert next(gen.flow(x, batch_size=4)).shape == (4, 6, 6, 1)
    batch = next(gen.flow(x, y, batch_size=4, sample_weight=np.ones(10)))
    assert len(batch) == 3


def test_validation_split_takes_the_start_as_keras():
    x, y = digits(20)
    gen = jaxscale.ImageDataGenerator(validation_split=0.25)
    val = gen.flow(x, y, batch_size=100, shuffle=False, subset="validation")
    train = gen.flow(x, y, batch_size=100, shuffle=False, subset="training")
    np.testing.assert_array_equal(np.asarray(next(val)[1]), np.arange(5))
    np.testing.assert_array_equal(np.asarray(next(train)[1]), np.arange(5, 20))


def test_standardize_single_image_and_batch():
    x, _ = digits(12)
    gen = jaxscale.ImageDataGenerator(samplewise_center=True,
                                      samplewise_std_normalization=True)
    batch = np.asarray(gen.standardize(x))
    one = np.asarray(gen.standardize(x[3]))
    np.testing.assert_allclose(one, batch[3], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(batch.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)


@pytest.mark.parametrize("keyword, value, stored", [
    ("rotation_range", 8, 8), ("width_shift_range", 0.1, 0.1), ("zoom_range", 0.1, (0.9, 1.1)),
    ("horizontal_flip", True, True), ("brightness_range", [0.5, 1.5], (0.5, 1.5)),
    ("fill_mode", "wrap", "wrap"), ("height_shift_range", [1, 2], (1, 2)),
])
def test_augmentation_keywords_build_the_augment_config(keyword, value, stored):
    gen = jaxscale.ImageDataGenerator(data_format="channels_first", **{keyword: value})
    assert getattr(gen.augment_config, keyword) == stored
    assert gen.augment_config.data_format == "channels_first"
    assert not gen.augment_config.is_identity or keyword == "fill_mode"


@pytest.mark.parametrize("keyword, value", [
    ("rotation_range", -5), ("zoom_range", (2, 1)), ("fill_mode", "mirror"),
    ("interpolation_order", 2),
])
def test_bad_augmentation_keywords_raise(keyword, value):
    with pytest.raises(ValueError, match=keyword):
        jaxscale.ImageDataGenerator(**{keyword: value})


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="rotation"):
        jaxscale.ImageDataGenerator(rotation=3)


def test_featurewise_before_fit_is_an_error():
    x, _ = digits()
    gen = jaxscale.ImageDataGenerator(featurewise_center=True)
    for call in (lambda: gen.standardize(x), lambda: gen.flow(x)):
        with pytest.raises(ValueError, match=r"\.fit"):
            call()


@pytest.mark.parametrize("kwargs, message", [
    ({"validation_split": 1.0}, "validation_split"),
    ({"data_format": "NCHW"}, "data_format"),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jaxscale.ImageDataGenerator(**kwargs)


def test_flow_rejects_mismatched_labels_and_bad_subset():
    x, y = digits(10)
    gen = jaxscale.ImageDataGenerator(validation_split=0.2)
    with pytest.raises(ValueError, match="same length"):
        gen.flow(x, y[:5])
    with pytest.raises(ValueError, match="subset"):
        gen.flow(x, y, subset="test")


def test_fit_with_identity_augmentation_rounds_keeps_statistics():
    x, _ = digits(30)
    once = jaxscale.ImageDataGenerator(featurewise_center=True).fit(x)
    thrice = jaxscale.ImageDataGenerator(featurewise_center=True).fit(
        x, augment=True, rounds=3, batch_size=8)
    assert int(thrice.params.stats.count) == 90
    np.testing.assert_allclose(thrice.mean, once.mean, rtol=1e-6)


@pytest.mark.parametrize("kwargs", [
    {"rescale": 1 / 255},
    {"featurewise_center": True, "featurewise_std_normalization": True},
    {"samplewise_center": True, "samplewise_std_normalization": True},
])
@pytest.mark.numerics
def test_flow_matches_keras_flow(kwargs):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    legacy = pytest.importorskip("keras.src.legacy.preprocessing.image")
    x, y = digits(40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras_gen = legacy.ImageDataGenerator(**kwargs)
    keras_gen.fit(x.astype(np.float32))
    keras_flow = keras_gen.flow(x.astype(np.float32), y, batch_size=16, shuffle=False)
    ours = jaxscale.ImageDataGenerator(**kwargs).fit(x).flow(x, y, batch_size=16,
                                                             shuffle=False)
    assert len(ours) == len(keras_flow)
    for _ in range(len(ours)):
        (kx, ky), (ox, oy) = next(keras_flow), next(ours)
        np.testing.assert_array_equal(np.asarray(oy), ky)
        np.testing.assert_allclose(np.asarray(ox), kx, rtol=1e-5,
                                   atol=1e-5 * max(1.0, float(np.abs(kx).max())))


def test_flow_batches_live_on_device():
    x, y = digits(8)
    batch, labels = next(jaxscale.ImageDataGenerator().flow(x, y, batch_size=4))
    assert isinstance(batch, jax.Array) and isinstance(labels, jax.Array)


RECIPE = dict(rotation_range=8, width_shift_range=0.08, height_shift_range=0.08,
              shear_range=0.3, zoom_range=0.08)


def test_flow_augments_training_batches_then_scales():
    from jaxscale import augmentation, scaling
    x, y = digits(20)
    gen = jaxscale.ImageDataGenerator(rescale=1 / 255, **RECIPE)
    flow = gen.flow(x, y, batch_size=8, shuffle=False, seed=5)
    first, second = next(flow)[0], next(flow)[0]
    key = jax.random.fold_in(jax.random.PRNGKey(5), 1)  # the flow's augmentation stream
    for start, batch in ((0, first), (8, second)):
        batch_key = jax.random.fold_in(jax.random.fold_in(key, 0), start)
        expected = scaling.scale(augmentation.augment(batch_key, x[start:start + 8],
                                                      gen.augment_config), gen.config)
        np.testing.assert_allclose(np.asarray(batch), np.asarray(expected), atol=1e-6)
    plain = np.asarray(gen.standardize(x[:8]))
    assert np.abs(np.asarray(first) - plain).max() > 0.1  # it did augment


def test_flow_augmentation_differs_per_epoch_and_is_reproducible():
    x, y = digits(16)
    gen = jaxscale.ImageDataGenerator(**RECIPE)
    a, b = (gen.flow(x, y, batch_size=16, shuffle=False, seed=1) for _ in range(2))
    epoch0, epoch0_again, epoch1 = np.asarray(next(a)[0]), np.asarray(next(b)[0]), np.asarray(
        next(a)[0])
    np.testing.assert_array_equal(epoch0, epoch0_again)
    assert np.abs(epoch0 - epoch1).max() > 1.0


def test_validation_batches_are_never_augmented():
    x, y = digits(20)
    gen = jaxscale.ImageDataGenerator(validation_split=0.5, rescale=1 / 255,
                                      horizontal_flip=True, **RECIPE)
    val = gen.flow(x, y, batch_size=10, shuffle=False, subset="validation", seed=0)
    for _ in range(3):
        np.testing.assert_allclose(np.asarray(next(val)[0]), np.asarray(gen.standardize(x[:10])),
                                   atol=1e-7)
    train = next(gen.flow(x, y, batch_size=10, shuffle=False, subset="training", seed=0))[0]
    assert np.abs(np.asarray(train) - np.asarray(gen.standardize(x[10:]))).max() > 0.1


def test_augmented_flow_does_not_recompile_per_batch():
    x, y = digits(50)
    gen = jaxscale.ImageDataGenerator(samplewise_center=True, **RECIPE)
    flow = gen.flow(x, y, batch_size=16, seed=0)
    before = generator._gather_and_scale._cache_size()
    for _ in range(3 * len(flow)):
        next(flow)[0].block_until_ready()
    assert generator._gather_and_scale._cache_size() - before <= 2


def test_random_transform_equals_apply_of_get_random_transform():
    x, _ = digits(1)
    gen = jaxscale.ImageDataGenerator(horizontal_flip=True, channel_shift_range=20.0, **RECIPE)
    params = gen.get_random_transform(x[0].shape, seed=3)
    assert set(params) == {"theta", "tx", "ty", "shear", "zx", "zy", "flip_horizontal",
                           "flip_vertical", "channel_shift_intensity", "brightness"}
    assert -8 <= params["theta"] <= 8 and 0.92 <= params["zx"] <= 1.08
    assert abs(params["tx"]) <= 0.08 * 6 and params["brightness"] is None
    one = np.asarray(gen.random_transform(x[0], seed=3))
    np.testing.assert_allclose(one, np.asarray(gen.apply_transform(x[0], params)), atol=1e-5)
    np.testing.assert_array_equal(one, np.asarray(gen.random_transform(x[0], seed=3)))
    assert one.shape == (6, 6, 1) and one.dtype == np.float32
    with pytest.raises(ValueError, match="rank 3"):
        gen.random_transform(x)


@pytest.mark.numerics
def test_apply_transform_matches_keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    legacy = pytest.importorskip("keras.src.legacy.preprocessing.image")
    image = np.random.default_rng(0).uniform(0, 255, (10, 10, 3)).astype(np.float32)
    params = {"theta": 12.0, "tx": 1.5, "ty": -2.0, "shear": 5.0, "zx": 0.9, "zy": 1.1,
              "flip_horizontal": True, "flip_vertical": False,
              "channel_shift_intensity": 15.0, "brightness": None}
    for fill_mode in ("nearest", "reflect"):
        ours = jaxscale.ImageDataGenerator(fill_mode=fill_mode).apply_transform(image, params)
        keras = legacy.ImageDataGenerator(fill_mode=fill_mode).apply_transform(image, params)
        np.testing.assert_allclose(np.asarray(ours), keras, atol=2e-3)


def test_fit_on_augmented_rounds():
    x = np.full((12, 8, 8, 1), 100, np.uint8)
    gen = jaxscale.ImageDataGenerator(featurewise_center=True, width_shift_range=0.5,
                                      fill_mode="constant", cval=0.0)
    gen.fit(x, augment=True, rounds=4, seed=0, batch_size=5)
    assert int(gen.params.stats.count) == 48
    passes = np.concatenate([np.asarray(b) for b in gen._augmented_passes(x, 4, 0, 5)])
    assert passes.shape == (48, 8, 8, 1)
    np.testing.assert_allclose(float(gen.mean.squeeze()), passes.mean(), rtol=1e-5)
    assert 55 < float(gen.mean.squeeze()) < 90  # shifted-in zeros pull the mean down
    again = jaxscale.ImageDataGenerator(featurewise_center=True, width_shift_range=0.5,
                                        fill_mode="constant").fit(x, augment=True, rounds=4,
                                                                  seed=0, batch_size=5)
    np.testing.assert_array_equal(again.mean, gen.mean)


# ---- NaN/inf, array-likes, fit's batch_size (issue 16) ----


def _standardizing(**kwargs):
    x, y = digits(20)
    return x, y, jaxscale.ImageDataGenerator(featurewise_center=True,
                                             featurewise_std_normalization=True,
                                             **kwargs).fit(x)


def test_standardize_refuses_nan_unless_unchecked():
    x, _, gen = _standardizing()
    bad = x.astype(np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="images contains NaN or inf"):
        gen.standardize(bad)
    _, _, unchecked = _standardizing(check_finite=False)
    assert np.isnan(np.asarray(unchecked.standardize(bad))[0, 0, 0, 0])


def test_standardize_refuses_nan_params():
    x, _, gen = _standardizing()
    gen.params = gen.params.replace(mean=gen.params.mean * np.nan)
    with pytest.raises(ValueError, match="params.mean holds NaN"):
        gen.standardize(x)
    with pytest.raises(ValueError, match="params.mean holds NaN"):
        gen.flow(x)


def test_flow_reports_a_batch_that_overflows():
    # finite images and params, but a preprocessing_function that blows up on some pixels
    x, y = digits(20)
    gen = jaxscale.ImageDataGenerator(preprocessing_function=lambda im: 1.0 / (im - im))
    with pytest.raises(ValueError, match="flow: a scaled batch holds NaN or inf"):
        next(gen.flow(x, y, batch_size=8))
    unchecked = jaxscale.ImageDataGenerator(preprocessing_function=lambda im: 1.0 / (im - im),
                                            check_finite=False)
    assert not np.isfinite(np.asarray(next(unchecked.flow(x, y, batch_size=8))[0])).any()


def test_apply_transform_refuses_nan_parameters():
    x, _, gen = _standardizing()
    with pytest.raises(ValueError, match="'theta' must be finite"):
        gen.apply_transform(x[0], {"theta": float("nan")})


def test_nested_lists_work_like_arrays():
    x, y, gen = _standardizing()
    np.testing.assert_array_equal(np.asarray(gen.standardize(x.tolist())),
                                  np.asarray(gen.standardize(x)))
    np.testing.assert_array_equal(np.asarray(gen.standardize(x[0].tolist())),
                                  np.asarray(gen.standardize(x[0])))
    listed = next(gen.flow(x.tolist(), y.tolist(), batch_size=8, seed=1))
    arrays = next(gen.flow(x, y, batch_size=8, seed=1))
    np.testing.assert_array_equal(np.asarray(listed[0]), np.asarray(arrays[0]))
    np.testing.assert_array_equal(np.asarray(listed[1]), np.asarray(arrays[1]))
    fitted = jaxscale.ImageDataGenerator(featurewise_center=True).fit(x.tolist())
    np.testing.assert_allclose(fitted.mean, jaxscale.ImageDataGenerator(
        featurewise_center=True).fit(x).mean)


@pytest.mark.parametrize("batch_size", [-3, 0, 2.5, True])
@pytest.mark.parametrize("augment", [True, False])
def test_fit_refuses_a_batch_size_that_is_not_positive(batch_size, augment):
    # batch_size=-3 with augment=True said "got no images"; 0 was taken silently
    x, _ = digits(10)
    gen = jaxscale.ImageDataGenerator(featurewise_center=True, rotation_range=10)
    with pytest.raises(ValueError, match=f"batch_size must be a positive integer or None, "
                                         f"got {batch_size!r}"):
        gen.fit(x, augment=augment, batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0])
def test_flow_refuses_a_batch_size_that_is_not_positive(batch_size):
    x, y, gen = _standardizing()
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        gen.flow(x, y, batch_size=batch_size)
