"""Dataset statistics: float64 agreement for every split, exact merges, pmap, save/load."""

import gzip
import json

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import jaxscale
from jaxscale import statistics
from tests.reference import reference_stats, to_format

SCOPES = ["channel", "pixel", "global"]
FORMATS = ["channels_last", "channels_first"]


def random_images(n=37, h=6, w=5, c=3, dtype=np.uint8, data_format="channels_last", seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        x = rng.integers(0, 256, (n, h, w, c)).astype(np.uint8)
    else:
        x = (rng.standard_normal((n, h, w, c)) * 3.0 + 10.0).astype(dtype)
    return to_format(x, data_format)


def assert_matches_reference(stats, images, scope, data_format, rtol=1e-6):
    ref_mean, ref_var = reference_stats(images, scope, data_format)
    np.testing.assert_allclose(np.asarray(stats.mean), ref_mean, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(np.asarray(stats.variance), ref_var, rtol=rtol * 2, atol=1e-6)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("channels", [1, pytest.param(3, marks=pytest.mark.numerics), 4])
def test_compute_stats_matches_float64(scope, data_format, dtype, channels):
    images = random_images(c=channels, dtype=dtype, data_format=data_format)
    # batches of 5 (the last one padded and masked) exercise the streaming merge
    stats = jaxscale.compute_stats(images, scope=scope, data_format=data_format, batch_size=5)
    assert int(stats.count) == images.shape[0]
    assert stats.shape == {"channel": (channels,), "pixel": (6, 5, channels),
                           "global": ()}[scope]
    assert_matches_reference(stats, images, scope, data_format)


def load_mnist_train(mnist_dir):
    with gzip.open(mnist_dir / "train-images-idx3-ubyte.gz") as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(60000, 28, 28, 1)


@pytest.mark.parametrize("batch_size", [pytest.param(None, marks=pytest.mark.numerics), 64, 999])
def test_mnist_statistics_match_published_reference(mnist_dir, batch_size):
    # SOURCES.md: mean 33.318421449829934, std 78.56748998339798 (float64, all pixels)
    stats = jaxscale.compute_stats(load_mnist_train(mnist_dir), batch_size=batch_size)
    assert int(stats.count) == 60000
    np.testing.assert_allclose(float(stats.mean[0]), 33.318421449829934, rtol=1e-6)
    np.testing.assert_allclose(float(stats.std[0]), 78.56748998339798, rtol=1e-6)


@pytest.mark.numerics
def test_iterable_of_batches_equals_whole_array():
    images = random_images(n=50, dtype=np.float32)
    whole = jaxscale.compute_stats(images)
    streamed = jaxscale.compute_stats(images[i:i + 7] for i in range(0, 50, 7))
    np.testing.assert_allclose(streamed.mean, whole.mean, rtol=1e-6)
    np.testing.assert_allclose(streamed.variance, whole.variance, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 39), max_size=6, unique=True),
       scope=st.sampled_from(SCOPES), seed=st.integers(0, 2**16))
def test_merging_any_split_equals_whole(cuts, scope, seed):
    # Each part is the whole array with a mask of its rows, so every part has one shape and
    # the 25 examples compile once per scope (slices of 1..39 rows compiled ~100 programs).
    images = random_images(n=40, h=3, w=4, dtype=np.float32, seed=seed)
    bounds = [0, *sorted(cuts), 40]
    rows = np.arange(40)
    parts = [jaxscale.batch_stats(images, scope=scope, mask=(rows >= a) & (rows < b))
             for a, b in zip(bounds, bounds[1:])]
    merged = parts[0]
    for part in parts[1:]:
        merged = jaxscale.merge_stats(merged, part)
    whole = jaxscale.batch_stats(images, scope=scope)
    assert int(merged.count) == 40
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(merged.variance, whole.variance, rtol=2e-6, atol=1e-6)
    assert_matches_reference(merged, images, scope, "channels_last")


