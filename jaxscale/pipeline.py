"""Input pipelines: a device-resident one, and a streaming one that yields the same batches.

Device-resident (the fast path, for datasets that fit in device memory: MNIST is 47 MB as
uint8): `put_on_device` copies the dataset to the device once, as uint8; an epoch is an
int32[S, B] array of indices drawn from a `jax.random` key (`epoch_indices`), and each step
gathers its rows on device (`gather_batch`), inside the jitted step or a `lax.scan` over the
whole epoch (`scan_epoch`). No per-batch host-to-device copy, no Python loop over images.

Streaming (datasets that do not fit): `stream_batches` gathers the same rows on the host from
any random-access array (NumPy, `np.memmap`) or record source (`datasets.load_data_source`:
tfds ArrayRecord files on disk) and copies each batch to the device a few batches ahead, from
a background thread. For the same seed and epoch it yields exactly the batches the resident
path gathers.

Every batch has the same static shape: the last partial batch is padded (index 0, mask False)
or dropped (`drop_remainder=True`), so a step never recompiles for a new shape.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class DeviceDataset(NamedTuple):
    """A dataset on device (a pytree).

    Attributes:
      images: uint8[N, H, W, C] jax.Array.
      labels: int32[N] jax.Array.
    """

    images: jax.Array
    labels: jax.Array


class Batch(NamedTuple):
    """One batch (a pytree).

    Attributes:
      images: uint8[B, H, W, C].
      labels: int32[B].
      mask: bool[B], False on padding rows of the last batch (which repeat example 0).
    """

    images: jax.Array
    labels: jax.Array
    mask: jax.Array


def _arrays(dataset) -> tuple:
    """(images, labels) of a `jaxscale.datasets.Dataset`, a DeviceDataset or a pair."""
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        images, labels = dataset.images, dataset.labels
    else:
        images, labels = dataset
    if np.ndim(images) != 4 or np.shape(labels) != (np.shape(images)[0],):
        raise ValueError(f"expected images [N, H, W, C] and labels [N], got shapes "
                         f"{np.shape(images)} and {np.shape(labels)}")
    return images, labels


def put_on_device(dataset, sharding: jax.sharding.Sharding | None = None) -> DeviceDataset:
    """Copies a dataset to device memory once, keeping its dtype (uint8 stays uint8).

    Args:
      dataset: `jaxscale.datasets.Dataset`, or a pair (images uint8[N, H, W, C], labels [N]).
      sharding: where the arrays go; None is the default device. For data parallelism pass a
        replicated sharding (`replicated_sharding()`): each device holds the whole dataset and
        gathers its own slice of every batch.

    Returns:
      DeviceDataset(images uint8[N, H, W, C], labels int32[N]).
    """
    images, labels = _arrays(dataset)
    labels = np.asarray(labels).astype(np.int32) if not isinstance(labels, jax.Array) else (
        labels.astype(jnp.int32))
    if sharding is None:
        return DeviceDataset(jax.device_put(images), jax.device_put(labels))
    return DeviceDataset(jax.device_put(images, sharding), jax.device_put(labels, sharding))


def data_mesh(devices=None, axis: str = "data") -> Mesh:
    """A 1-D mesh over `devices` (default: all devices of all processes)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (axis,))


def replicated_sharding(mesh: Mesh | None = None) -> NamedSharding:
    """Every device holds the whole array (for the resident dataset)."""
    return NamedSharding(mesh or data_mesh(), PartitionSpec())


def batch_sharding(mesh: Mesh | None = None, axis: str = "data") -> NamedSharding:
    """Leading (batch) axis split over the mesh axis: each device gets its slice of a batch."""
    return NamedSharding(mesh or data_mesh(axis=axis), PartitionSpec(axis))


def epoch_key(seed: int | jax.Array, epoch: int | jax.Array) -> jax.Array:
    """The key of one epoch: `seed` (an int or a key) with the epoch number folded in, so
    every epoch has its own order and the same (seed, epoch) always gives the same order."""
    key = jax.random.PRNGKey(seed) if isinstance(seed, int) else seed
    return jax.random.fold_in(key, epoch)


