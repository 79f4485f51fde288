"""Streaming input for data that does not fit on the device: record files and Grain.

Readers (`jaxscale.data.pipeline.Reader`: `len`, `image_shape`, `num_classes`,
`read(rows) -> (uint8[B, H, W, C], int32[B])` reading only those rows) beside the data path's
own `ArrayReader` (in-memory or `np.memmap` arrays), `datasets.RecordSource` (tfds' ArrayRecord
files, PNG decoded per read) and `image_files.ImageFileReader` (folders of image files, the
reader of `flow_from_directory`):

- `RecordReader`: ArrayRecord files of raw uint8 records written by `write_records` (decoded
  once, so an epoch costs a file read and a copy per image). Every file carries a header
  (shape, dtype, shard, counts) checked when it is opened, and Riegeli checks a hash of every
  chunk it reads, so a corrupt or truncated file raises `RecordFileError` naming the file,
  never a short epoch. `tfds_records(name, split)` writes a tfds split as such files once,
  into the dataset cache, and reuses them on later runs.

`stream(reader, batch_size, ...)` reads the batches of the data path's order with Grain
(`jaxscale.data.pipeline`: `ReadOrder`, `epoch_batches`, `chunk_spans` and `read_rows`, no
copy of them here): element i of its `MapDataset` is one batch (or one chunk of
`steps_per_call` batches) read with one `reader.read` call, so Python overhead is per batch,
not per image. Process p of P reads only its `process_rows` (rows[p*B/P:(p+1)*B/P]) of each
global batch, so a P-process run sees the 1-process run's global batches and every process
runs the same number of steps (nobody waits for a host whose shard ran out: the last partial
batch is padded and masked, or dropped). Grain's worker processes (`mp_prefetch`) take
elements i = w mod W and are interleaved back in order, so the worker count never changes the
batches; one iterator runs through all epochs, so workers start once.

The iterator's state is the position of the next batch, `ReadOrder.state(epoch, step)` (the
fields that define the order, and where in it); `set_state` resumes exactly there, whatever
the worker count, process count or chunk size. `StreamIterator` is a `grain.DatasetIterator`,
so Grain's orbax handler saves it in an orbax checkpoint; the trainer saves the same state in
its checkpoint's metadata.

`GrainSource` is `pipeline.HostSource` reading through one persistent stream per read order:
what `jaxscale.training.train` streams with when grain is installed. `DeviceIterator` puts
the elements of any iterator on the device(s) a few ahead, for users of `stream` directly.

Host memory holds only the elements in flight: about `(worker_count or 1) * (read_threads +
buffer_size)` host batches plus the device prefetch.
"""

from __future__ import annotations

import collections
import gc
import glob
import json
import math
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import jax
import numpy as np

from jaxscale.data.datasets import DatasetFileError, cache_dir, file_lock, tfds_images
from jaxscale.data.pipeline import (Batch, HostSource, Reader, ReadOrder, StreamOptions,
                                    as_reader, chunk_spans, default_read_batches,
                                    epoch_batches, read_rows)
from jaxscale.data.sharding import process_rows

try:
    import grain
except ImportError as err:  # grain needs Python >= 3.11
    raise ImportError("jaxscale.data.streaming needs grain (pip install 'jaxscale[streaming]', "
                      "Python >= 3.11)") from err

# The first release's names of the order and the options (they moved to the data path).
StreamConfig = ReadOrder
__all__ = ["DeviceIterator", "GrainSource", "RecordFileError", "RecordReader", "StreamConfig",
           "StreamIterator", "StreamOptions", "image_batches", "reader_stats",
           "record_paths", "stream", "tfds_records", "write_record_batches", "write_records"]


# --- readers ---------------------------------------------------------------------------------

class RecordFileError(DatasetFileError):
    """A record file is missing, truncated, corrupt, or not what its header says."""


def _check_rows(rows, num_examples: int, who: str) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"{who}.read needs int rows [B], got {rows.dtype}{list(rows.shape)}")
    if rows.size and (rows.min() < 0 or rows.max() >= num_examples):
        bad = rows[(rows < 0) | (rows >= num_examples)][0]
        raise ValueError(f"{who}.read: row {bad} is outside [0, {num_examples})")
    return rows


def _check_image_shape(image_shape) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape}")
    return shape


# Raw records: one record per example, the image's H*W*C bytes then its int32 label (little
# endian); record 0 of every file is a JSON header. Written uncompressed, one record per chunk
# (`group_size:1`): random access reads one chunk per example and decodes nothing.
RECORD_FORMAT = "jaxscale.raw_uint8"
RECORD_FORMAT_VERSION = 1
WRITER_OPTIONS = "group_size:1,uncompressed"
# Random access: no readahead (it would read past the record) and no reader thread pool (the
# pipeline's own threads and workers give the parallelism); on 2 cores both read MNIST's
# records about twice as fast as the defaults or `max_parallelism:1`.
READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
_LABEL = np.dtype("<i4")