def test_merge_is_commutative_and_empty_is_identity():
    a = jaxscale.batch_stats(random_images(n=10, seed=1))
    b = jaxscale.batch_stats(random_images(n=23, seed=2))
    ab, ba = jaxscale.merge_stats(a, b), jaxscale.merge_stats(b, a)
    np.testing.assert_allclose(ab.mean, ba.mean, rtol=1e-7)
    np.testing.assert_allclose(ab.variance, ba.variance, rtol=1e-6)
    empty = jaxscale.empty_stats(a.shape, elements_per_image=a.elements_per_image)
    for merged in (jaxscale.merge_stats(a, empty), jaxscale.merge_stats(empty, a)):
        np.testing.assert_array_equal(merged.mean, a.mean)
        np.testing.assert_array_equal(merged.variance, a.variance)
    assert np.isnan(np.asarray(empty.mean)).all()


def test_mask_excludes_padding_rows():
    images = random_images(n=12)
    padded = np.concatenate([images, np.full_like(images[:4], 255)])
    mask = np.arange(16) < 12
    masked = jaxscale.batch_stats(padded, mask=mask)
    assert int(masked.count) == 12
    assert_matches_reference(masked, images, "channel", "channels_last")


@pytest.mark.numerics
def test_long_chain_of_small_batches_keeps_float64_accuracy():
    # 2000 sequential merges of 3-image batches with a large mean offset: plain float32
    # running means drift by ~1e-5 here; the double-float accumulators must not.
    rng = np.random.default_rng(3)
    images = (1000.0 + rng.standard_normal((6000, 4, 4, 1))).astype(np.float32)
    stats = jaxscale.compute_stats(images, batch_size=3)
    assert_matches_reference(stats, images, "channel", "channels_last", rtol=1e-6)


def test_counts_do_not_overflow_at_imagenet_scale():
    # 1.28M images of 224x224: 6.4e10 pixels per channel, far past int32.
    per_image = 224 * 224
    one = statistics.DatasetStats(
        jnp.int32(640_000), jnp.float32([100.0]), jnp.float32([0.0]),
        jnp.float32([4.0 * 640_000 * per_image]), jnp.float32([0.0]),
        elements_per_image=per_image)
    two = one.replace(mean_hi=jnp.float32([104.0]))
    merged = jaxscale.merge_stats(one, two)
    assert int(merged.count) == 1_280_000
    np.testing.assert_allclose(float(merged.mean[0]), 102.0, rtol=1e-7)
    # variance = within (4) + between ((104-100)/2)^2 = 8
    np.testing.assert_allclose(float(merged.variance[0]), 8.0, rtol=1e-6)


@pytest.mark.numerics
@pytest.mark.parametrize("scope", SCOPES)
def test_pmap_allreduce_equals_whole(scope):
    devices = jax.local_device_count()
    assert devices == 8, "conftest sets 8 host devices"
    images = random_images(n=8 * 9, dtype=np.float32, seed=5)
    shards = images.reshape(8, 9, *images.shape[1:])

    per_device = jax.pmap(lambda x: jaxscale.allreduce_stats(
        jaxscale.batch_stats(x, scope=scope), "devices"), axis_name="devices")
    result = per_device(shards)
    # every device holds the same, bit-identical statistics of all the data
    for leaf in jax.tree_util.tree_leaves(result):
        chex.assert_trees_all_equal(*[np.asarray(leaf[i]) for i in range(devices)])
    first = jax.tree_util.tree_map(lambda x: x[0], result)
    assert int(first.count) == 72
    assert_matches_reference(first, images, scope, "channels_last")


def test_pmap_with_uneven_device_counts_via_mask():
    images = random_images(n=8 * 4, dtype=np.float32, seed=6)
    mask = np.ones(32, bool)
    mask[[3, 4, 20]] = False  # devices hold different numbers of real images
    per_device = jax.pmap(lambda x, m: jaxscale.allreduce_stats(
        jaxscale.batch_stats(x, mask=m), "d"), axis_name="d")
    result = per_device(images.reshape(8, 4, *images.shape[1:]), mask.reshape(8, 4))
    first = jax.tree_util.tree_map(lambda x: x[0], result)
    assert int(first.count) == 29
    assert_matches_reference(first, images[mask], "channel", "channels_last")


