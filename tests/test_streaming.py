"""Streaming input: readers, the Grain stream's order, shards, state, errors and statistics."""

import json
import os

import jax
import numpy as np
import pytest

pytest.importorskip("grain")

from jaxscale import scaling, statistics  # noqa: E402
from jaxscale.data import streaming  # noqa: E402
from jaxscale.data.datasets import (DatasetFileError, RecordSource, load_data_source,  # noqa: E402
                                    load_dataset, synthetic_dataset)
from jaxscale.data.pipeline import (ArrayReader, HostSource, ResidentSource,  # noqa: E402
                                    epoch_batches, epoch_order)
from jaxscale.data.sharding import Placement, process_rows  # noqa: E402

# float32 unit roundoff: the error unit of every float32 statistic below.
U32 = 2.0 ** -24


@pytest.fixture(scope="module")
def data():
    # 203 examples: no batch size used below divides it, so every epoch has a remainder.
    return synthetic_dataset(203, (6, 5, 3), 7, seed=1)


@pytest.fixture(scope="module")
def reader(data):
    return ArrayReader(data.images, data.labels, data.num_classes)


@pytest.fixture(scope="module")
def record_files(data, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("records") / "synthetic-train"
    return streaming.write_records(prefix, data, num_shards=3, batch_size=50)


def host(batches):
    return [tuple(np.asarray(x) for x in b) for b in batches]


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for step, (a, b) in enumerate(zip(got, expected)):
        for name, x, y in zip(("images", "labels", "mask"), a, b):
            np.testing.assert_array_equal(x, y, err_msg=f"step {step}: {name}")


def gathered(data, batch_size, *, seed, epochs, shuffle=True, drop_remainder=True):
    """The batches of the one data path: its epoch order, rows gathered from the arrays."""
    out = []
    for epoch in range(epochs):
        rows, mask = epoch_batches(epoch_order(seed, epoch, len(data), shuffle=shuffle),
                                   batch_size, drop_remainder=drop_remainder)
        out += [(data.images[r], data.labels[r], m) for r, m in zip(rows, mask)]
    return out


# --- order -----------------------------------------------------------------------------------

@pytest.mark.parametrize("read_batches", [None, 1, 5])  # None: whole epochs per read here
@pytest.mark.parametrize("drop_remainder", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_stream_equals_gathering_the_arrays_in_epoch_order(data, reader, drop_remainder,
                                                           shuffle, read_batches):
    options = streaming.StreamOptions(read_batches=read_batches)
    got = host(streaming.stream(reader, 16, seed=7, num_epochs=2, shuffle=shuffle,
                                drop_remainder=drop_remainder, options=options))
    assert_same_batches(got, gathered(data, 16, seed=7, epochs=2, shuffle=shuffle,
                                      drop_remainder=drop_remainder))


def test_stream_equals_the_resident_source(data, reader):
    resident = ResidentSource(data)
    expected = [b for epoch in range(2) for b in resident.batches(
        11, epoch, 16, drop_remainder=False)]
    got = streaming.stream(reader, 16, seed=11, num_epochs=2, drop_remainder=False)
    assert_same_batches(host(got), host(expected))


@pytest.mark.parametrize("steps_per_call", [1, 5])
def test_chunks_are_the_host_sources_chunks(data, reader, steps_per_call):
    # 12 steps per epoch: chunks of 5 are 5, 5, 2 and never cross the end of an epoch
    got = host(streaming.stream(reader, 16, seed=2, num_epochs=2, drop_remainder=False,
                                steps_per_call=steps_per_call))
    source = HostSource(reader)
    expected = host(chunk for epoch in range(2) for chunk in source.epoch(
        2, epoch, 16, drop_remainder=False, steps_per_call=steps_per_call))
    assert [c[2].shape[0] for c in got] == [c[2].shape[0] for c in expected]
    assert_same_batches(got, expected)


class CountingReader:
    """A reader that records the number of rows of every `read` call."""

    def __init__(self, reader):
        self.inner, self.calls = reader, []
        self.image_shape, self.num_classes = reader.image_shape, reader.num_classes

    def __len__(self):
        return len(self.inner)

    def read(self, rows):
        self.calls.append(len(rows))
        return self.inner.read(rows)


@pytest.mark.parametrize("read_batches, expected", [
    (1, [16] * 12), (5, [80, 80, 32]), (None, [192])])  # 12 batches of 16 per epoch
def test_single_batches_are_read_several_per_call(reader, read_batches, expected):
    counting = CountingReader(reader)
    stream = streaming.stream(counting, 16, seed=1, options=streaming.StreamOptions(
        read_threads=0, read_batches=read_batches))
    assert len(host(stream)) == 12
    assert counting.calls == expected


def test_default_read_batches_bounds_examples_and_bytes():
    from jaxscale.data.pipeline import READ_BYTES, READ_EXAMPLES, default_read_batches

    assert default_read_batches(256, 28 * 28) == -(-READ_EXAMPLES // 256)  # MNIST: 16
    assert default_read_batches(READ_EXAMPLES, 1) == 1
    assert default_read_batches(256, 224 * 224 * 3) == 1  # 38 MB batches: one per read
    big = default_read_batches(8, READ_BYTES // 64)  # 8 examples of 1/64 of the budget
    assert big == 8 and big * 8 * (READ_BYTES // 64) <= READ_BYTES
    with pytest.raises(ValueError, match="read_batches"):
        streaming.StreamOptions(read_batches=0)


def test_worker_processes_and_threads_do_not_change_the_batches(data, record_files):
    records = streaming.RecordReader(record_files)
    expected = gathered(data, 16, seed=3, epochs=2, drop_remainder=False)
    for options in (streaming.StreamOptions(worker_count=0, read_threads=0),
                    streaming.StreamOptions(worker_count=2, read_threads=3, buffer_size=1)):
        batches = streaming.stream(records, 16, seed=3, num_epochs=2, drop_remainder=False,
                                   options=options)
        assert_same_batches(host(batches), expected)


def test_grain_source_reads_the_thread_sources_chunks_with_one_iterator(data, record_files):
    # the calls a training run makes: whole epochs with checkpoint breaks, one cut short
    # (max_steps), a jump (resume), unshuffled evaluations; then an abandoned epoch
    records = streaming.RecordReader(record_files)
    calls = [dict(epoch=0, steps_per_call=5, breaks=(4,)), dict(epoch=1, steps_per_call=3),
             dict(epoch=2, stop=7), dict(epoch=4, start=9, steps_per_call=2),
             dict(epoch=5), dict(epoch=0, shuffle=False, drop_remainder=False),
             dict(epoch=0, shuffle=False, drop_remainder=False, steps_per_call=4)]
    threads = HostSource(records, options=streaming.StreamOptions(loader="threads"))
    grain_source = streaming.GrainSource(records)
    order = streaming.StreamConfig(203, 16, seed=6, shuffle=True, drop_remainder=True)
    restarts = []
    for call in calls:
        kwargs = dict(dict(drop_remainder=True), **call)
        epoch = kwargs.pop("epoch")
        expected = host(threads.epoch(6, epoch, 16, **kwargs))
        got = host(grain_source.epoch(6, epoch, 16, **kwargs))
        assert [c[2].shape for c in got] == [c[2].shape for c in expected]
        assert_same_batches(got, expected)
        restarts.append(grain_source.stream_for(order)._inner)
    # the training stream ran on through epochs 0, 1, 2 and 4, 5 without a restart; it moved
    # once, for the jump after the cut
    assert restarts[0] is restarts[1] is restarts[2] and restarts[3] is restarts[4]
    assert restarts[2] is not restarts[3]
    abandoned = grain_source.epoch(6, 7, 16, drop_remainder=True)
    next(abandoned)  # its read-ahead is still pulling when the next epoch starts
    assert_same_batches(host(grain_source.epoch(6, 7, 16, drop_remainder=True)),
                        host(threads.epoch(6, 7, 16, drop_remainder=True)))
    grain_source.close()


# --- processes -------------------------------------------------------------------------------

@pytest.mark.parametrize("process_count", [2, 4])
def test_process_parts_are_the_global_batches(data, reader, process_count):
    whole = host(streaming.stream(reader, 16, seed=1, drop_remainder=False,
                                  process_index=0, process_count=1))
    parts = [host(streaming.stream(reader, 16, seed=1, drop_remainder=False,
                                   process_index=p, process_count=process_count))
             for p in range(process_count)]
    assert {len(p) for p in parts} == {len(whole)}  # every process runs every step
    for step, batch in enumerate(whole):
        for field in range(3):
            joined = np.concatenate([part[step][field] for part in parts])
            np.testing.assert_array_equal(joined, batch[field])
    # the shards of an epoch are disjoint and cover every example once
    rows, mask = epoch_batches(epoch_order(1, 0, len(reader)), 16)
    per_process = [process_rows(rows, process_index=p, process_count=process_count)[
        process_rows(mask, process_index=p, process_count=process_count)]
        for p in range(process_count)]
    union = np.concatenate(per_process)
    np.testing.assert_array_equal(np.sort(union), np.arange(len(reader)))


def test_batch_size_must_split_over_processes(reader):
    with pytest.raises(ValueError, match="batch of 10 rows does not split over 4"):
        streaming.stream(reader, 10, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="both process_index and process_count"):
        streaming.stream(reader, 10, process_index=0)


# --- state -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stop_after", [0, 5, 12, 13, 30])  # 12 steps per epoch
def test_resume_mid_epoch_is_exact(data, reader, stop_after):
    # the first stream stops inside a read of 5 batches; the resumed one reads 3 at a time
    expected = gathered(data, 16, seed=5, epochs=3)
    first = streaming.stream(reader, 16, seed=5, num_epochs=3,
                             options=streaming.StreamOptions(read_batches=5))
    head = host(b for _, b in zip(range(stop_after), first))
    state = json.loads(json.dumps(first.get_state()))  # what a checkpoint stores
    first.close()
    assert (state["epoch"], state["step"]) == divmod(stop_after, 12)
    resumed = streaming.stream(reader, 16, seed=5, num_epochs=3,
                               options=streaming.StreamOptions(read_threads=0, read_batches=3))
    resumed.set_state(state)
    assert_same_batches(head + host(resumed), expected)


def test_resume_inside_a_chunk_with_another_chunk_size(data, reader):
    expected = gathered(data, 16, seed=6, epochs=2)
    first = streaming.stream(reader, 16, seed=6, num_epochs=2, steps_per_call=4)
    head = host(next(first) for _ in range(2))  # steps 0-3 and 4-7
    state = first.get_state()
    assert (state["epoch"], state["step"]) == (0, 8)
    resumed = streaming.stream(reader, 16, seed=6, num_epochs=2, steps_per_call=5)
    resumed.set_state(dict(state, step=6))  # resume two steps back, inside the last chunk
    tail = host(resumed)
    assert [c[2].shape[0] for c in tail] == [5, 1, 5, 5, 2]  # the chunk grid starts at 6
    unchunk = lambda chunks: [tuple(x[i] for x in c) for c in chunks for i in range(len(c[2]))]
    assert_same_batches(unchunk(head)[:6] + unchunk(tail), expected)


def test_device_iterator_state_counts_yielded_batches_only(data, reader):
    expected = gathered(data, 16, seed=2, epochs=2)
    device = streaming.DeviceIterator(streaming.stream(reader, 16, seed=2, num_epochs=2),
                                      size=3)
    head = host(b for _, b in zip(range(7), device))
    state = device.get_state()  # 3 more batches are already on their way to the device
    assert (state["epoch"], state["step"]) == (0, 7)
    device.close()
    resumed = streaming.DeviceIterator(streaming.stream(reader, 16, seed=2, num_epochs=2))
    resumed.set_state(state)
    assert_same_batches(head + host(resumed), expected)


def test_state_of_another_stream_is_refused(reader):
    state = streaming.stream(reader, 16, seed=5).get_state()
    with pytest.raises(ValueError, match="saved with batch_size=16, this run reads with batch_size=8"):
        streaming.stream(reader, 8, seed=5).set_state(state)
    with pytest.raises(ValueError, match="outside this stream"):
        streaming.stream(reader, 16, seed=5).set_state(dict(state, epoch=3))


def test_iterator_saves_in_an_orbax_checkpoint_with_grains_handler(data, reader, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    import grain

    expected = gathered(data, 16, seed=9, epochs=2)
    first = streaming.stream(reader, 16, seed=9, num_epochs=2)
    head = host(b for _, b in zip(range(15), first))
    checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
    checkpointer.save(tmp_path / "data", args=grain.checkpoint.CheckpointSave(first))
    resumed = streaming.stream(reader, 16, seed=9, num_epochs=2)
    checkpointer.restore(tmp_path / "data", args=grain.checkpoint.CheckpointRestore(resumed))
    assert_same_batches(head + host(resumed), expected)


# --- device ----------------------------------------------------------------------------------

def test_device_iterator_places_batches_with_a_sharding(data, reader):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    batch_size = 2 * len(jax.devices())
    batches = list(streaming.DeviceIterator(
        streaming.stream(reader, batch_size, seed=4), sharding=sharding))
    assert len(batches) == len(data) // batch_size
    assert all(isinstance(b.images, jax.Array) and b.images.sharding == sharding
               for b in batches)
    assert_same_batches(host(batches), gathered(data, batch_size, seed=4, epochs=1))


@pytest.mark.parametrize("kind", ["single", "mesh", "pmap"])
def test_device_iterator_places_chunks_as_the_trainer_does(data, reader, kind):
    placement = Placement.create(kind)
    batch_size = 2 * placement.count
    stream = streaming.stream(reader, batch_size, seed=8, steps_per_call=3)
    placed = list(streaming.DeviceIterator(stream, placement=placement))
    expected = host(streaming.stream(reader, batch_size, seed=8, steps_per_call=3))
    assert len(placed) == len(expected)
    for chunk, want in zip(placed, expected):
        want = placement.split_rows(want)  # the layout HostSource hands the compiled step
        for x, y in zip(chunk, want):
            assert x.sharding == y.sharding
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(ValueError, match="not both"):
        streaming.DeviceIterator(stream, placement=placement, sharding=placement.replicated
                                 if kind == "mesh" else object())


# --- record files ----------------------------------------------------------------------------

@pytest.mark.parametrize("num_shards", [1, 3])
def test_records_round_trip(data, tmp_path, num_shards):
    paths = streaming.write_records(tmp_path / "ds", data, num_shards=num_shards,
                                    batch_size=64)
    assert paths == streaming.record_paths(tmp_path / "ds", num_shards)
    records = streaming.RecordReader(list(reversed(paths)))  # any file order
    assert (len(records), records.image_shape, records.num_classes) == (203, (6, 5, 3), 7)
    rows = np.random.default_rng(0).permutation(203)[:77]
    images, labels = records.read(rows)
    np.testing.assert_array_equal(images, data.images[rows])
    np.testing.assert_array_equal(labels, data.labels[rows])
    assert labels.dtype == np.int32
    glob_reader = streaming.RecordReader(str(tmp_path / "ds-*-of-*.array_record"))
    assert glob_reader.paths == paths


def test_truncated_record_file_names_the_file(record_files, tmp_path):
    damaged = [tmp_path / p.name for p in record_files]
    for src, dst in zip(record_files, damaged):
        dst.write_bytes(src.read_bytes())
    size = damaged[1].stat().st_size
    with open(damaged[1], "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(streaming.RecordFileError, match=damaged[1].name):
        streaming.RecordReader(damaged)
    os.remove(damaged[1])
    with pytest.raises(streaming.RecordFileError, match="file not found"):
        streaming.RecordReader(damaged)
    with pytest.raises(streaming.RecordFileError, match=r"missing \[1\]"):
        streaming.RecordReader([damaged[0], damaged[2]])


@pytest.mark.parametrize("worker_count", [0, 2])
def test_corrupt_record_names_the_file_and_never_gives_a_short_epoch(data, record_files,
                                                                     tmp_path, worker_count):
    damaged = [tmp_path / p.name for p in record_files]
    for src, dst in zip(record_files, damaged):
        dst.write_bytes(src.read_bytes())
    # flip bytes of one image in shard 2 (records are uncompressed: its bytes are in the file)
    raw = bytearray(damaged[2].read_bytes())
    at = raw.find(data.images[150].tobytes())
    assert at > 0
    raw[at:at + 8] = bytes(b ^ 0xFF for b in raw[at:at + 8])
    damaged[2].write_bytes(bytes(raw))
    records = streaming.RecordReader(damaged)  # headers are intact
    batches = streaming.stream(records, 16, shuffle=False, drop_remainder=False,
                               options=streaming.StreamOptions(worker_count=worker_count))
    with pytest.raises(streaming.RecordFileError, match=f"{damaged[2].name}: corrupt record"):
        for _ in batches:
            pass
    batches.close()


def test_files_that_are_not_raw_records_are_refused(tmp_path, data):
    from array_record.python.array_record_module import ArrayRecordWriter

    foreign = tmp_path / "foreign.array_record"
    writer = ArrayRecordWriter(str(foreign), "group_size:1")
    writer.write(b"\x89PNG...")
    writer.close()
    with pytest.raises(streaming.RecordFileError, match="foreign.array_record: no .* header"):
        streaming.RecordReader(foreign)
    other = streaming.write_records(tmp_path / "other", synthetic_dataset(20, (4, 4, 1)))
    mine = streaming.write_records(tmp_path / "mine", data)
    with pytest.raises(streaming.RecordFileError, match="image_shape"):
        streaming.RecordReader(mine + other)
    with pytest.raises(streaming.RecordFileError, match="no files match"):
        streaming.RecordReader(str(tmp_path / "nothing-*"))


def test_reader_errors_name_the_bad_input(reader, record_files):
    with pytest.raises(ValueError, match="row 203 is outside"):
        streaming.RecordReader(record_files).read(np.array([0, 203]))
    with pytest.raises(ValueError, match="num_epochs"):
        streaming.stream(reader, 16, num_epochs=0)
    with pytest.raises(ValueError, match="steps_per_call"):
        streaming.stream(reader, 16, steps_per_call=0)


# --- tfds sources and image files ------------------------------------------------------------

def test_tfds_data_source_streams_and_converts_to_raw_records(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        source = tfds.data_source("mnist", split="train")
        # tfds' mock gives the data source a `__getitems__` that cannot be called (it is an
        # unbound partial); the real one reads the keys in one batched call
        source.data_source.__getitems__ = lambda keys: [source.data_source[k] for k in keys]
        tfds_source = RecordSource(source, "image", "label", "mnist", "train", 10, (28, 28, 1))
        batches = host(streaming.stream(tfds_source, 8, seed=1))
        assert len(batches) == 3
        first = epoch_order(1, 0, 24)[:8]
        for i, row in enumerate(first):
            np.testing.assert_array_equal(batches[0][0][i], source[int(row)]["image"])
        rows = np.array([5, 0, 23, 5])
        images, labels = tfds_source.read(rows)
        for i, row in enumerate(rows):
            np.testing.assert_array_equal(images[i], source[int(row)]["image"])
            assert labels[i] == source[int(row)]["label"]
        paths = streaming.write_records(tmp_path / "mnist", tfds_source, batch_size=10)
        every = np.arange(24)
        expected = tfds_source.read(every)
    records = streaming.RecordReader(paths)
    for got, want in zip(records.read(every), expected):
        np.testing.assert_array_equal(got, want)


def test_tfds_records_are_written_once_in_load_datasets_order(tmp_path, monkeypatch):
    # (tfds' mock data has no split metadata: the examples are counted before writing)
    tfds = pytest.importorskip("tensorflow_datasets")
    from jaxscale.data import datasets

    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(tmp_path))
    with tfds.testing.mock_data(num_examples=24):
        first = streaming.tfds_records("cifar10", "train")
        stamps = [p.stat().st_mtime_ns for p in first.paths]
        again = streaming.tfds_records("cifar10", "train")
        expected = load_dataset("cifar10", "train", source="tfds")
    assert again.paths == first.paths and [p.stat().st_mtime_ns for p in again.paths] == stamps
    assert (len(again), again.image_shape, again.num_classes) == (24, (32, 32, 3), 10)
    assert (again.name, again.split) == ("cifar10", "train")
    images, labels = again.read(np.arange(24))
    np.testing.assert_array_equal(images, expected.images)
    np.testing.assert_array_equal(labels, expected.labels)
    with open(again.paths[0], "r+b") as handle:  # damaged in the cache: named, with the fix
        handle.truncate(again.paths[0].stat().st_size - 100)
    with tfds.testing.mock_data(num_examples=24):
        with pytest.raises(streaming.RecordFileError,
                           match=f"{again.paths[0].name}.*delete .* written again"):
            streaming.tfds_records("cifar10", "train")


def test_image_files_stream_through_the_one_image_file_reader(tmp_path):
    # streaming has no image reader of its own: flow_from_directory's plugs in
    from PIL import Image

    from jaxscale.data.image_files import ImageFileReader

    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(12, 10), (8, 8), (20, 16), (8, 8), (9, 7)]):  # (height, width)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    files = ImageFileReader(paths, [2, 0, 1, 0, 1], target_size=(8, 8), workers=1)
    assert not hasattr(streaming, "ImageFileReader")
    got = host(streaming.stream(files, 2, seed=3, drop_remainder=False))
    rows, _ = epoch_batches(epoch_order(3, 0, 5), 2)
    for batch, step_rows in zip(got, rows):
        images, labels = files.read(step_rows)
        np.testing.assert_array_equal(batch[0], images)
        np.testing.assert_array_equal(batch[1], labels)


# --- statistics ------------------------------------------------------------------------------

def float64_channel_stats(images):
    x = np.asarray(images, np.float64)
    return x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))


def stats_tolerance(image_shape):
    # Each image's mean and M2 are float32 sums of its H*W values (error <= (H*W - 1) u of
    # the sum of non-negative values); merging images and batches adds a few roundings more.
    values = image_shape[0] * image_shape[1]
    return (values + 4) * U32


def test_stream_statistics_equal_the_arrays_statistics(data, reader):
    mean64, var64 = float64_channel_stats(data.images)
    rtol = stats_tolerance(data.image_shape)
    # 203 = 7 * 29: batches of 29 have no shorter tail (one compilation of the stats step)
    streamed = streaming.reader_stats(reader, batch_size=29, progress=True)
    whole = statistics.compute_stats(data.images)
    for stats in (streamed, whole):
        assert int(stats.count) == len(data)
        np.testing.assert_allclose(stats.mean, mean64, rtol=rtol)
        np.testing.assert_allclose(stats.variance, var64, rtol=2 * rtol)
    config = scaling.scaling_config("standardize")
    fitted = scaling.fit_scaling(config, streaming.image_batches(reader, 29))
    np.testing.assert_allclose(fitted.mean, mean64, rtol=rtol)
    np.testing.assert_allclose(fitted.std ** 2, var64, rtol=2 * rtol)
    # the multi-host fit takes the stream as it is (each host its part, merged exactly)
    from jaxscale.training.distributed import global_scaling_params
    hosts = global_scaling_params(config, streaming.image_batches(reader, 29))
    np.testing.assert_array_equal(hosts.mean, fitted.mean)
    np.testing.assert_array_equal(hosts.std, fitted.std)


def test_per_host_statistics_merge_into_the_whole(data, reader):
    # 3 hosts, global batches of 21: 9 full ones and a last one with 14 real rows, which
    # hosts 0 and 1 read 7 each and host 2 not at all (every local batch has 7 images)
    process_count, batch_size = 3, 21
    parts = [list(streaming.image_batches(reader, batch_size, process_index=p,
                                          process_count=process_count))
             for p in range(process_count)]
    assert [len(p) for p in parts] == [10, 10, 9]
    # disjoint and complete: step by step, the hosts' images are the unshuffled rows
    steps = max(len(p) for p in parts)
    joined = np.concatenate([part[s] for s in range(steps) for part in parts if s < len(part)])
    np.testing.assert_array_equal(joined, data.images)
    per_host = [streaming.reader_stats(reader, batch_size=batch_size, process_index=p,
                                       process_count=process_count, merge_hosts=False)
                for p in range(process_count)]
    merged = per_host[0]
    for stats in per_host[1:]:
        merged = statistics.merge_stats(merged, stats)
    mean64, var64 = float64_channel_stats(data.images)
    rtol = stats_tolerance(data.image_shape)
    assert int(merged.count) == len(data)
    np.testing.assert_allclose(merged.mean, mean64, rtol=rtol)
    np.testing.assert_allclose(merged.variance, var64, rtol=2 * rtol)


def test_a_host_without_images_contributes_empty_statistics():
    tiny = ArrayReader(np.full((2, 3, 3, 1), 9, np.uint8), np.zeros(2, np.int32))
    stats = streaming.reader_stats(tiny, batch_size=4, process_index=3, process_count=4,
                                   merge_hosts=False)
    assert int(stats.count) == 0


# --- real MNIST ------------------------------------------------------------------------------

def test_real_mnist_raw_records_stream_the_arrays(mnist_dir, tmp_path):
    mnist = load_dataset("mnist", "train", data_dir=mnist_dir, source="raw")
    paths = streaming.write_records(tmp_path / "mnist-train", mnist, num_shards=2,
                                    batch_size=8192)
    records = streaming.RecordReader(paths)
    batches = streaming.stream(records, 256, seed=0, num_epochs=1)
    head = host(b for _, b in zip(range(20), batches))
    batches.close()
    assert_same_batches(head, gathered(mnist, 256, seed=0, epochs=1)[:20])


def test_real_tfds_source_pickles_for_worker_processes(mnist_dir):
    pytest.importorskip("tensorflow_datasets")
    import pickle

    source = load_data_source("mnist", "test", data_dir=mnist_dir)
    assert (len(source), source.image_shape, source.num_classes) == (10000, (28, 28, 1), 10)
    rows = np.array([0, 9999, 17])
    images, labels = source.read(rows)
    for i, row in enumerate(rows):
        record = source.source[int(row)]  # tfds' own decoding of the same record
        np.testing.assert_array_equal(images[i], record["image"])
        assert labels[i] == record["label"]
    assert images.any()
    again = pickle.loads(pickle.dumps(source))  # what a Grain worker process receives
    np.testing.assert_array_equal(again.read(rows)[0], images)


# --- the benchmark's harness (no timing asserted) --------------------------------------------

def test_benchmark_rows_on_tiny_input(tmp_path):
    from benchmarks import bench_streaming

    tiny = synthetic_dataset(600, (8, 8, 1), 10)
    rows = bench_streaming.record_rows(
        tiny.images, tiny.labels, "mnist/records", "synthetic", tmp_path, repeats=2,
        option_sets=(streaming.StreamOptions(read_threads=1),))
    assert [r["name"] for r in rows] == ["mnist/records (workers=0 threads=1)",
                                         "mnist/memmap (workers=0 threads=1)"]
    assert rows[0]["bar"] == 150_000
    for row in rows:
        assert row["steps"] == 2 and len(row["seconds_repeats"]) == 2
        assert row["images_per_s"] > 0 and row["images_per_cpu_s"] > 0
        assert row["peak_rss_mb"] > 0
    assert "mnist/memmap (workers=0 threads=1)" in bench_streaming.format_table(rows)
