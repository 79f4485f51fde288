"""The Keras-compatible facade: fit / standardize / flow, against Keras 3 where installed."""

import math
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

import jaxscale
from jaxscale import augmentation, scaling
from jaxscale.generator import iterators
from tests.reference import reference_scale


def keras_legacy():
    """keras.src.legacy.preprocessing.image, or skip (Keras is an optional extra)."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    return pytest.importorskip("keras.src.legacy.preprocessing.image")


def keras_generator(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras_legacy().ImageDataGenerator(**kwargs)


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
    before = iterators._flow_call._cache_size()
    flow = gen.flow(x, y, batch_size=16, seed=0)
    for _ in range(3 * len(flow)):  # three epochs
        next(flow)[0].block_until_ready()
    flow[1], flow[3]  # random access: one batch per call, full and last sizes
    # full calls, the epoch's last call, and single batches of both sizes; none per batch
    assert iterators._flow_call._cache_size() - before <= 4


def test_flow_without_labels_yields_arrays_and_with_weights_triples():
    x, y = digits(10)
    gen = jaxscale.ImageDataGenerator()
    assert next(gen.flow(x, batch_size=4)).shape == (4, 6, 6, 1)
    batch = next(gen.flow(x, y, batch_size=4, sample_weight=np.ones(10)))
    assert len(batch) == 3


def test_validation_split_takes_the_start_as_keras():
    x, y = digits(20)
    gen = jaxscale.ImageDataGenerator(validation_split=0.25)
    val = gen.flow(x, y, batch_size=100, shuffle=False, subset="validation",
                   ignore_class_split=True)
    train = gen.flow(x, y, batch_size=100, shuffle=False, subset="training",
                     ignore_class_split=True)
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
        jaxscale.ImageDataGenerator().flow(x, y, subset="training")
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
    scaling.keras_keywords(scaling.MODES[mode])
    for mode in ("normalize", "standardize", "sample_standardize")
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


RECIPE = augmentation.keras_keywords(augmentation.SEED_RECIPE)


@pytest.mark.parametrize("mode", sorted(scaling.MODES))
def test_keras_keywords_of_a_mode_build_that_mode(mode):
    # The one mode -> Keras keywords table: Keras' keywords of a config, given to the
    # ImageDataGenerator, give back that config; and Keras' own generator takes them.
    config = scaling.MODES[mode]
    keywords = scaling.keras_keywords(config)
    assert jaxscale.ImageDataGenerator(**keywords).config == config
    keras_gen = keras_generator(**keywords)
    for name, value in keywords.items():
        assert getattr(keras_gen, name) == value
    with pytest.raises(ValueError, match="statistics_scope"):
        scaling.keras_keywords(config.replace(statistics_scope="pixel"))


def test_keras_keywords_of_the_seed_recipe_build_the_seed_recipe():
    assert jaxscale.ImageDataGenerator(**RECIPE).augment_config == augmentation.SEED_RECIPE


def test_flow_augments_training_batches_then_scales():
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
    val = gen.flow(x, y, batch_size=10, shuffle=False, subset="validation", seed=0,
                   ignore_class_split=True)
    for _ in range(3):
        np.testing.assert_allclose(np.asarray(next(val)[0]), np.asarray(gen.standardize(x[:10])),
                                   atol=1e-7)
    train = next(gen.flow(x, y, batch_size=10, shuffle=False, subset="training", seed=0,
                          ignore_class_split=True))[0]
    assert np.abs(np.asarray(train) - np.asarray(gen.standardize(x[10:]))).max() > 0.1


def test_augmented_flow_does_not_recompile_per_batch():
    x, y = digits(50)
    gen = jaxscale.ImageDataGenerator(samplewise_center=True, **RECIPE)
    flow = gen.flow(x, y, batch_size=16, seed=0)
    before = iterators._flow_call._cache_size()
    for _ in range(3 * len(flow)):
        next(flow)[0].block_until_ready()
    assert iterators._flow_call._cache_size() - before <= 2


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
    with pytest.raises(ValueError, match="a scaled batch holds NaN or inf"):
        next(gen.flow(x, y, batch_size=8))
    unchecked = jaxscale.ImageDataGenerator(preprocessing_function=lambda im: 1.0 / (im - im),
                                            check_finite=False)
    assert not np.isfinite(np.asarray(next(unchecked.flow(x, y, batch_size=8))[0])).any()


@pytest.mark.parametrize("kwargs,checked", [
    # uint8 in [0, 255]: standardize's output is at most (255 + max mean) / (min std + 1e-6)
    (dict(featurewise_center=True, featurewise_std_normalization=True), False),
    (dict(rescale=1e35), False),                # 2.55e37 < float32's 3.4e38
    (dict(rescale=1e37), True),                 # 2.55e39 overflows float32
    (dict(rescale=300.0, dtype="float16"), True),  # 76500 > float16's 65504
    (dict(rescale=100.0, dtype="float16"), False),  # 25500, with a 2x margin for rounding
    (dict(preprocessing_function=lambda im: im), True),  # could do anything
])
def test_flow_checks_only_batches_that_could_overflow(kwargs, checked):
    # The NaN/inf check runs in the batches' compiled call unless the output's bound, derived
    # from the integer input range and the checked params, stays below the dtype's largest
    # value; a batch that does overflow is reported either way.
    x, y = digits(20)
    gen = jaxscale.ImageDataGenerator(**kwargs)
    if gen.config.featurewise_center:
        gen.fit(x)
    it = gen.flow(x, y, batch_size=8)
    assert it._needs_check(it.x) == checked
    assert it._needs_check(it.x.astype(np.float32))  # float images are always checked
    if checked and "preprocessing_function" not in kwargs:
        with pytest.raises(ValueError, match="a scaled batch holds NaN or inf"):
            next(it)
    else:
        assert np.isfinite(np.asarray(next(it)[0], np.float32)).all()


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
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        gen.flow(x, y, batch_size=batch_size)


# ------------------------------------------------------------------ batches per compiled call

def test_flow_hands_out_several_batches_per_compiled_call(monkeypatch):
    monkeypatch.setattr(iterators, "MAX_BATCHES_PER_CALL", 8)  # small programs compile fast
    x, y = digits(8 * 12 - 5)  # 12 batches of 8, the last one smaller
    # brightness draws per batch like any augmentation, and compiles fast
    gen = jaxscale.ImageDataGenerator(rescale=1 / 255, brightness_range=(0.5, 1.5))
    calls = []
    real = iterators._flow_call

    def counted(*args, **kwargs):
        calls.append(kwargs["sizes"])
        return real(*args, **kwargs)

    monkeypatch.setattr(iterators, "_flow_call", counted)
    flow = gen.flow(x, y, batch_size=8, seed=4)
    per_call = flow._batches_per_call
    assert per_call == iterators.MAX_BATCHES_PER_CALL  # 6x6 images: the byte cap is far
    epoch = [next(flow) for _ in range(len(flow))]
    assert calls == [(8,) * per_call, (8,) * (11 - per_call) + (3,)]
    # The same batches asked for one by one, out of order (one call each).
    alone = gen.flow(x, y, batch_size=8, seed=4)
    for i in (7, 11, 0, 5):
        image, label = alone[i]
        np.testing.assert_array_equal(np.asarray(label), np.asarray(epoch[i][1]))
        # float32 rounding may differ between the two compiled shapes (1 ulp of 1)
        np.testing.assert_allclose(np.asarray(image), np.asarray(epoch[i][0]), atol=1e-6)
    assert len(calls) == 2 + 4


def test_batch_i_is_batch_i_of_the_epoch_order_and_on_epoch_end_reshuffles():
    x, y = digits(50)
    flow = jaxscale.ImageDataGenerator(rescale=1 / 255).flow(x, y, batch_size=16, seed=2)
    order = flow.index_array.copy()
    assert sorted(order.tolist()) == list(range(50))
    for i in (3, 0, 2):
        np.testing.assert_array_equal(np.asarray(flow[i][1]), order[16 * i:16 * (i + 1)])
    assert flow[-1][1].shape == (2,)
    flow.on_epoch_end()
    assert not np.array_equal(flow.index_array, order)
    np.testing.assert_array_equal(np.asarray(flow[0][1]), flow.index_array[:16])
    fixed = jaxscale.ImageDataGenerator().flow(x, y, batch_size=16, shuffle=False)
    fixed.on_epoch_end()
    np.testing.assert_array_equal(np.asarray(fixed[1][1]), np.arange(16, 32))


def test_next_walks_the_epochs_and_agrees_with_indexing():
    x, y = digits(40)
    gen = jaxscale.ImageDataGenerator(rescale=1 / 255)
    walker, indexed = gen.flow(x, y, batch_size=16, seed=9), gen.flow(x, y, batch_size=16,
                                                                       seed=9)
    for epoch in range(2):
        for i in range(len(walker)):
            np.testing.assert_array_equal(np.asarray(walker.next()[1]),
                                          np.asarray(indexed[i][1]))
        indexed.on_epoch_end()
    assert walker.epoch == indexed.epoch == 2 and walker.batch_index == 0


def test_index_errors_read_as_keras():
    x, y = digits(20)
    flow = jaxscale.ImageDataGenerator().flow(x, y, batch_size=8)
    with pytest.raises(ValueError, match="Asked to retrieve element 3, but the Sequence has "
                                         "length 3"):
        flow[3]
    with pytest.raises(ValueError, match="out of range"):
        flow[-4]


def test_unseeded_flows_follow_numpy_global_seed_as_keras():
    x, y = digits(40)
    gen = jaxscale.ImageDataGenerator()
    np.random.seed(11)
    first = gen.flow(x, y, batch_size=40).index_array
    np.random.seed(11)
    np.testing.assert_array_equal(gen.flow(x, y, batch_size=40).index_array, first)


# ----------------------------------------------------------------- Keras' flow, same inputs

def both_flows(kwargs, x, *args, **flow_kwargs):
    """Keras' flow and ours of the same generator keywords on the same data, unshuffled."""
    keras_gen = keras_generator(**kwargs)
    ours = jaxscale.ImageDataGenerator(**kwargs)
    keras_x = (x[0].astype(np.float32), x[1]) if isinstance(x, tuple) else x.astype(np.float32)
    return (keras_gen.flow(keras_x, *args, shuffle=False, **flow_kwargs),
            ours.flow(x, *args, shuffle=False, **flow_kwargs))