def test_update_stats_is_jittable_and_does_not_recompile():
    update = jax.jit(lambda stats, images: jaxscale.update_stats(stats, images))
    stats = jaxscale.empty_stats((3,), elements_per_image=30)
    for seed in range(4):
        stats = update(stats, jnp.asarray(random_images(n=8, seed=seed)))
    assert update._cache_size() == 1
    assert int(stats.count) == 32


@pytest.mark.parametrize("suffix", [".json", ".npz"])
@pytest.mark.parametrize("scope", SCOPES)
def test_save_load_roundtrip(tmp_path, suffix, scope):
    stats = jaxscale.compute_stats(random_images(dtype=np.float32), scope=scope)
    path = tmp_path / f"stats{suffix}"
    jaxscale.save_stats(stats, path)
    loaded = jaxscale.load_stats(path)
    assert loaded.scope == scope and loaded.elements_per_image == stats.elements_per_image
    chex.assert_trees_all_equal(jax.device_get(loaded), jax.device_get(stats))


def test_save_rejects_unknown_suffix(tmp_path):
    stats = jaxscale.compute_stats(random_images())
    with pytest.raises(ValueError, match=r"\.json or \.npz"):
        jaxscale.save_stats(stats, tmp_path / "stats.txt")


@pytest.mark.parametrize("images, message", [
    (np.zeros((4, 4, 3), np.uint8), "rank-4"),
    (np.zeros((2, 4, 4, 2), np.uint8), "2 channels"),
    (np.zeros((0, 4, 4, 3), np.uint8), "empty"),
    (np.full((2, 4, 4, 1), np.nan, np.float32), "NaN"),
    (np.zeros((2, 4, 4, 1), bool), "dtype"),
])
def test_bad_input_raises_clear_error(images, message):
    with pytest.raises(ValueError, match=message):
        jaxscale.compute_stats(images)


def test_unknown_scope_raises():
    with pytest.raises(ValueError, match="scope"):
        jaxscale.compute_stats(random_images(), scope="row")


def test_zero_variance_channel_gives_zero_not_nan():
    images = random_images(n=10, c=3)
    images[..., 1] = 0
    stats = jaxscale.compute_stats(images)
    assert float(stats.variance[1]) == 0.0 and float(stats.std[1]) == 0.0
    assert np.isfinite(np.asarray(stats.std)).all()


