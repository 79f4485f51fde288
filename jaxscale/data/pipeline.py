"""The one data path: epoch orders, batches, and the two sources every consumer reads.

An epoch is a permutation of the examples drawn from `(seed, epoch)` (`epoch_order`), cut into
batches of equal shape (`epoch_batches`: the last partial batch is padded, with its padding
rows masked, or dropped), so a compiled step never sees a new shape. Two sources serve those
batches, and for the same seed they serve the same ones:

- `ResidentSource`: the dataset on the device(s) as uint8, copied once. A step receives the
  *rows* of its batch and gathers them itself (`take_rows`) inside the compiled program, so
  there is no per-batch copy from the host; several steps go in one dispatch as a chunk
  [K, B] of rows (run under `lax.scan`).
- `HostSource`: a *reader* on the host (in-memory or memory-mapped arrays, record files,
  image folders: anything with `read(rows)`), for data that does not fit on the device. Each
  process reads only its rows of every global batch (`sharding.process_rows`), chunks of K
  batches are read ahead by background threads and copied to the device(s) before they are
  needed. `jaxscale.data.streaming.GrainSource` is the same source reading through one
  persistent Grain iterator (worker processes, read threads); the trainer takes it when grain
  is installed (`StreamOptions.loader`).

The order is defined here once: `epoch_order` -> `epoch_batches` -> `chunk_spans`, with
`ReadOrder` naming the numbers that fix it (and the resumable position in it, `ReadOrder.state`),
and `read_rows` reading one span's rows of this process. The Grain stream builds on them.

Both hand the trainer, the Keras facade and the benchmarks the same thing: `epoch(...)`
yields placed *chunks*, and `take(data, chunk_step)` (traceable) turns one step of a chunk
into a `Batch` inside the compiled step. So a consumer is written once for both:

    for chunk in source.epoch(seed, epoch, batch_size, steps_per_call=K):
        state = compiled(state, source.data, chunk)   # lax.scan over K: source.take(...)
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import itertools
from typing import Any, Iterator, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.data.sharding import Placement, process_rows


class Batch(NamedTuple):
    """One batch (a pytree).

    Attributes:
      images: uint8[B, H, W, C].
      labels: int32[B].
      mask: bool[B], False on the padding rows of a last partial batch (they repeat an
        example and must count nothing).
    """

    images: jax.Array
    labels: jax.Array
    mask: jax.Array


class Reader(Protocol):
    """Random access to a dataset on the host, reading only the rows asked for.

    Attributes:
      image_shape: (H, W, C) of every image.
      num_classes: number of labels.
    """

    image_shape: tuple[int, int, int]
    num_classes: int

    def __len__(self) -> int: ...

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8[B, H, W, C], labels int32[B]) of the examples at `rows` (int[B])."""
        ...


# ------------------------------------------------------------------------------ epoch order

@functools.partial(jax.jit, static_argnames=("num_examples",))
def _permutation(seed, epoch, *, num_examples: int):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)
    return jax.random.permutation(key, num_examples).astype(jnp.int32)


def epoch_order(seed: int, epoch: int, num_examples: int, *, shuffle: bool = True
                ) -> np.ndarray:
    """The order in which one epoch visits the examples.

    The same `(seed, epoch)` gives the same order on every host and backend (it is computed
    on the CPU device with `jax.random.permutation(fold_in(PRNGKey(seed), epoch), N)`), so
    every process of a job, and a resumed run, agree on it without communicating.

    Args:
      seed: the run seed (an int).
      epoch: the epoch number (a new order every epoch).
      num_examples: N >= 1.
      shuffle: False gives 0, 1, ..., N - 1.

    Returns:
      int32[N], a permutation of 0..N-1.
    """
    if num_examples < 1:
        raise ValueError(f"an epoch needs num_examples >= 1, got {num_examples}")
    if not shuffle:
        return np.arange(num_examples, dtype=np.int32)
    try:
        device = jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS without cpu: the default device draws the same bits
        device = jax.local_devices()[0]
    with jax.default_device(device):
        return np.asarray(_permutation(np.uint32(seed), np.uint32(epoch),
                                       num_examples=num_examples))