def assert_same_batch(ours, keras, atol=1e-6):
    """Same structure (tuple / list nesting) and values."""
    assert type(ours) is type(keras) or (isinstance(ours, jax.Array)
                                         and isinstance(keras, np.ndarray)), (ours, keras)
    if isinstance(keras, (tuple, list)):
        assert len(ours) == len(keras)
        for o, k in zip(ours, keras):
            assert_same_batch(o, k, atol)
    else:
        np.testing.assert_allclose(np.asarray(ours), keras, atol=atol)


@pytest.mark.parametrize("with_y", [True, False])
def test_extra_inputs_labels_and_weights_come_out_as_keras(with_y):
    x, y = digits(20)
    extra = [np.arange(20.0)[:, None], np.arange(20) % 3]
    weights = np.linspace(0.5, 1.5, 20)
    args = (y,) if with_y else (None,)
    keras_flow, ours = both_flows({"rescale": 1 / 255}, (x, extra), *args, batch_size=8,
                                  sample_weight=weights)
    for _ in range(len(ours)):
        assert_same_batch(next(ours), next(keras_flow))
    keras_flow, ours = both_flows({}, (x, extra[0]), *args, batch_size=8)
    assert_same_batch(next(ours), next(keras_flow))


def test_validation_subsets_and_the_class_split_check_as_keras():
    x, _ = digits(20)
    labels = np.repeat(np.arange(4), 5)  # sorted: the split separates classes
    kwargs = {"rescale": 1 / 255, "validation_split": 0.25}
    messages = []
    for make in (lambda: keras_generator(**kwargs).flow(x, labels, subset="training"),
                 lambda: jaxscale.ImageDataGenerator(**kwargs).flow(x, labels,
                                                                    subset="training")):
        with pytest.raises(ValueError, match="different number of classes") as error:
            make()
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    for subset in ("training", "validation"):
        keras_flow, ours = both_flows(kwargs, x, labels, batch_size=4, subset=subset,
                                      ignore_class_split=True)
        assert len(ours) == len(keras_flow)
        for _ in range(len(ours)):
            assert_same_batch(next(ours), next(keras_flow))