def _compiles_during(fn):
    events = []

    def on_event(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        result = fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    return result, len(events)


@pytest.mark.parametrize("on_device", [False, True])
def test_array_folds_with_two_compilations_and_none_on_refit(on_device, monkeypatch):
    # 1000 images, 7 per step, 4 steps per host call: 35 calls of 28 images and a last one of
    # 20 (two full steps and a 6-image tail). One compilation per distinct call length.
    monkeypatch.setattr(statistics, "BATCHES_PER_CALL", 4)
    images = random_images(n=1000, h=3, w=2, dtype=np.float32, seed=4)
    source = jax.device_put(images) if on_device else images
    fold = statistics._fold_program(jax.default_backend())
    cached = fold._cache_size()
    stats = jaxscale.compute_stats(source, scope="pixel", batch_size=7)
    assert int(stats.count) == 1000
    assert_matches_reference(stats, images, "pixel", "channels_last")
    assert fold._cache_size() - cached == 2
    _, compiles = _compiles_during(
        lambda: jaxscale.compute_stats(source, scope="pixel", batch_size=7))
    assert compiles == 0


def test_fold_batches_calls_per_array_not_per_batch(monkeypatch):
    calls = []
    real = statistics._fold_program(jax.default_backend())

    def spy(carry, images, start, **static):
        calls.append((int(start), static["length"]))
        return real(carry, images, start, **static)

    monkeypatch.setattr(statistics, "_fold_program", lambda platform: spy)
    images = jax.device_put(random_images(n=100, h=2, w=2))
    stats = jaxscale.compute_stats(images, batch_size=3)
    assert calls == [(0, 100)]  # 33 full steps and a tail of 1, all in one compiled call
    assert_matches_reference(stats, np.asarray(images), "channel", "channels_last")


def test_auto_batch_size_targets_about_two_million_values():
    assert statistics.auto_batch_size((28, 28, 1)) == 2 ** 21 // 784
    assert statistics.auto_batch_size((32, 32, 3)) == 682
    assert statistics.auto_batch_size((2048, 2048, 3)) == 1  # never zero


def test_stream_skips_empty_batches_and_checks_every_batch():
    images = random_images(n=20, dtype=np.float32)
    stream = [images[:8], images[8:8], images[8:]]
    stats = jaxscale.compute_stats(iter(stream))
    assert int(stats.count) == 20
    assert_matches_reference(stats, images, "channel", "channels_last")
    bad = images[8:].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        jaxscale.compute_stats(iter([images[:8], bad]))
    with pytest.raises(ValueError, match="no images"):
        jaxscale.compute_stats(iter([]))


# ---------------------------------------------------------------- numeric edges (issue 16)
# float32's unit roundoff; bounds below count roundings of the documented algorithms.
U = 2.0 ** -24


# Not `numerics`: exact integer sums do not depend on the order a CPU adds them in.
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("shape", [(37, 6, 5, 3), (6, 40, 41, 1), (3, 31, 37, 3)],
                         ids=["small", "1640-values", "prime-sides"])
def test_eight_bit_statistics_are_exact_sums(dtype, scope, shape):
    # One batch: the sums are exact integers; the mean is an exact integer plus one rounded
    # fraction, then hi + lo rounds once (2 U relative); M2 is within ~5 roundings and the
    # variance divides once more (7 U). The float path would add a rounding per pixel.
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype)
    images = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    images[0] = info.max  # a constant image next to random ones
    stats = jaxscale.compute_stats(images, scope=scope)
    ref_mean, ref_var = reference_stats(images, scope)
    np.testing.assert_allclose(np.asarray(stats.mean), ref_mean, rtol=2 * U,
                               atol=2 * U * np.abs(ref_mean).max())
    np.testing.assert_allclose(np.asarray(stats.variance), ref_var, rtol=7 * U, atol=0)


def test_eight_bit_pixel_statistics_of_thousands_of_images_are_exact():
    # pixel scope sums over images in blocks of 2^10: 2500 images cross two block borders
    images = np.random.default_rng(6).integers(0, 256, (2500, 3, 2, 1)).astype(np.uint8)
    stats = jaxscale.compute_stats(images, scope="pixel", batch_size=2500)
    ref_mean, ref_var = reference_stats(images, "pixel")
    np.testing.assert_allclose(np.asarray(stats.mean), ref_mean, rtol=2 * U)
    np.testing.assert_allclose(np.asarray(stats.variance), ref_var, rtol=7 * U)


@pytest.mark.parametrize("value,dtype", [(1e7 + 3, np.float32), (10_000_003, np.int32),
                                         (200, np.uint8), (0.1, np.float32)])
@pytest.mark.parametrize("scope", ["channel", "global"])
def test_constant_images_have_zero_std(value, dtype, scope):
    # 1e7 + 3 sums to 7.84e9 per image, where float32's spacing is 512: the plain mean is off
    # by ~3, and a two-pass std then reads 3.0. The corrected two-pass subtracts sum(d)^2 / K,
    # which here is exact, and the result is exactly 0.
    images = np.full((2, 28, 28, 1), value, dtype)
    stats = jaxscale.compute_stats(images, scope=scope)
    np.testing.assert_array_equal(np.asarray(stats.std), 0.0)
    np.testing.assert_allclose(np.asarray(stats.mean), value, rtol=U)


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_ten_constant_images_near_1e7(dtype):
    # true std of 1e7 + 0..9 is sqrt(8.25) = 2.8723; float32 NumPy says 2.915 (its mean is off
    # by half a unit at 1e7) and a per-image two-pass merge said 4.467. The values are exact
    # in float32, each image's (mean, M2) comes out exact, and the merges of exact means
    # round a few times relative to the result: bound 8 U.
    images = ((10_000_000 + np.arange(10))[:, None, None, None]
              * np.ones((1, 28, 28, 1))).astype(dtype)
    stats = jaxscale.compute_stats(images)
    np.testing.assert_allclose(float(stats.std[0]), np.sqrt(8.25), rtol=8 * U)
    np.testing.assert_allclose(float(stats.mean[0]), 10_000_004.5, rtol=U)


