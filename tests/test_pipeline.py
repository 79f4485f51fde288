"""jaxscale.data.pipeline: epoch orders, and the resident and host sources serve the same batches."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.data.datasets import load_dataset, synthetic_dataset
from jaxscale.data.pipeline import (
    ArrayReader,
    HostSource,
    ResidentSource,
    epoch_batches,
    epoch_order,
    steps_per_epoch,
    take_rows,
)
from jaxscale.data.sharding import Placement


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


def expected_batches(data, seed, epoch, batch_size, shuffle=True, drop_remainder=False):
    """The batches by definition: NumPy gathers of the epoch order's rows."""
    rows, mask = epoch_batches(epoch_order(seed, epoch, len(data), shuffle=shuffle),
                               batch_size, drop_remainder=drop_remainder)
    return [(data.images[r], data.labels[r], m) for r, m in zip(rows, mask)]


@pytest.mark.parametrize("batch_size", [1, 32, 203, 256])
@pytest.mark.parametrize("drop_remainder", [False, True])
@pytest.mark.parametrize("shuffle", [True, False])
def test_host_equals_resident_equals_definition(data, batch_size, drop_remainder, shuffle):
    kw = dict(shuffle=shuffle, drop_remainder=drop_remainder)
    if drop_remainder and batch_size > len(data):
        with pytest.raises(ValueError, match="leaves no batch"):
            next(HostSource(data).batches(5, 3, batch_size, **kw))
        return
    resident = as_numpy(ResidentSource(data).batches(5, 3, batch_size, **kw))
    host = as_numpy(HostSource(data).batches(5, 3, batch_size, **kw))
    assert_same_batches(resident, host)
    expected = expected_batches(data, 5, 3, batch_size, **kw)
    assert len(resident) == len(expected) == steps_per_epoch(len(data), batch_size,
                                                             drop_remainder=drop_remainder)
    for batch, (images, labels, mask) in zip(resident, expected):
        np.testing.assert_array_equal(batch.images, images)
        np.testing.assert_array_equal(batch.labels, labels)
        np.testing.assert_array_equal(batch.mask, mask)
    assert {b.images.shape for b in resident} == {(batch_size, 6, 5, 1)}


@pytest.mark.parametrize("steps_per_call,start", [(1, 0), (3, 0), (4, 2), (7, 7), (100, 1)])
@pytest.mark.parametrize("source", [ResidentSource, HostSource])
def test_chunks_hold_the_epochs_steps_in_order(data, source, steps_per_call, start):
    src = source(data)
    batch_size = 29  # 203 = 7 * 29: seven steps
    chunks = list(src.epoch(2, 1, batch_size, steps_per_call=steps_per_call, start=start))
    steps = [jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), chunk)
             for chunk in chunks for i in range(jax.tree_util.tree_leaves(chunk)[0].shape[0])]
    expected = expected_batches(data, 2, 1, batch_size)[start:]
    assert len(steps) == len(expected)
    assert all(jax.tree_util.tree_leaves(c)[0].shape[0] <= steps_per_call for c in chunks)
    gather = jax.jit(src.take)
    for step, (images, labels, _) in zip(steps, expected):
        batch = gather(src.data, step)
        np.testing.assert_array_equal(batch.images, images)
        np.testing.assert_array_equal(batch.labels, labels)


@pytest.mark.parametrize("prefetch", [0, 1, 5])
def test_prefetch_depth_does_not_change_batches(data, prefetch):
    a = as_numpy(HostSource(data, prefetch=prefetch).batches(2, 0, 50))
    b = as_numpy(HostSource(data, prefetch=2).batches(2, 0, 50))
    assert_same_batches(a, b)


