"""jaxscale.pipeline: device-resident and streaming batches agree, shuffling, padding, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale import pipeline
from jaxscale.datasets import load_dataset, synthetic_dataset


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(203, (6, 5, 1), 7, seed=1)


def as_numpy(batches):
    return [jax.tree_util.tree_map(np.asarray, b) for b in batches]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("images", "labels", "mask"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))


@pytest.mark.parametrize("batch_size", [1, 32, 203, 256])
@pytest.mark.parametrize("drop_remainder", [False, True])
@pytest.mark.parametrize("shuffle", [True, False])
def test_streaming_equals_resident(data, batch_size, drop_remainder, shuffle):
    kw = dict(seed=5, epoch=3, shuffle=shuffle, drop_remainder=drop_remainder)
    if drop_remainder and batch_size > len(data):
        with pytest.raises(ValueError, match="leaves no batch"):
            next(pipeline.stream_batches(data, batch_size, **kw))
        return
    resident = as_numpy(pipeline.resident_batches(pipeline.put_on_device(data), batch_size, **kw))
    streamed = as_numpy(pipeline.stream_batches(data, batch_size, **kw))
    assert_same_batches(resident, streamed)
    expected_steps = len(data) // batch_size if drop_remainder else -(-len(data) // batch_size)
    assert len(resident) == expected_steps
    assert {b.images.shape for b in resident} == {(batch_size, 6, 5, 1)}


@pytest.mark.parametrize("prefetch", [0, 1, 5])
def test_streaming_prefetch_depth_does_not_change_batches(data, prefetch):
    a = as_numpy(pipeline.stream_batches(data, 50, seed=2, prefetch=prefetch))
    b = as_numpy(pipeline.stream_batches(data, 50, seed=2, prefetch=2))
    assert_same_batches(a, b)


def valid_rows(batches):
    return np.concatenate([np.asarray(i)[np.asarray(m)] for i, m in batches])


@pytest.mark.parametrize("n,batch_size", [(10, 4), (12, 4), (1, 3), (203, 32)])
def test_epoch_covers_every_example_once_and_pads_with_mask(n, batch_size):
    indices, mask = pipeline.epoch_indices(pipeline.epoch_key(0, 0), n, batch_size)
    steps = -(-n // batch_size)
    assert indices.shape == mask.shape == (steps, batch_size)
    assert indices.dtype == jnp.int32
    np.testing.assert_array_equal(np.sort(valid_rows([(indices, mask)])), np.arange(n))
    pad = steps * batch_size - n
    np.testing.assert_array_equal(np.asarray(mask[-1]),
                                  np.arange(batch_size) < batch_size - pad)
    np.testing.assert_array_equal(np.asarray(indices[-1])[batch_size - pad:], 0)


def test_drop_remainder_drops_the_last_examples_of_the_order():
    key = pipeline.epoch_key(0, 0)
    kept, mask = pipeline.epoch_indices(key, 10, 4, drop_remainder=True)
    padded, _ = pipeline.epoch_indices(key, 10, 4)
    assert kept.shape == (2, 4) and bool(mask.all())
    np.testing.assert_array_equal(kept, padded[:2])


def test_padded_rows_are_masked_in_batches(data):
    last = list(pipeline.resident_batches(pipeline.put_on_device(data), 64, seed=0))[-1]
    assert int(last.mask.sum()) == 203 - 3 * 64
    np.testing.assert_array_equal(np.asarray(last.images[11:]),
                                  np.broadcast_to(data.images[0], (53, 6, 5, 1)))


def test_epochs_differ_and_seeds_reproduce():
    orders = {(seed, epoch): np.asarray(pipeline.epoch_indices(
        pipeline.epoch_key(seed, epoch), 100, 10)[0]) for seed in (0, 1) for epoch in (0, 1)}
    again = np.asarray(pipeline.epoch_indices(pipeline.epoch_key(0, 1), 100, 10)[0])
    np.testing.assert_array_equal(orders[0, 1], again)
    keys = list(orders)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert np.mean(orders[a] == orders[b]) < 0.2, (a, b)


def test_epoch_key_accepts_a_key():
    key = jax.random.PRNGKey(9)
    np.testing.assert_array_equal(pipeline.epoch_key(key, 2), pipeline.epoch_key(9, 2))


def test_unshuffled_order_is_file_order(data):
    first = next(pipeline.stream_batches(data, 8, shuffle=False))
    np.testing.assert_array_equal(first.labels, data.labels[:8])


def test_put_on_device_keeps_uint8_and_makes_int32_labels(data):
    dev = pipeline.put_on_device((data.images, data.labels.astype(np.int64)))
    assert dev.images.dtype == jnp.uint8 and dev.labels.dtype == jnp.int32
    assert isinstance(dev.images, jax.Array)
    np.testing.assert_array_equal(dev.images, data.images)


def test_gather_batch(data):
    dev = pipeline.put_on_device(data)
    rows = jnp.array([5, 0, 202], jnp.int32)
    batch = pipeline.gather_batch(dev.images, dev.labels, rows)
    np.testing.assert_array_equal(batch.images, data.images[[5, 0, 202]])
    np.testing.assert_array_equal(batch.labels, data.labels[[5, 0, 202]])
    np.testing.assert_array_equal(batch.mask, [True, True, True])


def test_scan_epoch_sees_every_valid_example_once(data):
    dev = pipeline.put_on_device(data)
    indices, mask = pipeline.epoch_indices(pipeline.epoch_key(1, 0), len(data), 32)

    def step(total, batch):
        valid = batch.mask[:, None, None, None]
        return total + jnp.sum(jnp.where(valid, batch.images, 0), dtype=jnp.int32), (
            batch.mask.sum())

    total, counts = jax.jit(lambda d, i, m: pipeline.scan_epoch(step, jnp.int32(0), d, i, m))(
        dev, indices, mask)
    assert int(total) == int(data.images.sum(dtype=np.int64))
    np.testing.assert_array_equal(counts, [32] * 6 + [11])


def test_device_epoch_equals_resident_batches(data):
    dev = pipeline.put_on_device(data)
    stacked = pipeline.device_epoch(pipeline.epoch_key(4, 1), dev, batch_size=40)
    per_step = as_numpy(pipeline.resident_batches(dev, 40, seed=4, epoch=1))
    assert stacked.images.shape == (6, 40, 6, 5, 1)
    assert_same_batches([jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), stacked)
                         for i in range(6)], per_step)


@pytest.mark.parametrize("path", ["resident", "streaming"])
def test_each_device_gets_its_slice_of_the_batch(data, path):
    devices = jax.devices()
    batch_size = 8 * len(devices)
    if path == "streaming":
        batch = next(pipeline.stream_batches(data, batch_size, seed=3,
                                             sharding=pipeline.batch_sharding()))
    else:
        dev = pipeline.put_on_device(data, pipeline.replicated_sharding())
        indices, mask = pipeline.epoch_indices(pipeline.epoch_key(3, 0), len(data), batch_size)
        rows = jax.device_put(indices[0], pipeline.batch_sharding())
        batch = pipeline.gather_batch(dev.images, dev.labels, rows, mask[0])
    shards = batch.images.addressable_shards
    assert len(shards) == len(devices)
    assert {s.data.shape for s in shards} == {(8, 6, 5, 1)}
    reference = next(pipeline.stream_batches(data, batch_size, seed=3))
    np.testing.assert_array_equal(batch.images, reference.images)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_examples=0, batch_size=4), "num_examples >= 1"),
    (dict(num_examples=5, batch_size=0), "batch_size >= 1"),
    (dict(num_examples=3, batch_size=4, drop_remainder=True), "leaves no batch"),
])
def test_epoch_indices_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipeline.epoch_indices(pipeline.epoch_key(0, 0), **kwargs)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"images \[N, H, W, C\] and labels \[N\]"):
        pipeline.put_on_device((np.zeros((4, 3, 3), np.uint8), np.zeros(4)))


def test_real_mnist_streaming_equals_resident(mnist_dir):
    test = load_dataset("mnist", "test", data_dir=mnist_dir, source="raw")
    dev = pipeline.put_on_device(test)
    resident = as_numpy(pipeline.resident_batches(dev, 1000, seed=0, epoch=1))
    streamed = as_numpy(pipeline.stream_batches(test, 1000, seed=0, epoch=1))
    assert_same_batches(resident, streamed)
    assert sum(int(b.images.sum(dtype=np.int64)) for b in resident) == 264923200


# Slow on a cold cache: preparing the ArrayRecord copy takes 15-30 s.
@pytest.mark.slow
def test_streaming_from_a_record_source_equals_resident(mnist_dir):
    pytest.importorskip("tensorflow_datasets")
    from jaxscale.datasets import load_data_source
    source = load_data_source("mnist", "test", data_dir=mnist_dir)
    test = load_dataset("mnist", "test", data_dir=mnist_dir, source="tfds")
    resident = pipeline.resident_batches(pipeline.put_on_device(test), 64, seed=7, epoch=2)
    streamed = pipeline.stream_batches(source, 64, seed=7, epoch=2, prefetch=1)
    # Three batches are enough to compare; reading the whole epoch record by record is slow.
    assert_same_batches(as_numpy(b for b, _ in zip(resident, range(3))),
                        as_numpy(b for b, _ in zip(streamed, range(3))))


@pytest.mark.slow
def test_benchmark_rows():
    from benchmarks import bench_pipeline
    from jaxscale.datasets import synthetic_dataset
    data = synthetic_dataset(1024, (28, 28, 1), 10, seed=0)
    rows = bench_pipeline.run(data.images, data.labels, source="synthetic", repeats=2,
                              records=False)
    names = [r["name"] for r in rows]
    assert names[:4] == ["resident/scan", "resident/fused-step", "resident/loop", "streaming"]
    assert all(r["batches_per_s"] > 0 and r["batch_size"] == 128 for r in rows)