def test_float32_statistics_that_overflow_are_refused():
    # squares of deviations near 1e30 are beyond float32: std would be NaN or inf
    images = (np.random.default_rng(0).uniform(1, 2, (4, 8, 8, 1)) * 1e30).astype(np.float32)
    with pytest.raises(ValueError, match="compute_stats: the statistics of images .float32. "
                                         "overflow float32"):
        jaxscale.compute_stats(images)


def test_large_float32_values_with_small_spread_are_fine():
    images = np.full((3, 8, 8, 1), 1e30, np.float32)
    stats = jaxscale.compute_stats(images)
    assert float(stats.std[0]) == 0.0 and float(stats.mean[0]) == pytest.approx(1e30, rel=U)


def test_float64_beyond_float32_range_is_refused():
    images = np.random.default_rng(0).uniform(1, 2, (4, 8, 8, 1)) * 1e300
    with pytest.raises(ValueError, match=r"images \(float64\) holds values up to 2e\+300 .*"
                                         "beyond float32's range"):
        jaxscale.compute_stats(images)


@pytest.mark.parametrize("values,dtype,message", [
    (2 ** 32 + np.arange(4), np.int64, r"images \(int64\) holds values in \[4294967296, "),
    (2 ** 30 + np.arange(4), np.int32, r"compute_stats: images \(int32\) hold integers beyond"),
    (2 ** 30 + np.arange(4), np.int64, r"compute_stats: images \(int64\) hold integers beyond"),
    (2 ** 31 + np.arange(4), np.uint32, r"compute_stats: images \(uint32\) hold integers"),
])
def test_integers_float32_cannot_hold_are_refused(values, dtype, message):
    # int64 >= 2^32 lost its high bits on the way to the device (mean 0, std 0); integers
    # beyond 2^24 would be rounded by float32 (2^30 + 0..3 all become 2^30: std 0).
    images = (values[:, None, None, None] * np.ones((1, 4, 4, 1), np.int64)).astype(dtype)
    with pytest.raises(ValueError, match=message):
        jaxscale.compute_stats(images)


def test_int64_within_range_is_computed_exactly():
    images = (1000 + np.arange(12)).reshape(3, 2, 2, 1).astype(np.int64)
    stats = jaxscale.compute_stats(images)
    assert_matches_reference(stats, images, "channel", "channels_last", rtol=4 * U)


def test_stream_of_other_image_sizes_is_refused():
    # channel statistics of 28x28 and 32x32 batches have the same shape, but each count
    # weighs elements_per_image values: merging them would weigh one of the sizes wrongly
    stream = [np.zeros((4, 28, 28, 1), np.uint8), np.ones((4, 32, 32, 1), np.uint8)]
    with pytest.raises(ValueError, match=r"batch 1 has images of shape \(32, 32, 1\) but the "
                                         r"first batch had \(28, 28, 1\)"):
        jaxscale.compute_stats(iter(stream))


def test_merging_statistics_of_other_image_sizes_is_refused():
    a = jaxscale.compute_stats(np.zeros((2, 4, 4, 1), np.uint8))
    b = jaxscale.compute_stats(np.zeros((2, 5, 5, 1), np.uint8))
    with pytest.raises(ValueError, match="16 values per image .* with 25"):
        jaxscale.merge_stats(a, b)
    with pytest.raises(ValueError, match="scope 'channel'.* scope 'global'"):
        jaxscale.merge_stats(a, jaxscale.compute_stats(np.zeros((2, 4, 4, 1)), scope="global"))


# ---------------------------------------------------------------- files (issue 16)