def steps_per_epoch(num_examples: int, batch_size: int, *, drop_remainder: bool) -> int:
    """Batches in one epoch: floor(N / B) when dropping the remainder, else ceil(N / B)."""
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def epoch_batches(order: np.ndarray, batch_size: int, *, drop_remainder: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Cuts an epoch order into batches of one shape.

    Args:
      order: int[N], e.g. `epoch_order(...)`.
      batch_size: B >= 1.
      drop_remainder: drop the last N mod B examples of the order; else pad the last batch
        with example `order[0]` and mask the padding.

    Returns:
      (rows int32[S, B], mask bool[S, B]), S = `steps_per_epoch(N, B, drop_remainder=...)`.
    """
    num_examples = int(order.shape[0])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if drop_remainder and num_examples < batch_size:
        raise ValueError(f"drop_remainder with {num_examples} examples < batch_size "
                         f"{batch_size} leaves no batch")
    steps = steps_per_epoch(num_examples, batch_size, drop_remainder=drop_remainder)
    padded = steps * batch_size
    if drop_remainder:
        rows = order[:padded]
    else:
        rows = np.concatenate([order, np.full(padded - num_examples, order[0], order.dtype)])
    mask = np.arange(padded) < num_examples
    return (rows.astype(np.int32).reshape(steps, batch_size), mask.reshape(steps, batch_size))


def take_rows(images: jax.Array, labels: jax.Array, rows: jax.Array,
              mask: jax.Array | None = None) -> Batch:
    """The batch at `rows` of a device-resident dataset; traceable, for use inside a step.

    Args:
      images: uint8[N, H, W, C]; labels: int32[N]; rows: int32[B]; mask: bool[B] or None (all
        valid).

    Returns:
      Batch(images uint8[B, H, W, C], labels int32[B], mask bool[B]).
    """
    if mask is None:
        mask = jnp.ones(rows.shape, bool)
    return Batch(jnp.take(images, rows, axis=0), jnp.take(labels, rows, axis=0), mask)


def chunk_spans(steps: int, *, start: int = 0, stop: int | None = None,
                steps_per_call: int = 1, breaks: tuple[int, ...] = ()
                ) -> list[tuple[int, int]]:
    """(first, last) steps of the chunks that cover steps [start, stop) of an epoch.

    Chunks hold at most `steps_per_call` steps and also end at every step in `breaks` (e.g.
    where a checkpoint is due), so a consumer can act between two chunks there.
    """
    stop = steps if stop is None else stop
    if steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
    if not 0 <= start <= stop <= steps:
        raise ValueError(f"steps [{start}, {stop}) are outside the epoch's {steps} steps")
    cuts = sorted({b for b in breaks if start < b < stop})
    spans, first = [], start
    for end in [*cuts, stop]:
        while first < end:
            last = min(first + steps_per_call, end)
            spans.append((first, last))
            first = last
    return spans


@dataclasses.dataclass(frozen=True)
class ReadOrder:
    """The numbers that fix the batches of every epoch (the same on every process).

    Attributes:
      num_examples: N.
      batch_size: the *global* batch size B (all processes together).
      seed: epoch e visits `epoch_order(seed, e, N)`.
      shuffle: False reads rows 0..N-1 in order, every epoch.
      drop_remainder: drop the last N mod B examples of each epoch's order; else the last
        batch is padded (`epoch_batches`) and its padding rows are masked.
    """

    num_examples: int
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    drop_remainder: bool = True

    def __post_init__(self):
        if self.num_examples < 1 or self.batch_size < 1:
            raise ValueError(f"need num_examples >= 1 and batch_size >= 1, got "
                             f"{self.num_examples}, {self.batch_size}")
        if self.drop_remainder and self.num_examples < self.batch_size:
            raise ValueError(f"drop_remainder with {self.num_examples} examples < batch_size "
                             f"{self.batch_size} leaves no batch")

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.num_examples, self.batch_size,
                               drop_remainder=self.drop_remainder)

    def batches(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows int32[S, B], mask bool[S, B]) of `epoch` (`epoch_batches` of its order)."""
        return epoch_batches(epoch_order(self.seed, epoch, self.num_examples,
                                         shuffle=self.shuffle), self.batch_size,
                             drop_remainder=self.drop_remainder)

    def state(self, epoch: int, step: int) -> dict[str, Any]:
        """The JSON-ready position "next is step `step` of epoch `epoch`", with the fields
        that define the order: what a checkpoint saves and `position` checks."""
        return dict(epoch=int(epoch), step=int(step), **dataclasses.asdict(self))

    def position(self, state: dict[str, Any]) -> tuple[int, int]:
        """(epoch, step) of a `state` saved for this order.

        Raises:
          ValueError: the state belongs to another order (dataset size, batch size, seed,
            shuffle or drop_remainder, named), or its step lies outside an epoch.
        """
        for key, value in dataclasses.asdict(self).items():
            if state.get(key) != value:
                raise ValueError(f"the data iterator state was saved with {key}="
                                 f"{state.get(key)!r}, this run reads with {key}={value!r}")
        epoch, step = int(state["epoch"]), int(state["step"])
        if epoch < 0 or not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"data iterator state epoch {epoch} step {step} is outside an "
                             f"epoch of {self.steps_per_epoch} steps")
        return epoch, step


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How a `HostSource` reads (never *which* batches: every choice gives the same ones).

    Attributes:
      loader: "grain": one persistent Grain iterator over all epochs
        (`jaxscale.data.streaming.GrainSource`, needs grain, Python >= 3.11); "threads":
        the data path's own read-ahead threads (`HostSource`); "auto": grain when it is
        importable, else threads.
      worker_count: Grain worker processes (`mp_prefetch`); 0 reads in this process. Workers
        pay off only when reading holds the GIL (tfds' PNG records, Python decoders): each
        is an interpreter with jax of its own (~300 MB), gets a pickled copy of the reader
        (an `ArrayReader` over in-memory arrays copies them: map a file instead) and
        returns batches through shared memory. ArrayRecord reads and Pillow decodes release
        the GIL, so threads serve them better. Needs the grain loader.
      read_threads: threads per process, each reading whole batches (Grain `ReadOptions`;
        with the threads loader, the read-ahead threads).
      buffer_size: reads each process keeps ready ahead of use (Grain).
      read_batches: consecutive batches of a Grain stream fetched by one `reader.read` call,
        then handed out one at a time (never across an epoch's end). A random-access reader
        pays a fixed cost per call, ArrayRecord's many times its cost per record, and a
        batch spread over several shard files is one call per file: small reads cap the
        rate (docs/streaming.md). None: `default_read_batches` (about READ_EXAMPLES
        examples, at most READ_BYTES of images). A stream with `steps_per_call` reads its
        chunks whole instead.
    """

    loader: str = "auto"
    worker_count: int = 0
    read_threads: int = 2
    buffer_size: int = 2
    read_batches: int | None = None

    def __post_init__(self):
        if self.loader not in LOADERS:
            raise ValueError(f"loader must be one of {LOADERS}, got {self.loader!r}")
        if (self.worker_count < 0 or self.read_threads < 0 or self.buffer_size < 1
                or (self.read_batches is not None and self.read_batches < 1)):
            raise ValueError(f"need worker_count >= 0, read_threads >= 0, buffer_size >= 1, "
                             f"read_batches >= 1 or None; got {self}")
        if self.loader == "threads" and self.worker_count:
            raise ValueError("worker processes need the grain loader, got loader='threads' "
                             f"with worker_count={self.worker_count}")


LOADERS = ("auto", "grain", "threads")
READ_EXAMPLES = 4096   # examples per read call that `default_read_batches` aims at
READ_BYTES = 16 << 20  # ... without holding more than this many image bytes per read


def default_read_batches(batch_size: int, image_bytes: int) -> int:
    """Batches per read call for `batch_size` examples of `image_bytes` bytes per read
    (this process's part of a batch): about READ_EXAMPLES examples, at most READ_BYTES of
    images, at least one batch. MNIST at 256 per batch: 16; 224x224x3 at 256: 1."""
    by_count = -(-READ_EXAMPLES // max(1, batch_size))
    by_bytes = READ_BYTES // max(1, batch_size * image_bytes)
    return max(1, min(by_count, by_bytes))


def read_rows(reader: "Reader", rows: np.ndarray, mask: np.ndarray, *,
              process_index: int | None = None, process_count: int | None = None) -> Batch:
    """This process's rows of k global batches, read from `reader` in one call.

    Args:
      reader: a `Reader`.
      rows, mask: int[k, B], bool[k, B]: k steps of `ReadOrder.batches`.
      process_index, process_count: default jax's (`sharding.process_rows`).

    Returns:
      Batch of host arrays uint8[k, B/P, H, W, C], int32[k, B/P], bool[k, B/P].

    Raises:
      ValueError: the reader returned images of another dtype or shape (named).
    """
    process = dict(process_index=process_index, process_count=process_count)
    local_rows = process_rows(rows, **process)
    images, labels = reader.read(local_rows.reshape(-1))
    images = np.asarray(images)
    shape = tuple(reader.image_shape)
    if images.dtype != np.uint8 or images.shape != (local_rows.size, *shape):
        raise ValueError(f"{type(reader).__name__}.read returned images "
                         f"{images.dtype}{list(images.shape)}; expected "
                         f"uint8{[local_rows.size, *shape]}")
    return Batch(images.reshape(*local_rows.shape, *shape),
                 np.asarray(labels).astype(np.int32).reshape(local_rows.shape),
                 process_rows(mask, **process))


def _checked_arrays(images, labels) -> tuple[Any, Any]:
    if np.ndim(images) != 4 or np.shape(labels) != (np.shape(images)[0],):
        raise ValueError(f"expected images [N, H, W, C] and labels [N], got shapes "
                         f"{np.shape(images)} and {np.shape(labels)}")
    if np.shape(images)[0] < 1:
        raise ValueError("the dataset is empty")
    dtype = getattr(images, "dtype", None)
    if dtype != np.uint8:
        raise ValueError(f"images must be uint8 (scale them inside the step), got {dtype}")
    return images, labels


def dataset_arrays(dataset) -> tuple[Any, Any]:
    """(images, labels) of a `Dataset`, a `(images, labels)` pair or anything with `.images`
    and `.labels`, checked: uint8[N, H, W, C] and [N]."""
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        return _checked_arrays(dataset.images, dataset.labels)
    images, labels = dataset
    return _checked_arrays(images, labels)


# ---------------------------------------------------------------------------------- sources

class ResidentSource:
    """A dataset copied once to the device(s) as uint8; steps gather their own rows.

    Args:
      dataset: a `Dataset`, or (images uint8[N, H, W, C], labels int[N]) host or device
        arrays; every process of a multi-process job passes the whole dataset.
      placement: where it goes (replicated on every device); default: the first local device.

    Attributes:
      data: (images, labels) on the device(s): pass it to the compiled step with the chunks.
      num_examples, image_shape: N and (H, W, C).
      placement: the Placement.
    """

    kind = "resident"

    def __init__(self, dataset, *, placement: Placement | None = None):
        images, labels = dataset_arrays(dataset)
        self.placement = placement or Placement.create("single")
        if isinstance(labels, jax.Array):
            labels = labels.astype(jnp.int32)
        else:
            labels = np.asarray(labels).astype(np.int32)
        self.num_examples = int(images.shape[0])
        self.image_shape = tuple(int(d) for d in images.shape[1:])
        self.data = self.placement.replicate((images, labels))

    @staticmethod
    def take(data, chunk_step) -> Batch:
        """The Batch of one step of a chunk (traceable): `chunk_step` is (rows int32[B],
        mask bool[B]) and `data` the resident (images, labels)."""
        rows, mask = chunk_step
        return take_rows(data[0], data[1], rows, mask)

    def epoch(self, seed: int, epoch: int, batch_size: int, *, shuffle: bool = True,
              drop_remainder: bool = False, start: int = 0, stop: int | None = None,
              steps_per_call: int = 1, breaks: tuple[int, ...] = ()
              ) -> Iterator[tuple[jax.Array, jax.Array]]:
        """The chunks of steps [start, stop) of one epoch (see `chunk_spans`):
        (rows int32[k, B], mask bool[k, B]) placed with the batch axis split over the
        devices."""
        self.placement.check_batch(batch_size)
        rows, mask = ReadOrder(self.num_examples, batch_size, seed, shuffle,
                               drop_remainder).batches(epoch)
        for first, last in chunk_spans(rows.shape[0], start=start, stop=stop,
                                       steps_per_call=steps_per_call, breaks=breaks):
            yield self.placement.split_rows((rows[first:last], mask[first:last]))

    def batches(self, seed: int, epoch: int, batch_size: int, *, shuffle: bool = True,
                drop_remainder: bool = False) -> Iterator[Batch]:
        """The batches of one epoch, each gathered on the device by one compiled call
        ("single" placement). For speed gather inside your own step instead (`take`)."""
        if self.placement.kind != "single":
            raise ValueError("batches() serves a single-device source; under a mesh or pmap "
                             "gather inside the step with `take`")
        for rows, mask in self.epoch(seed, epoch, batch_size, shuffle=shuffle,
                                     drop_remainder=drop_remainder):
            yield _take_one(self.data, rows[0], mask[0])

    def close(self) -> None:
        """Nothing runs in the background (the interface of `HostSource.close`)."""


@jax.jit
def _take_one(data, rows, mask) -> Batch:
    return take_rows(data[0], data[1], rows, mask)


class ArrayReader:
    """A `Reader` over host arrays that support integer-array indexing (NumPy, np.memmap).

    Args:
      images: uint8[N, H, W, C]; labels: int[N].
      num_classes: None: max(labels) + 1.
    """

    def __init__(self, images, labels, num_classes: int | None = None):
        self.images, labels = _checked_arrays(images, labels)
        self.labels = np.asarray(labels).astype(np.int32)
        self.image_shape = tuple(int(d) for d in np.shape(images)[1:])
        self.num_classes = int(num_classes or int(self.labels.max()) + 1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows)
        return np.asarray(self.images[rows]), self.labels[rows]


def as_reader(data) -> Reader:
    """`data` as a Reader: a Reader stays itself; a Dataset or (images, labels) pair becomes an
    `ArrayReader`."""
    if hasattr(data, "read") and hasattr(data, "image_shape"):
        return data
    images, labels = dataset_arrays(data)
    return ArrayReader(images, labels, getattr(data, "num_classes", None))


class HostSource:
    """Batches read on the host from a `Reader` and copied to the device(s) ahead of use.

    Args:
      reader: anything with `len()`, `image_shape` and `read(rows)` (see `Reader`); a Dataset
        or an (images, labels) pair is wrapped in an `ArrayReader`.
      placement: where batches go; default: the first local device.
      prefetch: chunks read and in flight to the device ahead of the one being used.
      options: `StreamOptions`; this class reads with `read_threads` background threads
        (at least one). `jaxscale.data.streaming.GrainSource` reads through Grain instead.

    For the same seed and epoch the batches equal `ResidentSource`'s. Each process reads only
    its `process_rows` of every global batch; the global batch is assembled on the devices.
    """

    kind = "host"
    loader = "threads"
    data = ()

    def __init__(self, reader, *, placement: Placement | None = None, prefetch: int = 2,
                 options: StreamOptions | None = None):
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.reader = as_reader(reader)
        self.placement = placement or Placement.create("single")
        self.prefetch = prefetch
        self.options = options or StreamOptions(loader=self.loader)
        self.num_examples = len(self.reader)
        self.image_shape = tuple(self.reader.image_shape)

    @staticmethod
    def take(data, chunk_step) -> Batch:
        """One step of a chunk is already the Batch (traceable)."""
        del data
        return chunk_step

    def _span_reader(self, order: ReadOrder, epoch: int, spans: list[tuple[int, int]]):
        """`read(span) -> Batch` of this process's host arrays [k, B/P, ...] for the spans
        (first, last) of `epoch`, which are read in this order; and the number of threads
        that may call it at once."""
        del spans
        rows, mask = order.batches(epoch)
        return (lambda span: read_rows(self.reader, rows[span[0]:span[1]],
                                       mask[span[0]:span[1]]),
                max(1, self.options.read_threads))

    def _spans(self, seed, epoch, batch_size, *, shuffle, drop_remainder, start, stop,
               steps_per_call, breaks):
        order = ReadOrder(self.num_examples, batch_size, seed, shuffle, drop_remainder)
        spans = chunk_spans(order.steps_per_epoch, start=start, stop=stop,
                            steps_per_call=steps_per_call, breaks=breaks)
        return spans, self._span_reader(order, epoch, spans)

    def epoch(self, seed: int, epoch: int, batch_size: int, *, shuffle: bool = True,
              drop_remainder: bool = False, start: int = 0, stop: int | None = None,
              steps_per_call: int = 1, breaks: tuple[int, ...] = ()) -> Iterator[Batch]:
        """The chunks of steps [start, stop) of one epoch (see `chunk_spans`): Batch with
        leaves [k, B, ...] placed with the batch axis split over the devices."""
        self.placement.check_batch(batch_size)
        spans, (read, threads) = self._spans(
            seed, epoch, batch_size, shuffle=shuffle, drop_remainder=drop_remainder,
            start=start, stop=stop, steps_per_call=steps_per_call, breaks=breaks)
        yield from read_ahead(
            lambda span: self.placement.split_rows(read(span), process_local=True), spans,
            self.prefetch, threads)

    def batches(self, seed: int, epoch: int, batch_size: int, *, shuffle: bool = True,
                drop_remainder: bool = False) -> Iterator[Batch]:
        """The batches of one epoch ("single" placement), each read and copied ahead."""
        if self.placement.kind != "single":
            raise ValueError("batches() serves a single-device source; under a mesh or pmap "
                             "iterate epoch() and gather inside the step")
        spans, (read, threads) = self._spans(
            seed, epoch, batch_size, shuffle=shuffle, drop_remainder=drop_remainder, start=0,
            stop=None, steps_per_call=1, breaks=())
        device = self.placement.devices[0]
        yield from read_ahead(
            lambda span: jax.device_put(jax.tree_util.tree_map(lambda x: x[0], read(span)),
                                        device), spans, self.prefetch, threads)

    def close(self) -> None:
        """Stops background reading (nothing to stop here; `GrainSource` stops Grain)."""


def read_ahead(load, items, depth: int, threads: int = 1):
    """Yields `load(item)` for every item in order, while `threads` background threads load
    up to `depth` further items (host reads and device copies overlap the consumer's work).
    With one thread the items are loaded one after another, in order."""
    items = iter(items)
    done = object()
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        pending = collections.deque(pool.submit(load, item)
                                    for item in itertools.islice(items, depth + 1))
        while pending:
            result = pending.popleft().result()
            item = next(items, done)
            if item is not done:
                pending.append(pool.submit(load, item))
            yield result