@pytest.mark.parametrize("bad", ["x_part", "y", "sample_weight"])
def test_length_mismatch_messages_are_keras_messages(bad):
    x, y = digits(10)
    args = {"x_part": ((x, np.zeros(9)), y, None), "y": (x, y[:9], None),
            "sample_weight": (x, y, np.ones(7))}[bad]
    messages = []
    for gen in (keras_generator(), jaxscale.ImageDataGenerator()):
        with pytest.raises(ValueError) as error:
            gen.flow(args[0], args[1], sample_weight=args[2])
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert "should have the same length" in messages[1]


def test_float64_dtype_is_computed_in_float32_and_cast_on_the_host():
    x, y = digits(12)
    kwargs = {"featurewise_center": True, "featurewise_std_normalization": True,
              "dtype": "float64"}
    keras_gen = keras_generator(**kwargs)
    keras_gen.fit(x)
    ours = jaxscale.ImageDataGenerator(**kwargs).fit(x)
    batch, labels = next(ours.flow(x, y, batch_size=12, shuffle=False))
    keras_batch, _ = next(keras_gen.flow(x, y, batch_size=12, shuffle=False))
    assert isinstance(batch, np.ndarray) and batch.dtype == np.float64
    assert keras_batch.dtype == np.float64
    # float32 arithmetic: |x| <= ~4 standard deviations, a few float32 ulps of that
    np.testing.assert_allclose(batch, keras_batch, atol=1e-5)