def _edited_json(tmp_path, **changes):
    stats = jaxscale.compute_stats(random_images())
    path = tmp_path / "stats.json"
    jaxscale.save_stats(stats, path)
    doc = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DROP:
            del doc[key]
        else:
            doc[key] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    return bad


_DROP = object()


@pytest.mark.parametrize("changes,message", [
    ({"mean_lo": [0.0, 0.5]}, r"arrays disagree in shape: \{'mean_hi': \(3,\), 'mean_lo': \(2,\)"),
    ({"count": -3}, "count must be one non-negative int32 number of images, got -3"),
    ({"count": 2.5}, "count must be one non-negative"),
    ({"scope": "row"}, "unknown statistics scope 'row'"),
    ({"scope": "pixel"}, "scope 'pixel' has statistics of rank 3, got shape"),
    ({"elements_per_image": 0}, "elements_per_image must be a positive integer"),
    ({"m2_hi": [-5.0, 1.0, 1.0]}, "m2. is negative"),
    ({"m2_hi": _DROP}, r"not a statistics file: it lacks \['m2_hi'\]"),
    ({"mean_hi": [[1.0], [2.0, 3.0]]}, "not numeric arrays of one shape"),
])
def test_load_stats_refuses_files_that_cannot_be_right(tmp_path, changes, message):
    bad = _edited_json(tmp_path, **changes)
    with pytest.raises(ValueError, match=f"bad.json: .*{message}"):
        jaxscale.load_stats(bad)


@pytest.mark.parametrize("content,message", [
    ("[1, 2, 3]", "holds a JSON list, not the object save_stats writes"),
    ('{"count": 3', "not a readable statistics file"),
])
def test_load_stats_names_a_json_that_is_not_statistics(tmp_path, content, message):
    path = tmp_path / "other.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"other.json: {message}"):
        jaxscale.load_stats(path)


def test_load_stats_names_a_scaling_file(tmp_path):
    images = random_images()
    config = jaxscale.scaling_config("standardize")
    jaxscale.save_scaling(tmp_path / "scaling.npz", config, jaxscale.fit_scaling(config, images))
    jaxscale.save_stats(jaxscale.compute_stats(images), tmp_path / "stats.npz")
    with pytest.raises(ValueError, match="scaling.npz: holds a scaling config .* load_scaling"):
        jaxscale.load_stats(tmp_path / "scaling.npz")
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"plain.npz: an .npz without the 'meta' entry"):
        jaxscale.load_stats(tmp_path / "plain.npz")


def test_save_stats_refuses_what_is_not_statistics(tmp_path):
    with pytest.raises(ValueError, match="save_stats takes a DatasetStats .*, got dict"):
        jaxscale.save_stats({"mean": [1.0]}, tmp_path / "stats.json")


@pytest.mark.parametrize("scope", ["channel", "global"])
def test_nearly_constant_large_image_is_exact(scope):
    # 300 x 300 values of 255 sum to 2.3e7, past 2^24: a float32 sum rounds, its mean is off
    # by ~1e-5 and a two-pass M2 gains K * 1e-10 against a true M2 of 1 - 1/K. Exact sums
    # leave the 7 U of `test_eight_bit_statistics_are_exact_sums`.
    images = np.full((1, 300, 300, 1), 255, np.uint8)
    images[0, 7, 11, 0] = 254
    stats = jaxscale.compute_stats(images, scope=scope)
    ref_mean, ref_var = reference_stats(images, scope)
    np.testing.assert_allclose(np.asarray(stats.variance), ref_var, rtol=7 * U)
    np.testing.assert_allclose(np.asarray(stats.mean), ref_mean, rtol=2 * U)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_statistics_keep_their_dtypes_under_jax_enable_x64(dtype):
    # the float64 device comparisons (test_parallel) fit their scaling with x64 on
    images = random_images(dtype=dtype)
    want = jaxscale.compute_stats(images)
    with jax.enable_x64(True):
        got = jaxscale.compute_stats(images)
    assert got.count.dtype == jnp.int32 and got.mean_hi.dtype == jnp.float32
    chex.assert_trees_all_equal(jax.device_get(got), jax.device_get(want))