@pytest.mark.parametrize("n,batch_size", [(10, 4), (12, 4), (1, 3), (203, 32)])
def test_epoch_covers_every_example_once_and_pads_with_mask(n, batch_size):
    order = epoch_order(0, 0, n)
    rows, mask = epoch_batches(order, batch_size)
    steps = -(-n // batch_size)
    assert rows.shape == mask.shape == (steps, batch_size) and rows.dtype == np.int32
    np.testing.assert_array_equal(np.sort(rows[mask]), np.arange(n))
    pad = steps * batch_size - n
    np.testing.assert_array_equal(mask[-1], np.arange(batch_size) < batch_size - pad)
    np.testing.assert_array_equal(rows[-1][batch_size - pad:], order[0])


def test_drop_remainder_drops_the_last_examples_of_the_order():
    order = epoch_order(0, 0, 10)
    kept, mask = epoch_batches(order, 4, drop_remainder=True)
    padded, _ = epoch_batches(order, 4)
    assert kept.shape == (2, 4) and bool(mask.all())
    np.testing.assert_array_equal(kept, padded[:2])


def test_epoch_order_is_the_documented_permutation():
    key = jax.random.fold_in(jax.random.PRNGKey(7), 3)
    np.testing.assert_array_equal(epoch_order(7, 3, 1000),
                                  np.asarray(jax.random.permutation(key, 1000)))
    np.testing.assert_array_equal(epoch_order(7, 3, 5, shuffle=False), np.arange(5))


def test_epochs_differ_and_seeds_reproduce():
    orders = {(seed, epoch): epoch_order(seed, epoch, 100) for seed in (0, 1)
              for epoch in (0, 1)}
    np.testing.assert_array_equal(orders[0, 1], epoch_order(0, 1, 100))
    keys = list(orders)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert np.mean(orders[a] == orders[b]) < 0.2, (a, b)


def test_padded_rows_are_masked_in_batches(data):
    last = list(ResidentSource(data).batches(0, 0, 64))[-1]
    assert int(last.mask.sum()) == 203 - 3 * 64
    first = epoch_order(0, 0, 203)[0]
    np.testing.assert_array_equal(np.asarray(last.images[11:]),
                                  np.broadcast_to(data.images[first], (53, 6, 5, 1)))


def test_resident_keeps_uint8_and_makes_int32_labels(data):
    source = ResidentSource((data.images, data.labels.astype(np.int64)))
    images, labels = source.data
    assert images.dtype == jnp.uint8 and labels.dtype == jnp.int32
    assert isinstance(images, jax.Array)
    np.testing.assert_array_equal(images, data.images)


def test_take_rows(data):
    rows = jnp.array([5, 0, 202], jnp.int32)
    batch = jax.jit(take_rows)(data.images, data.labels, rows)
    np.testing.assert_array_equal(batch.images, data.images[[5, 0, 202]])
    np.testing.assert_array_equal(batch.labels, data.labels[[5, 0, 202]])
    np.testing.assert_array_equal(batch.mask, [True, True, True])


@pytest.mark.parametrize("kind", ["mesh", "pmap"])
@pytest.mark.parametrize("source", [ResidentSource, HostSource])
def test_each_device_gets_its_slice_of_every_step(data, kind, source):
    placement = Placement.create(kind)
    count, batch_size = placement.count, 8 * placement.count
    chunk = next(source(data, placement=placement).epoch(3, 0, batch_size, steps_per_call=2))
    # the resident chunk carries rows, the host chunk the images themselves
    leaf = chunk[0] if source is ResidentSource else chunk.images
    rows = epoch_batches(epoch_order(3, 0, len(data)), batch_size)[0][:2]
    expected = rows if source is ResidentSource else data.images[rows]
    assert len(leaf.addressable_shards) == count
    if kind == "pmap":  # [D, K, B / D, ...]: device d holds columns d*8 ... d*8 + 7
        assert leaf.shape[:3] == (count, 2, 8)
        for d in range(count):
            np.testing.assert_array_equal(np.asarray(leaf[d]), expected[:, 8 * d:8 * d + 8])
    else:  # global [K, B, ...], sharded along B
        assert {s.data.shape[:2] for s in leaf.addressable_shards} == {(2, 8)}
        np.testing.assert_array_equal(np.asarray(leaf), expected)


def test_a_batch_that_does_not_split_over_the_devices_is_refused(data):
    with pytest.raises(ValueError, match="does not split over 8 devices"):
        next(ResidentSource(data, placement=Placement.create("mesh")).epoch(0, 0, 60))


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_examples=0), "num_examples >= 1"),
])
def test_epoch_order_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        epoch_order(0, 0, **kwargs)