def test_save_to_dir_writes_what_keras_writes(tmp_path):
    x, y = digits(10)
    keras_flow, ours = both_flows({"rescale": 1 / 255}, x, y, batch_size=4)
    for flow, folder in ((keras_flow, tmp_path / "keras"), (ours, tmp_path / "ours")):
        folder.mkdir()
        flow.save_to_dir, flow.save_prefix, flow.save_format = str(folder), "aug", "png"
        next(flow)
    from PIL import Image

    def saved(folder):
        files = sorted(folder.iterdir(), key=lambda p: int(p.name.split("_")[1]))
        return [p.name.split("_")[1] for p in files], [np.asarray(Image.open(p)) for p in files]

    (keras_rows, keras_images), (our_rows, our_images) = saved(tmp_path / "keras"), saved(
        tmp_path / "ours")
    assert our_rows == keras_rows == ["0", "1", "2", "3"]
    for ours_image, keras_image in zip(our_images, keras_images):
        # both truncate (x - min) / max * 255 to uint8: float32 rounding may cross a level
        assert np.abs(ours_image.astype(int) - keras_image).max() <= 1


def test_save_to_dir_argument_creates_the_folder(tmp_path):
    x, y = digits(6)
    folder = tmp_path / "new" / "aug"
    next(jaxscale.ImageDataGenerator().flow(x, y, batch_size=3, save_to_dir=str(folder),
                                            save_prefix="p", save_format="jpeg"))
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 3 and all(n.startswith("p_") and n.endswith(".jpeg") for n in names)


def test_channel_counts_keras_only_warns_about_raise_here():
    x = np.zeros((4, 6, 6, 2), np.uint8)
    with pytest.warns(UserWarning, match="channels"):
        keras_generator().flow(x)
    with pytest.raises(ValueError, match="channels"):
        jaxscale.ImageDataGenerator().flow(x)


# ------------------------------------------------------------------------ Keras' PyDataset