def epoch_indices(key: jax.Array, num_examples: int, batch_size: int, *,
                  shuffle: bool = True, drop_remainder: bool = False
                  ) -> tuple[jax.Array, jax.Array]:
    """Indices and validity mask of every batch of one epoch.

    Args:
      key: PRNG key for this epoch (`epoch_key(seed, epoch)`: a new order every epoch).
      num_examples: dataset size N.
      batch_size: B.
      shuffle: random order (else 0..N-1).
      drop_remainder: drop the last N mod B examples of the (shuffled) order instead of
        padding the last batch.

    Returns:
      (indices int32[S, B], mask bool[S, B]) with S = ceil(N / B), or floor(N / B) when
      dropping. A padded last batch repeats index 0 with mask False, so every step has the
      same shape (no recompilation).
    """
    if batch_size < 1 or num_examples < 1:
        raise ValueError(f"need num_examples >= 1 and batch_size >= 1, got "
                         f"{num_examples}, {batch_size}")
    if drop_remainder and num_examples < batch_size:
        raise ValueError(f"drop_remainder with {num_examples} examples < batch_size "
                         f"{batch_size} leaves no batch")
    order = (jax.random.permutation(key, num_examples) if shuffle
             else jnp.arange(num_examples))
    if drop_remainder:
        steps = num_examples // batch_size
        order = order[:steps * batch_size]
        return (order.astype(jnp.int32).reshape(steps, batch_size),
                jnp.ones((steps, batch_size), bool))
    steps = -(-num_examples // batch_size)
    padded = steps * batch_size
    order = jnp.concatenate([order, jnp.zeros((padded - num_examples,), order.dtype)])
    mask = jnp.arange(padded) < num_examples
    return (order.astype(jnp.int32).reshape(steps, batch_size), mask.reshape(steps, batch_size))


def host_epoch_indices(seed: int | jax.Array, epoch: int, num_examples: int, batch_size: int,
                       *, shuffle: bool = True, drop_remainder: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
    """`epoch_indices(epoch_key(seed, epoch), ...)` as NumPy arrays (one small transfer per
    epoch): the streaming path's order, identical to the resident path's."""
    indices, mask = epoch_indices(epoch_key(seed, epoch), num_examples, batch_size,
                                  shuffle=shuffle, drop_remainder=drop_remainder)
    return np.asarray(indices), np.asarray(mask)


def take_batch(images: jax.Array, labels: jax.Array, indices: jax.Array,
               mask: jax.Array | None = None) -> Batch:
    """The rows `indices` of a device-resident dataset; traceable, call it inside your step.

    Args:
      images: uint8[N, H, W, C]; labels: int32[N]; indices: int32[B]; mask: bool[B] or None
        (all valid).

    Returns:
      Batch(images uint8[B, H, W, C], labels int32[B], mask bool[B]).
    """
    if mask is None:
        mask = jnp.ones(indices.shape, bool)
    return Batch(jnp.take(images, indices, axis=0), jnp.take(labels, indices, axis=0), mask)


gather_batch = jax.jit(take_batch)
gather_batch.__doc__ = "Jitted `take_batch`: " + (take_batch.__doc__ or "")


@jax.jit
def _gather_step(images, labels, indices, mask, step):
    return take_batch(images, labels, indices[step], mask[step])


def resident_batches(data: DeviceDataset, batch_size: int, *, seed: int | jax.Array = 0,
                     epoch: int = 0, shuffle: bool = True, drop_remainder: bool = False
                     ) -> Iterator[Batch]:
    """The batches of one epoch of a device-resident dataset, gathered on device.

    One compiled gather serves every step (the step number is a traced argument). For the
    fastest loop put `take_batch` inside your jitted train step, or scan the whole epoch with
    `scan_epoch`.

    Yields:
      Batch(images uint8[B, H, W, C], labels int32[B], mask bool[B]) on device.
    """
    images, labels = data
    indices, mask = epoch_indices(epoch_key(seed, epoch), int(images.shape[0]), batch_size,
                                  shuffle=shuffle, drop_remainder=drop_remainder)
    for step in range(indices.shape[0]):
        yield _gather_step(images, labels, indices, mask, step)


def scan_epoch(step_fn: Callable, carry, data: DeviceDataset, indices: jax.Array,
               mask: jax.Array):
    """Runs `step_fn` over every batch of an epoch with `lax.scan` (jit the caller).

    Args:
      step_fn: (carry, Batch) -> (carry, output), e.g. a train step (state, batch) ->
        (state, metrics).
      carry: initial carry (train state).
      data: DeviceDataset on device.
      indices, mask: int32[S, B], bool[S, B] from `epoch_indices`.

    Returns:
      (final carry, outputs stacked over the S steps).
    """
    images, labels = data

    def body(state, step_rows):
        rows, valid = step_rows
        return step_fn(state, take_batch(images, labels, rows, valid))

    return jax.lax.scan(body, carry, (indices, mask))


def _to_device(batch: Batch, sharding) -> Batch:
    if sharding is None:
        return jax.device_put(batch)
    if jax.process_count() > 1:
        # Each process holds its own rows of the global batch.
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    return jax.device_put(batch, sharding)


def stream_batches(dataset, batch_size: int, *, seed: int | jax.Array = 0, epoch: int = 0,
                   shuffle: bool = True, drop_remainder: bool = False, prefetch: int = 2,
                   sharding: jax.sharding.Sharding | None = None) -> Iterator[Batch]:
    """The batches of one epoch gathered on the host and copied to the device ahead of use.

    For the same seed, epoch, shuffle and drop_remainder the batches are identical to
    `resident_batches(put_on_device(dataset), ...)`.

    Args:
      dataset: `jaxscale.datasets.Dataset`, a pair (images [N, H, W, C], labels [N]) of
        host arrays supporting integer-array indexing (NumPy, np.memmap, ...), or a
        random-access source with `len()` and `get_batch(rows) -> (images, labels)` such as
        `jaxscale.datasets.load_data_source(...)` (reads only the rows of each batch).
      batch_size: B.
      seed, epoch, shuffle, drop_remainder: as in `resident_batches`.
      prefetch: batches gathered and in flight to the device ahead of the one yielded
        (a background thread does the host gather and the copy).
      sharding: where each batch goes, e.g. `batch_sharding()` to split it over devices;
        None is the default device.

    Yields:
      Batch(images uint8[B, H, W, C], labels int32[B], mask bool[B]) on device.
    """
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    if hasattr(dataset, "get_batch"):  # a random-access source such as datasets.RecordSource
        get_batch, num_examples = dataset.get_batch, len(dataset)
    else:
        images, labels = _arrays(dataset)
        num_examples = int(np.shape(images)[0])

        def get_batch(rows):
            return np.asarray(images[rows]), np.asarray(labels[rows])

    indices, mask = host_epoch_indices(seed, epoch, num_examples, batch_size,
                                       shuffle=shuffle, drop_remainder=drop_remainder)

    def load(step: int) -> Batch:
        batch_images, batch_labels = get_batch(indices[step])
        host = Batch(np.asarray(batch_images), np.asarray(batch_labels).astype(np.int32),
                     mask[step])
        return _to_device(host, sharding)

    steps = iter(range(indices.shape[0]))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = collections.deque(pool.submit(load, step)
                                    for step in itertools.islice(steps, prefetch + 1))
        while pending:
            batch = pending.popleft().result()
            yield batch  # meanwhile `prefetch` later batches are on their way
            step = next(steps, None)
            if step is not None:
                pending.append(pool.submit(load, step))


@functools.partial(jax.jit, static_argnames=("batch_size", "shuffle", "drop_remainder"))
def device_epoch(key: jax.Array, data: DeviceDataset, *, batch_size: int,
                 shuffle: bool = True, drop_remainder: bool = False) -> Batch:
    """Every batch of one epoch at once (stacked [S, B, ...]), gathered in one jitted call.

    Handy for small datasets and evaluation; training loops usually gather per step.
    """
    indices, mask = epoch_indices(key, data.images.shape[0], batch_size, shuffle=shuffle,
                                  drop_remainder=drop_remainder)
    return jax.vmap(lambda rows, valid: take_batch(data.images, data.labels, rows, valid))(
        indices, mask)