def test_epoch_batches_and_chunk_errors(data):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        epoch_batches(np.arange(5), 0)
    with pytest.raises(ValueError, match="leaves no batch"):
        epoch_batches(np.arange(3), 4, drop_remainder=True)
    with pytest.raises(ValueError, match="steps_per_call must be >= 1"):
        next(ResidentSource(data).epoch(0, 0, 8, steps_per_call=0))
    with pytest.raises(ValueError, match="outside the epoch"):
        next(HostSource(data).epoch(0, 0, 8, start=100))


def test_shapes_and_dtypes_are_checked():
    with pytest.raises(ValueError, match=r"images \[N, H, W, C\] and labels \[N\]"):
        ResidentSource((np.zeros((4, 3, 3), np.uint8), np.zeros(4)))
    with pytest.raises(ValueError, match="must be uint8"):
        HostSource((np.zeros((4, 3, 3, 1), np.float32), np.zeros(4)))


def test_a_reader_returning_the_wrong_shape_is_named():
    class Wrong(ArrayReader):
        def read(self, rows):
            images, labels = super().read(rows)
            return images[:, :2], labels

    reader = Wrong(np.zeros((8, 3, 3, 1), np.uint8), np.zeros(8, np.int32))
    with pytest.raises(ValueError, match=r"reader returned images uint8\[4, 2, 3, 1\]"):
        next(HostSource(reader).batches(0, 0, 4))


def test_legacy_pipeline_functions_still_work_and_warn(data):
    with pytest.warns(DeprecationWarning, match="ResidentSource"):
        from jaxscale import pipeline as legacy
        device = legacy.put_on_device(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = as_numpy(legacy.resident_batches(device, 64, seed=0, epoch=0))
        streamed = as_numpy(legacy.stream_batches(data, 64, seed=0, epoch=0))
    assert_same_batches(old, as_numpy(ResidentSource(data).batches(0, 0, 64)))
    assert_same_batches(streamed, old)


def test_real_mnist_host_equals_resident(mnist_dir):
    test = load_dataset("mnist", "test", data_dir=mnist_dir, source="raw")
    resident = as_numpy(ResidentSource(test).batches(0, 1, 1000))
    host = as_numpy(HostSource(test).batches(0, 1, 1000))
    assert_same_batches(resident, host)
    assert sum(int(b.images.sum(dtype=np.int64)) for b in resident) == 264923200


# Slow on a cold cache: preparing the ArrayRecord copy takes 15-30 s.
@pytest.mark.slow
def test_host_source_over_tfds_records_equals_resident(mnist_dir):
    pytest.importorskip("tensorflow_datasets")
    from jaxscale.data.datasets import load_data_source
    source = load_data_source("mnist", "test", data_dir=mnist_dir)
    test = load_dataset("mnist", "test", data_dir=mnist_dir, source="tfds")
    resident = ResidentSource(test).batches(7, 2, 64)
    streamed = HostSource(source, prefetch=1).batches(7, 2, 64)
    # Three batches are enough to compare; reading the whole epoch record by record is slow.
    assert_same_batches(as_numpy(b for b, _ in zip(resident, range(3))),
                        as_numpy(b for b, _ in zip(streamed, range(3))))


@pytest.mark.slow
def test_benchmark_rows():
    from benchmarks import bench_pipeline
    data = synthetic_dataset(1024, (28, 28, 1), 10, seed=0)
    rows = bench_pipeline.run(data.images, data.labels, source="synthetic", repeats=2,
                              records=False)
    assert [r["name"] for r in rows] == ["resident/scan", "resident/step", "host"]
    assert all(r["batches_per_s"] > 0 and r["batch_size"] == 128 for r in rows)