def tiny_model(keras, input_shape=(6, 6, 1)):
    model = keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                              keras.layers.Dense(4, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def test_flow_is_a_keras_pydataset_that_fit_evaluate_and_predict_take():
    keras_legacy()
    import keras
    x, _ = digits(40)
    y = np.arange(40) % 4
    gen = jaxscale.ImageDataGenerator(rescale=1 / 255)
    flow = gen.flow(x, y, batch_size=16, seed=0)
    assert isinstance(flow, keras.utils.PyDataset) and flow.num_batches == 3
    model = tiny_model(keras)
    history = model.fit(flow, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and flow.epoch >= 2
    loss, accuracy = model.evaluate(gen.flow(x, y, batch_size=16, shuffle=False), verbose=0)
    assert np.isfinite(loss) and 0 <= accuracy <= 1
    predicted = model.predict(gen.flow(x, batch_size=16, shuffle=False), verbose=0)
    expected = model.predict(x / 255.0, batch_size=16, verbose=0)
    np.testing.assert_allclose(predicted, expected, atol=1e-5)
    # Keras' adapters need (x,) for a batch without targets; next() still gives x.
    inputs_only = gen.flow(x, batch_size=16, shuffle=False)
    assert isinstance(inputs_only[0], tuple) and isinstance(next(inputs_only), jax.Array)


def test_workers_run_threads_and_multiprocessing_is_refused():
    keras_legacy()
    import keras
    x, _ = digits(48)
    y = np.arange(48) % 4
    flow = jaxscale.ImageDataGenerator(rescale=1 / 255).flow(x, y, batch_size=16, seed=0)
    flow.workers = 3
    with pytest.warns(UserWarning, match="use_multiprocessing"):
        flow.use_multiprocessing = True
    assert flow.use_multiprocessing is False
    model = tiny_model(keras)
    model.fit(flow, epochs=2, verbose=0)
    assert flow.epoch >= 2


def test_without_keras_imported_flows_are_plain_iterators_and_keras_stays_unimported():
    code = ("import sys, numpy as np, jaxscale\n"
            "x = np.zeros((8, 4, 4, 1), np.uint8)\n"
            "flow = jaxscale.ImageDataGenerator(rescale=1/255).flow(x, np.arange(8), "
            "batch_size=4)\n"
            "print(len(flow), next(flow)[0].shape, flow[1][0].shape)\n"
            "assert 'keras' not in sys.modules, 'jaxscale imported keras'\n"
            "assert [c.__name__ for c in type(flow).__mro__][-1] == 'object'\n"
            "assert 'PyDataset' not in [c.__name__ for c in type(flow).__mro__]\n")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:1] == ["2"]


@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("torch", marks=pytest.mark.slow)])
def test_model_fit_on_another_keras_backend_gets_numpy_batches(backend):
    keras_legacy()
    pytest.importorskip(backend)
    code = ("import numpy as np, keras, jaxscale\n"
            "x = np.random.default_rng(0).integers(0, 256, (32, 6, 6, 1)).astype(np.uint8)\n"
            "y = np.arange(32) % 4\n"
            "gen = jaxscale.ImageDataGenerator(rescale=1/255)\n"
            "flow = gen.flow(x, y, batch_size=8, seed=0)\n"
            "assert isinstance(flow[0][0], np.ndarray)\n"
            "model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),"
            " keras.layers.Dense(4, activation='softmax')])\n"
            "model.compile(optimizer='adam', loss='sparse_categorical_crossentropy')\n"
            "model.fit(flow, epochs=1, verbose=0)\n"
            "print('loss', model.evaluate(gen.flow(x, y, batch_size=8, shuffle=False),"
            " verbose=0))\n"
            "print(model.predict(gen.flow(x, batch_size=8, shuffle=False), verbose=0).shape)\n")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "KERAS_BACKEND": backend,
           "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(32, 4)" in done.stdout


def test_shift_axes_and_the_centre_of_non_square_images_are_documented_differences():
    legacy = keras_legacy()
    del legacy
    # height_shift_range moves rows here; Keras' moves columns (its tx).
    params = keras_generator(height_shift_range=0.5).get_random_transform((10, 10, 1), seed=1)
    assert params["tx"] != 0 and params["ty"] == 0
    ours = jaxscale.ImageDataGenerator(height_shift_range=0.5).get_random_transform(
        (10, 10, 1), seed=1)
    assert ours["tx"] == 0 and ours["ty"] != 0
    # A rotation about ((H-1)/2, (W-1)/2) equals Keras' on a square image, not on a
    # non-square one (Keras swaps the two centre coordinates).
    rotation = {"theta": 30.0}
    for shape, same in (((9, 9, 1), True), ((8, 12, 1), False)):
        image = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
        theirs = keras_generator().apply_transform(image, rotation)
        mine = np.asarray(jaxscale.ImageDataGenerator().apply_transform(image, rotation))
        assert np.allclose(mine, theirs, atol=1e-3) == same