def record_paths(prefix: str | Path, num_shards: int) -> list[Path]:
    """The files `write_records(prefix, ..., num_shards=n)` writes: prefix-00000-of-0000n..."""
    return [Path(f"{prefix}-{i:05d}-of-{num_shards:05d}.array_record")
            for i in range(num_shards)]


def write_records(prefix: str | Path, data, *, num_shards: int = 1, batch_size: int = 1024,
                  options: str = WRITER_OPTIONS, progress: bool = False) -> list[Path]:
    """Writes a dataset as ArrayRecord files of raw uint8 records (decoded once, read fast).

    Args:
      prefix: path prefix; files are `record_paths(prefix, num_shards)` (folders are made).
      data: a `Reader` (e.g. `datasets.load_data_source("mnist")`, whose PNG records are
        decoded once here), a `Dataset`, or a pair (images uint8[N, H, W, C], labels int[N]).
        Read `batch_size` rows at a time, so a reader's dataset never sits in memory.
      num_shards: files; shard i holds the contiguous rows [i*N//n, (i+1)*N//n).
      options: ArrayRecord writer options (keep `group_size:1` for random access).
      progress: show a progress bar.

    Returns:
      The paths written (see `write_record_batches`).
    """
    reader = as_reader(data)
    n = len(reader)

    def batches():
        for first in range(0, n, batch_size):
            yield reader.read(np.arange(first, min(first + batch_size, n)))

    return write_record_batches(prefix, batches(), num_examples=n,
                                image_shape=reader.image_shape,
                                num_classes=int(reader.num_classes), num_shards=num_shards,
                                options=options, progress=progress,
                                source=type(reader).__name__)


