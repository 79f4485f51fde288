"""Dataset statistics: float64 agreement for every split, exact merges, pmap, save/load."""

import gzip

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
    images = random_images(n=40, h=3, w=4, dtype=np.float32, seed=seed)
    bounds = [0, *sorted(cuts), 40]
    parts = [jaxscale.batch_stats(images[a:b], scope=scope) for a, b in zip(bounds, bounds[1:])]
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
    cached = statistics._fold_slice._cache_size()
    stats = jaxscale.compute_stats(source, scope="pixel", batch_size=7)
    assert int(stats.count) == 1000
    assert_matches_reference(stats, images, "pixel", "channels_last")
    assert statistics._fold_slice._cache_size() - cached == 2
    _, compiles = _compiles_during(
        lambda: jaxscale.compute_stats(source, scope="pixel", batch_size=7))
    assert compiles == 0


def test_fold_batches_calls_per_array_not_per_batch(monkeypatch):
    calls = []
    real = statistics._fold_slice

    def spy(carry, images, start, **static):
        calls.append((int(start), static["length"]))
        return real(carry, images, start, **static)

    monkeypatch.setattr(statistics, "_fold_slice", spy)
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