def write_record_batches(prefix: str | Path, batches: Iterable, *, num_examples: int,
                         image_shape: tuple[int, int, int], num_classes: int,
                         num_shards: int = 1, options: str = WRITER_OPTIONS,
                         progress: bool = False, source: str = "batches") -> list[Path]:
    """Writes (images uint8[b, H, W, C], labels int[b]) batches, in order, as raw records.

    Args:
      prefix: path prefix; files are `record_paths(prefix, num_shards)`.
      batches: the examples in order, any batch sizes; together exactly `num_examples`.
      num_examples, image_shape, num_classes: what the headers announce.
      num_shards: files; shard i holds the contiguous rows [i*N//n, (i+1)*N//n).
      options: ArrayRecord writer options.
      progress: show a progress bar.
      source: what the batches come from, for error messages.

    Returns:
      The paths written. Each file is written under a temporary name and renamed when
      complete, so a crash never leaves a plausible partial file.

    Raises:
      ValueError: a batch of another shape, or more or fewer examples than announced.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    n = int(num_examples)
    if num_shards < 1 or n < num_shards:
        raise ValueError(f"need 1 <= num_shards <= {n} examples, got num_shards={num_shards}")
    image_shape = _check_image_shape(image_shape)
    paths = record_paths(prefix, num_shards)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    bounds = [shard * n // num_shards for shard in range(num_shards + 1)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n, desc=f"write {paths[0].name.rsplit('-', 3)[0]}", unit="img")
    shard, writer, written = -1, None, 0

    def open_shard(index):
        header = dict(format=RECORD_FORMAT, version=RECORD_FORMAT_VERSION,
                      image_shape=list(image_shape), image_dtype="uint8",
                      label_dtype=_LABEL.str, num_classes=int(num_classes),
                      shard_index=index, num_shards=num_shards, first_row=bounds[index],
                      num_examples=bounds[index + 1] - bounds[index], total_examples=n)
        handle = ArrayRecordWriter(str(_partial(paths[index])), options)
        handle.write(json.dumps(header).encode())
        return handle

    try:
        for images, labels in batches:
            images = np.ascontiguousarray(images, np.uint8)
            count = images.shape[0] if images.ndim == 4 else -1
            if images.shape[1:] != image_shape or np.shape(labels) != (count,):
                raise ValueError(f"{source} gave images of shape {images.shape} and labels of "
                                 f"shape {np.shape(labels)}, expected [b, "
                                 f"{', '.join(map(str, image_shape))}] and [b]")
            if written + count > n:
                raise ValueError(f"{source} gave more than the {n} examples announced")
            label_bytes = np.asarray(labels).astype(_LABEL).reshape(-1, 1).view(np.uint8)
            records = np.concatenate([images.reshape(count, -1), label_bytes], axis=1)
            for record in records:
                while written >= bounds[shard + 1]:  # this record opens the next shard
                    if writer is not None:
                        writer.close()
                        os.replace(_partial(paths[shard]), paths[shard])
                    shard += 1
                    writer = open_shard(shard)
                writer.write(record.tobytes())
                written += 1
            if bar is not None:
                bar.update(count)
        if written != n:
            raise ValueError(f"{source} gave {written} examples, {n} were announced")
        writer.close()
        writer = None
        os.replace(_partial(paths[shard]), paths[shard])
    except BaseException:
        if writer is not None:
            writer.close()
        for path in paths:
            _partial(path).unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return paths


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _expand_paths(paths) -> list[Path]:
    if isinstance(paths, (str, Path)):
        text = str(paths)
        if any(c in text for c in "*?["):
            found = sorted(glob.glob(text))
            if not found:
                raise RecordFileError(f"{text}: no files match")
            return [Path(p) for p in found]
        return [Path(text)]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("RecordReader needs at least one file")
    return paths


def _open_record_file(path: Path, record_bytes: int = 0):
    from array_record.python.array_record_module import ArrayRecordReader

    if not path.is_file():
        raise RecordFileError(f"{path}: file not found")
    # A file buffer that holds one record's chunk, not Riegeli's default 1 MiB: every random
    # read fills the buffer.
    buffer = max(4096, 1 << (record_bytes + 1024).bit_length())
    try:
        reader = ArrayRecordReader(str(path), READER_OPTIONS, file_reader_buffer_size=buffer)
    except RuntimeError as err:
        raise RecordFileError(f"{path}: not a readable ArrayRecord file: {err}") from err
    if not reader.ok():
        # e.g. a truncated file: its footer and record index are gone
        raise RecordFileError(f"{path}: not a readable ArrayRecord file (truncated or "
                              "corrupt: its footer/index could not be read)")
    return reader


def _read_header(path: Path) -> dict:
    reader = _open_record_file(path)
    try:
        count = reader.num_records()
        if count < 1:
            raise RecordFileError(f"{path}: holds no records (not written by write_records?)")
        try:
            raw = reader.read([0])[0]
        except RuntimeError as err:
            raise RecordFileError(f"{path}: corrupt header record: {err}") from err
    finally:
        reader.close()
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("format") != RECORD_FORMAT:
        raise RecordFileError(f"{path}: no {RECORD_FORMAT} header: not a file written by "
                              "jaxscale.data.streaming.write_records")
    if header.get("version") != RECORD_FORMAT_VERSION:
        raise RecordFileError(f"{path}: record format version {header.get('version')}, this "
                              f"reader reads version {RECORD_FORMAT_VERSION}")
    if header["image_dtype"] != "uint8" or header["label_dtype"] != _LABEL.str:
        raise RecordFileError(f"{path}: images {header['image_dtype']} / labels "
                              f"{header['label_dtype']}; expected uint8 / {_LABEL.str}")
    if count != header["num_examples"] + 1:
        raise RecordFileError(
            f"{path}: header announces {header['num_examples']} examples, the file holds "
            f"{count - 1} ({'truncated' if count - 1 < header['num_examples'] else 'too long'})")
    return header


class RecordReader:
    """A `Reader` over the raw uint8 ArrayRecord files `write_records` writes.

    Args:
      paths: the files of one dataset, in any order: a path, a glob pattern
        ("data/mnist-train-*.array_record") or a sequence of paths. Every header is checked
        when the reader is made: same image shape and classes, every shard present once, each
        file holding the number of records its header announces.

    Reads hold no dataset in memory: one open ArrayRecord reader per file, opened lazily in
    each process (the reader pickles without them, for Grain's worker processes).

    Raises:
      RecordFileError: a file is missing, truncated, corrupt, not written by `write_records`,
        or inconsistent with the other files; the message names the file.
    """

    def __init__(self, paths):
        self.paths = _expand_paths(paths)
        headers = [_read_header(p) for p in self.paths]
        first = headers[0]
        for path, header in zip(self.paths, headers):
            for key in ("image_shape", "num_classes", "num_shards", "total_examples"):
                if header[key] != first[key]:
                    raise RecordFileError(
                        f"{path}: {key} {header[key]} differs from {first[key]} in "
                        f"{self.paths[0]} (files of different datasets?)")
        order = sorted(range(len(headers)), key=lambda i: headers[i]["shard_index"])
        shards = [headers[i]["shard_index"] for i in order]
        if shards != list(range(first["num_shards"])):
            missing = sorted(set(range(first["num_shards"])) - set(shards))
            raise RecordFileError(
                f"{self.paths[0]}: the dataset has {first['num_shards']} shards; got shards "
                f"{shards}" + (f", missing {missing}" if missing else " (duplicates)"))
        self.paths = [self.paths[i] for i in order]
        headers = [headers[i] for i in order]
        starts = np.cumsum([0] + [h["num_examples"] for h in headers])
        for path, header, start in zip(self.paths, headers, starts):
            if header["first_row"] != start:
                raise RecordFileError(f"{path}: starts at row {header['first_row']}, expected "
                                      f"{start} after the previous shards")
        if starts[-1] != first["total_examples"]:
            raise RecordFileError(f"{self.paths[0]}: shards hold {starts[-1]} examples, the "
                                  f"headers announce {first['total_examples']}")
        self.image_shape = tuple(first["image_shape"])
        self.num_classes = int(first["num_classes"])
        self._starts = starts.astype(np.int64)
        self._image_bytes = int(np.prod(self.image_shape))
        self._record_bytes = self._image_bytes + _LABEL.itemsize
        self._readers: list = [None] * len(self.paths)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_readers"] = [None] * len(self.paths)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _reader(self, index: int):
        reader = self._readers[index]
        if reader is None:
            with self._lock:
                reader = self._readers[index]
                if reader is None:
                    reader = self._readers[index] = _open_record_file(
                        self.paths[index], self._record_bytes)
        return reader

    def _read_file(self, index: int, positions: np.ndarray) -> np.ndarray:
        path = self.paths[index]
        try:
            records = self._reader(index).read(positions.tolist())
        except RuntimeError as err:  # Riegeli's chunk hash or framing check failed
            raise RecordFileError(f"{path}: corrupt record: {err}") from err
        data = b"".join(records)
        if len(data) != len(records) * self._record_bytes:
            bad = next(i for i, r in enumerate(records) if len(r) != self._record_bytes)
            raise RecordFileError(f"{path}: record {int(positions[bad])} has "
                                  f"{len(records[bad])} bytes, expected {self._record_bytes}")
        return np.frombuffer(data, np.uint8).reshape(len(records), self._record_bytes)

    def read(self, rows) -> tuple[np.ndarray, np.ndarray]:
        rows = _check_rows(rows, len(self), "RecordReader")
        if len(self.paths) == 1:
            raw = self._read_file(0, rows + 1)  # record 0 is the header
        else:
            files = np.searchsorted(self._starts, rows, side="right") - 1
            raw = np.empty((len(rows), self._record_bytes), np.uint8)
            for index in np.unique(files):
                where = np.flatnonzero(files == index)
                raw[where] = self._read_file(int(index), rows[where] - self._starts[index] + 1)
        images = raw[:, :self._image_bytes].reshape(len(rows), *self.image_shape)
        labels = raw[:, self._image_bytes:].copy().view(_LABEL).reshape(len(rows))
        return np.ascontiguousarray(images), labels.astype(np.int32)


# --- the Grain pipeline ----------------------------------------------------------------------

_UNBOUNDED = sys.maxsize // 2  # the length of a stream without a last epoch


class _Spans:
    """Grain data source of a stream from global step `start` to the end of `num_epochs`
    epochs (None: no end): element i is this process's part of the steps of span i, a chunk
    Batch [k, B/P, ...], the spans being `chunk_spans(S, steps_per_call=K)` of every epoch (of
    the first one from `start` on), each read with one `reader.read` call (`read_rows`)."""

    def __init__(self, reader: Reader, order: ReadOrder, *, start: int,
                 num_epochs: int | None, steps_per_call: int,
                 process_index: int, process_count: int):
        self.reader, self.order = reader, order
        self.num_epochs = num_epochs
        self.process_index, self.process_count = process_index, process_count
        steps = order.steps_per_epoch
        self.first_epoch, step = divmod(start, steps)
        self.first = chunk_spans(steps, start=step, steps_per_call=steps_per_call)
        self.whole = chunk_spans(steps, steps_per_call=steps_per_call)
        self._cache: dict = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        if self.num_epochs is None:
            return _UNBOUNDED
        if self.first_epoch >= self.num_epochs:
            return 0
        return len(self.first) + (self.num_epochs - self.first_epoch - 1) * len(self.whole)

    def span(self, index: int) -> tuple[int, int, int]:
        """(epoch, first step, end step) of element `index`."""
        if index < len(self.first):
            return (self.first_epoch, *self.first[index])
        extra, index = divmod(index - len(self.first), len(self.whole))
        return (self.first_epoch + 1 + extra, *self.whole[index])

    def epoch_rows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows int32[S, B], mask bool[S, B]) of `epoch`, computed once per epoch."""
        with self._lock:  # several threads reach a new epoch together; compute it once
            if epoch not in self._cache:
                self._cache = {e: v for e, v in self._cache.items() if e == epoch - 1}
                self._cache[epoch] = self.order.batches(epoch)
            return self._cache[epoch]

    def __getitem__(self, index) -> Batch:
        epoch, begin, end = self.span(int(index))
        rows, mask = self.epoch_rows(epoch)
        return read_rows(self.reader, rows[begin:end], mask[begin:end],
                         process_index=self.process_index, process_count=self.process_count)


def _worker_init(worker_index: int, worker_count: int) -> None:
    """Grain worker processes compute epoch orders with jax on the CPU only: they must not
    open the accelerator the training process holds."""
    del worker_index, worker_count
    jax.config.update("jax_platforms", "cpu")


def _parse_absl_flags() -> None:
    # Grain 0.2.18's mp_prefetch reads an absl flag, which raises in a program that never
    # parsed absl flags (google/grain#1355, fixed after 0.2.18): take the defaults then.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if (process_index is None) != (process_count is None):
        raise ValueError("give both process_index and process_count, or neither")
    if process_count is None:
        return jax.process_index(), jax.process_count()
    return int(process_index), int(process_count)




class StreamIterator(grain.DatasetIterator):
    """This process's part of the global batches of `num_epochs` epochs, read by Grain.

    Yields `Batch(images uint8[B/P, H, W, C], labels int32[B/P], mask bool[B/P])` NumPy
    batches (B the global batch size, P the process count; mask False on padding rows), or
    with `steps_per_call=K` chunks of k <= K steps `Batch(uint8[k, B/P, H, W, C], int32[k,
    B/P], bool[k, B/P])` that never cross the end of an epoch (what
    `jaxscale.data.pipeline.HostSource.epoch` yields, before placement).

    Single batches are read `read_batches` at a time (one `reader.read` call per chunk of
    consecutive batches, never across an epoch's end) and handed out one by one.

    `get_state()` / `set_state()` give and take the position of the next batch
    (`ReadOrder.state`); a resumed stream yields exactly the batches the uninterrupted one
    would have, whatever the worker count, process count or `steps_per_call` of either. Make
    it with `stream(...)`.
    """

    def __init__(self, reader: Reader, config: ReadOrder, *, num_epochs: int | None = 1,
                 steps_per_call: int | None = None, options: StreamOptions = StreamOptions(),
                 process_index: int = 0, process_count: int = 1):
        super().__init__()
        self._inner = None
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
        if steps_per_call is not None and steps_per_call < 1:
            raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
        if len(reader) != config.num_examples:
            raise ValueError(f"config.num_examples={config.num_examples} but the reader has "
                             f"{len(reader)} examples")
        if options.loader == "threads":
            raise ValueError("a Grain stream reads with Grain: StreamOptions(loader='threads') "
                             "is pipeline.HostSource's")
        process_rows(np.zeros((config.batch_size,)), process_index=process_index,
                     process_count=process_count)  # the batch splits over the processes
        self.reader, self.config, self.options = reader, config, options
        self.num_epochs, self.steps_per_call = num_epochs, steps_per_call
        self.process_index, self.process_count = process_index, process_count
        self._position = 0  # global step of the next batch, counted over all epochs
        self._pending: tuple[Batch, int] | None = None  # a read chunk and its next batch

    @property
    def steps_per_epoch(self) -> int:
        return self.config.steps_per_epoch

    @property
    def epoch(self) -> int:
        """Epoch of the next batch."""
        return self._position // self.steps_per_epoch

    @property
    def step(self) -> int:
        """Step (within its epoch) of the next batch."""
        return self._position % self.steps_per_epoch

    @property
    def total_steps(self) -> int | float:
        return math.inf if self.num_epochs is None else self.num_epochs * self.steps_per_epoch

    @property
    def read_batches(self) -> int:
        """Steps per `reader.read` call: `steps_per_call`, else `options.read_batches` (None:
        `default_read_batches` of this process's part of a batch)."""
        if self.steps_per_call is not None:
            return self.steps_per_call
        if self.options.read_batches is not None:
            return self.options.read_batches
        return default_read_batches(self.config.batch_size // self.process_count,
                                    math.prod(self.reader.image_shape))

    def _pipeline(self):
        # Grain: spans from the current position, read by threads, optionally in worker
        # processes; both keep the element order, so the batches never depend on them.
        o = self.options
        spans = _Spans(self.reader, self.config, start=self._position,
                       num_epochs=self.num_epochs, steps_per_call=self.read_batches,
                       process_index=self.process_index, process_count=self.process_count)
        dataset = grain.MapDataset.source(spans).to_iter_dataset(grain.ReadOptions(
            num_threads=o.read_threads,
            prefetch_buffer_size=max(o.buffer_size, o.read_threads)))
        if o.worker_count:
            _parse_absl_flags()
            dataset = dataset.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=o.worker_count,
                                             per_worker_buffer_size=o.buffer_size),
                worker_init_fn=_worker_init)
        return iter(dataset)

    def __next__(self) -> Batch:
        self._assert_not_closed()
        if self._position >= self.total_steps:
            self._close_inner()  # stops the workers and frees their shared memory now
            raise StopIteration
        if self._inner is None:
            self._inner = self._pipeline()
        if self.steps_per_call is not None:
            chunk = Batch(*next(self._inner))
            self._position += int(chunk.mask.shape[0])
            return chunk
        if self._pending is None:
            self._pending = (Batch(*next(self._inner)), 0)
        chunk, index = self._pending
        self._pending = (chunk, index + 1) if index + 1 < chunk.mask.shape[0] else None
        self._position += 1
        return Batch(*(x[index] for x in chunk))

    def take(self, steps: int) -> Batch:
        """The next `steps` single batches (a stream without `steps_per_call`) as one chunk
        Batch [steps, B/P, ...]."""
        if self.steps_per_call is not None:
            raise ValueError("take() stacks single batches: make the stream without "
                             "steps_per_call")
        parts = [next(self) for _ in range(steps)]
        if steps == 1:
            return Batch(*(x[None] for x in parts[0]))
        return Batch(*(np.stack(x) for x in zip(*parts)))

    def start_prefetch(self) -> None:
        """Starts reading (and the worker processes) before the first `next`."""
        if self._inner is None and self._position < self.total_steps:
            self._inner = self._pipeline()
            self._inner.start_prefetch()

    def get_state(self) -> dict[str, Any]:
        """JSON-ready position of the next batch, with the order's fields
        (`ReadOrder.state`)."""
        return self.config.state(self.epoch, self.step)

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes at `state["epoch"], state["step"]` (from `get_state`, possibly of a run
        with other worker, process or steps_per_call counts, or from a trainer checkpoint).

        Raises:
          ValueError: the state was saved for another dataset size, batch size, seed,
            shuffle or drop_remainder, or lies outside this stream's epochs.
        """
        epoch, step = self.config.position(state)
        position = epoch * self.steps_per_epoch + step
        if position > self.total_steps:
            raise ValueError(f"stream state epoch {epoch} step {step} is outside this "
                             f"stream's {self.num_epochs} epochs of {self.steps_per_epoch} "
                             "steps")
        self._close_inner()
        self._position = position

    def _close_inner(self) -> None:
        self._pending = None
        if self._inner is not None:
            self._inner.close()
            self._inner = None
            if self.options.worker_count:
                # The workers' semaphores are finalized by the garbage collector; run it now,
                # not at a random later moment that may fall inside tfds' lazy imports, which
                # refuse the finalizer's relative import (an unraisable ValueError).
                gc.collect()

    def close(self) -> None:
        """Stops the reading threads and worker processes."""
        self._close_inner()
        super().close()

    def __str__(self) -> str:
        return (f"StreamIterator({type(self.reader).__name__}, {self.config}, process "
                f"{self.process_index}/{self.process_count})")


def stream(reader: Reader, batch_size: int, *, seed: int = 0, shuffle: bool = True,
           drop_remainder: bool = True, num_epochs: int | None = 1,
           steps_per_call: int | None = None, options: StreamOptions = StreamOptions(),
           process_index: int | None = None, process_count: int | None = None
           ) -> StreamIterator:
    """The batches of `num_epochs` epochs of `reader` that this process reads, via Grain.

    Args:
      reader: a `jaxscale.data.pipeline.Reader` (`ArrayReader`, `RecordReader`,
        `datasets.RecordSource`, `image_files.ImageFileReader`, or your own with `__len__`,
        `image_shape`, `num_classes`, `read(rows)`).
      batch_size: the global batch size B, divisible by the process count.
      seed, shuffle, drop_remainder: the order (see `ReadOrder`).
      num_epochs: epochs the iterator runs through before StopIteration; None: no end.
      steps_per_call: None yields single batches; K yields chunks of up to K steps (one
        `reader.read` each), for a compiled step that runs K steps per dispatch.
      options: threads, worker processes and buffers (they never change the batches).
      process_index, process_count: default jax's; give both to read another process's
        part (tests, tools).

    Returns:
      A `StreamIterator`: process p gets rows [p*B/P, (p+1)*B/P) of every global batch, so
      the processes' parts, concatenated, are the 1-process batches.
    """
    index, count = _process(process_index, process_count)
    config = ReadOrder(len(reader), batch_size, seed, shuffle, drop_remainder)
    return StreamIterator(reader, config, num_epochs=num_epochs, steps_per_call=steps_per_call,
                          options=options, process_index=index, process_count=count)


class GrainSource(HostSource):
    """`pipeline.HostSource` reading through Grain: one persistent stream per read order.

    Args: as `HostSource` (`options`: worker processes, read threads, buffers).

    The first `epoch(...)` of a read order (seed, batch size, shuffle, drop_remainder) starts
    a `StreamIterator` there; it then runs on through all epochs (workers start once, and
    read into the next epoch while this one trains). A request for another position (a
    resumed run, an epoch cut short by `max_steps`) moves it with `set_state`. Unshuffled
    epochs are all alike, so an evaluation pass continues the stream instead of restarting
    it. The chunks are the `chunk_spans` of every call, stacked from single batches, so they
    equal `HostSource`'s. Call `close()` to stop the threads and workers.
    """

    loader = "grain"

    def __init__(self, reader, *, placement=None, prefetch: int = 2,
                 options: StreamOptions | None = None):
        super().__init__(reader, placement=placement, prefetch=prefetch,
                         options=options or StreamOptions(loader="grain"))
        self._streams: dict[ReadOrder, StreamIterator] = {}
        self._lock = threading.Lock()
        self._generation = 0

    def stream_for(self, order: ReadOrder) -> StreamIterator:
        """The persistent stream of `order` (made on first use)."""
        if order not in self._streams:
            self._streams[order] = StreamIterator(
                self.reader, order, num_epochs=None, options=self.options,
                process_index=jax.process_index(), process_count=jax.process_count())
        return self._streams[order]

    def _span_reader(self, order: ReadOrder, epoch: int, spans: list[tuple[int, int]]):
        with self._lock:
            # a newer epoch() supersedes an older one still reading ahead: it stops pulling
            self._generation += 1
            generation = self._generation
            stream = self.stream_for(order)
            if spans:
                first = spans[0][0]
                if stream.step != first or (order.shuffle and stream.epoch != epoch):
                    stream.set_state(order.state(epoch, first))

        def read(span):
            with self._lock:
                if generation != self._generation:
                    raise RuntimeError("this epoch() was superseded by a newer one of the "
                                       "same source")
                return stream.take(span[1] - span[0])

        return read, 1  # one thread: the spans come out of the stream in order

    def close(self) -> None:
        """Stops every stream's threads and worker processes."""
        with self._lock:
            self._generation += 1
            for stream in self._streams.values():
                stream.close()
            self._streams.clear()


# --- tfds datasets as raw records in the cache -----------------------------------------------

RECORDS_DIR = "raw_records"
SHARD_BYTES = 1 << 30  # about 1 GiB of images per record file


def _split_folder(split: str) -> str:
    """A folder name for a tfds split: itself when it is a plain name, else a readable form
    plus a digest of the exact string ("train[:640]" and "train[640:]" differ)."""
    if re.fullmatch(r"[A-Za-z0-9_.-]+", split):
        return split
    import hashlib
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", split).strip("_") or "split"
    return f"{readable}-{hashlib.sha256(split.encode()).hexdigest()[:10]}"


def tfds_records(name: str, split: str = "train", *, data_dir: str | Path | None = None,
                 progress: bool = False) -> RecordReader:
    """A tfds split as raw uint8 record files, written once into the dataset cache.

    The first call prepares the dataset as `load_dataset` does (`datasets.tfds_builder`:
    offline from `data_dir`), decodes its images once (tfds' MNIST and CIFAR records hold
    PNG) and writes them, in `load_dataset`'s order, as `write_records` files under
    `cache_dir()/raw_records/NAME/VERSION/SPLIT/`; later calls (other processes too) reuse
    them. A file lock makes concurrent callers write once; the folder is written under a
    temporary name and renamed when complete.

    Returns:
      A `RecordReader` with `name` and `split` attributes (as a `Dataset` has).

    Raises:
      RecordFileError: a cached file is damaged (named, with how to rebuild it).
      ValueError, DatasetFileError: as `load_dataset`.
    """
    import tensorflow_datasets as tfds

    builder, image_key, label_key, image_shape = tfds_images(name, split, data_dir)
    info = builder.info
    num_classes = int(info.features[label_key].num_classes)
    root = cache_dir() / RECORDS_DIR
    folder = root / name / str(info.version) / _split_folder(split)
    with file_lock(root / f".{name}.lock"):
        if not folder.is_dir():
            def batches():
                for images, labels in tfds.as_numpy(builder.as_dataset(
                        split=split, batch_size=4096, as_supervised=True)):
                    yield images, labels

            try:
                count = int(info.splits[split].num_examples)
            except (KeyError, ValueError, TypeError):
                count = 0
            if count < 1:  # no split metadata (tfds' mock data): count them first
                count = sum(len(labels) for _, labels in batches())
            record_bytes = math.prod(image_shape) + _LABEL.itemsize
            shards = max(1, min(count, -(-count * record_bytes // SHARD_BYTES)))
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            write_record_batches(partial / f"{name}-{_split_folder(split)}", batches(),
                                 num_examples=count, image_shape=image_shape,
                                 num_classes=num_classes, num_shards=shards,
                                 progress=progress, source=f"tfds {name} {split!r}")
            os.replace(partial, folder)
    try:
        reader = RecordReader(sorted(folder.glob("*.array_record")))
    except RecordFileError as error:
        raise RecordFileError(f"{error}; the cached records of {name} {split!r} are damaged: "
                              f"delete {folder} and they are written again") from error
    reader.name, reader.split = name, split
    return reader


# --- onto the device -------------------------------------------------------------------------

class DeviceIterator(grain.DatasetIterator):
    """Host batches put on the device(s) `size` ahead of use.

    Args:
      batches: an iterator of host `Batch`es (a `StreamIterator`, or any iterator of
        pytrees).
      size: elements in flight to the device beyond the one yielded.
      placement: a `jaxscale.data.sharding.Placement` for chunks [k, B/P, ...]
        (`stream(..., steps_per_call=K)`): `placement.split_rows(chunk, process_local=True)`,
        the trainer's own placement of host chunks.
      sharding: for single batches [B/P, ...], e.g. `NamedSharding(mesh, PartitionSpec(
        "data"))` of the global batch; with several processes each contributes its rows
        (`jax.make_array_from_process_local_data`).
      Neither: the default device.

    `get_state()` is the state of `batches` after the last element *yielded* (elements in
    flight are not counted), so a checkpoint taken between steps resumes at the next step.
    """

    def __init__(self, batches: Iterator[Batch], *, size: int = 2, placement=None,
                 sharding: jax.sharding.Sharding | None = None):
        super().__init__()
        self.batches, self._queue = None, collections.deque()  # what close() needs
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if placement is not None and sharding is not None:
            raise ValueError("give a placement (chunks) or a sharding (batches), not both")
        self.batches, self.size = batches, size
        self.placement, self.sharding = placement, sharding
        self._done = False

    def _put(self, element):
        if self.placement is not None:
            return self.placement.split_rows(element, process_local=True)
        if self.sharding is None:
            return jax.device_put(element)
        if jax.process_count() > 1:  # each process holds its own rows of the global batch
            return jax.tree_util.tree_map(
                lambda x: jax.make_array_from_process_local_data(self.sharding, x), element)
        return jax.device_put(element, self.sharding)

    def _fill(self) -> None:
        while not self._done and len(self._queue) <= self.size:
            # the state *at* an element: resuming from it yields that element
            state = self.batches.get_state() if hasattr(self.batches, "get_state") else None
            try:
                host = next(self.batches)
            except StopIteration:
                self._done = True
                return
            self._queue.append((state, self._put(host)))

    def __next__(self):
        self._assert_not_closed()
        self._fill()
        if not self._queue:
            raise StopIteration
        _, element = self._queue.popleft()
        self._fill()  # the copies of the next elements start while this one is used
        return element

    def get_state(self) -> dict[str, Any]:
        if self._queue:
            return self._queue[0][0]
        return self.batches.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._queue.clear()
        self._done = False
        self.batches.set_state(state)

    def close(self) -> None:
        """Drops the elements in flight and closes `batches`."""
        self._queue.clear()
        if hasattr(self.batches, "close"):
            self.batches.close()
        super().close()


# --- dataset statistics from the stream ------------------------------------------------------

def image_batches(reader: Reader, batch_size: int | None = None, *,
                  process_index: int | None = None, process_count: int | None = None,
                  options: StreamOptions = StreamOptions(), progress: bool = False,
                  desc: str = "images") -> Iterator[np.ndarray]:
    """This process's images in one pass, unshuffled, for `compute_stats` / `fit_scaling`.

    Process p reads its slice of every (unshuffled, padded) global batch, padding dropped:
    the processes' images are disjoint and together every image once, so per-process
    statistics merge (`merge_stats`, `merge_stats_across_hosts`) into the whole dataset's;
    `distributed.global_scaling_params(config, image_batches(reader))` fits every host.

    Args:
      reader: a `Reader`.
      batch_size: global rows per step; default about 2M values per process step
        (`statistics.auto_batch_size`), rounded to a multiple of the process count.
      process_index, process_count: default jax's.
      options: threads and workers.
      progress: a tqdm bar over this process's images.

    Yields:
      uint8[b, H, W, C] batches (the last one shorter).
    """
    from jaxscale.statistics import auto_batch_size

    index, count = _process(process_index, process_count)
    if batch_size is None:
        batch_size = count * max(1, auto_batch_size(reader.image_shape))
    config = ReadOrder(len(reader), batch_size, shuffle=False, drop_remainder=False)
    batches = StreamIterator(reader, config, options=options, process_index=index,
                             process_count=count)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        local = process_rows(epoch_batches(np.arange(len(reader)), batch_size)[1],
                             process_index=index, process_count=count)
        bar = tqdm(total=int(local.sum()), desc=desc, unit="img")
    try:
        for batch in batches:
            images = batch.images if batch.mask.all() else batch.images[batch.mask]
            if bar is not None:
                bar.update(len(images))
            if len(images):
                yield images
    finally:
        batches.close()
        if bar is not None:
            bar.close()


def reader_stats(reader: Reader, *, scope: str = "channel", batch_size: int | None = None,
                 process_index: int | None = None, process_count: int | None = None,
                 options: StreamOptions = StreamOptions(), progress: bool = False,
                 merge_hosts: bool = True):
    """`compute_stats` of a reader's images in one streamed pass, merged across processes.

    Each process streams its part (`image_batches`); with `merge_hosts` the per-process
    statistics are merged with `merge_stats_across_hosts` (every process gets the global
    ones). A process with no images contributes the empty statistics.

    Returns:
      DatasetStats with statistic shape [C], [H, W, C] or [].
    """
    from jaxscale.statistics import compute_stats, empty_stats_for, merge_stats_across_hosts

    batches = image_batches(reader, batch_size, process_index=process_index,
                            process_count=process_count, options=options, progress=progress,
                            desc=f"stats ({scope})")
    first = next(batches, None)
    if first is None:
        stats = empty_stats_for(reader.image_shape, scope=scope)
    else:
        stats = compute_stats(_chain(first, batches), scope=scope)
    return merge_stats_across_hosts(stats) if merge_hosts else stats


def _chain(first, rest: Iterable) -> Iterator:
    yield first
    yield from rest
