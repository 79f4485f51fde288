"""Deprecated: the input pipeline is `jaxscale.data.pipeline` (ResidentSource, HostSource).

The functions of the old module keep working for one release, each with a DeprecationWarning
naming what replaces it. Names that still exist (Batch, ...) forward to the new module.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale._moved import moved_module
import jaxscale.data.pipeline as _pipeline
import jaxscale.data.sharding as _sharding

__getattr__ = moved_module(__name__, "jaxscale.data.pipeline", "jaxscale.data.sharding")


def _deprecated(replacement: str):
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            warnings.warn(f"jaxscale.pipeline.{function.__name__} is deprecated: use "
                          f"{replacement}", DeprecationWarning, stacklevel=2)
            return function(*args, **kwargs)
        return wrapper
    return decorate


class DeviceDataset(NamedTuple):
    """Deprecated: `ResidentSource(dataset).data` holds the resident (images, labels)."""

    images: jax.Array
    labels: jax.Array


@_deprecated("jaxscale.data.pipeline.ResidentSource(dataset, placement=...)")
def put_on_device(dataset, sharding=None) -> DeviceDataset:
    images, labels = _pipeline.dataset_arrays(dataset)
    labels = jnp.asarray(labels).astype(jnp.int32)
    if sharding is None:
        return DeviceDataset(jax.device_put(images), jax.device_put(labels))
    return DeviceDataset(jax.device_put(images, sharding), jax.device_put(labels, sharding))


@_deprecated("jaxscale.data.pipeline.epoch_order(seed, epoch, n)")
def epoch_key(seed, epoch):
    key = jax.random.PRNGKey(seed) if isinstance(seed, int) else seed
    return jax.random.fold_in(key, epoch)


def _indices(key, num_examples, batch_size, shuffle, drop_remainder):
    if num_examples < 1:
        raise ValueError(f"need num_examples >= 1 and batch_size >= 1, got "
                         f"{num_examples}, {batch_size}")
    order = (np.asarray(jax.random.permutation(key, num_examples)).astype(np.int32)
             if shuffle else np.arange(num_examples, dtype=np.int32))
    return _pipeline.epoch_batches(order, batch_size, drop_remainder=drop_remainder)


@_deprecated("jaxscale.data.pipeline.epoch_batches(epoch_order(seed, epoch, n), batch_size)")
def epoch_indices(key, num_examples, batch_size, *, shuffle=True, drop_remainder=False):
    rows, mask = _indices(key, num_examples, batch_size, shuffle, drop_remainder)
    return jnp.asarray(rows), jnp.asarray(mask)


@_deprecated("jaxscale.data.pipeline.epoch_batches(epoch_order(seed, epoch, n), batch_size)")
def host_epoch_indices(seed, epoch, num_examples, batch_size, *, shuffle=True,
                       drop_remainder=False):
    key = jax.random.fold_in(jax.random.PRNGKey(seed) if isinstance(seed, int) else seed,
                             epoch)
    return _indices(key, num_examples, batch_size, shuffle, drop_remainder)


take_batch = _deprecated("jaxscale.data.pipeline.take_rows")(_pipeline.take_rows)
gather_batch = _deprecated("jax.jit(jaxscale.data.pipeline.take_rows)")(
    jax.jit(_pipeline.take_rows))


def _epoch_rows(seed, epoch, num_examples, batch_size, shuffle, drop_remainder):
    key = jax.random.fold_in(jax.random.PRNGKey(seed) if isinstance(seed, int) else seed,
                             epoch)
    return _indices(key, num_examples, batch_size, shuffle, drop_remainder)


@_deprecated("jaxscale.data.pipeline.ResidentSource(...).batches(seed, epoch, batch_size)")
def resident_batches(data, batch_size, *, seed=0, epoch=0, shuffle=True,
                     drop_remainder=False):
    images, labels = data
    rows, mask = _epoch_rows(seed, epoch, int(images.shape[0]), batch_size, shuffle,
                             drop_remainder)
    gather = jax.jit(_pipeline.take_rows)
    for step in range(rows.shape[0]):
        yield gather(images, labels, rows[step], mask[step])


@_deprecated("jaxscale.data.pipeline.HostSource(reader).batches(seed, epoch, batch_size)")
def stream_batches(dataset, batch_size, *, seed=0, epoch=0, shuffle=True,
                   drop_remainder=False, prefetch=2, sharding=None):
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    reader = dataset if hasattr(dataset, "get_batch") else _pipeline.as_reader(dataset)
    read = reader.get_batch if hasattr(reader, "get_batch") else reader.read
    rows, mask = _epoch_rows(seed, epoch, len(reader), batch_size, shuffle, drop_remainder)
    for step in range(rows.shape[0]):
        images, labels = read(rows[step])
        batch = _pipeline.Batch(np.asarray(images), np.asarray(labels).astype(np.int32),
                                mask[step])
        yield jax.device_put(batch) if sharding is None else jax.device_put(batch, sharding)


@_deprecated("a jitted lax.scan over ResidentSource.epoch(...) chunks with ResidentSource.take")
def scan_epoch(step_fn, carry, data, indices, mask):
    images, labels = data

    def body(state, step_rows):
        rows, valid = step_rows
        return step_fn(state, _pipeline.take_rows(images, labels, rows, valid))

    return jax.lax.scan(body, carry, (indices, mask))


@_deprecated("jaxscale.data.sharding.Placement.create('mesh').replicated")
def replicated_sharding(mesh=None):
    return jax.sharding.NamedSharding(mesh or _sharding.data_mesh(),
                                      jax.sharding.PartitionSpec())


@_deprecated("jaxscale.data.sharding.Placement.create('mesh').rows_sharding(0)")
def batch_sharding(mesh=None, axis: str = _sharding.DATA_AXIS):
    return jax.sharding.NamedSharding(mesh or _sharding.data_mesh(),
                                      jax.sharding.PartitionSpec(axis))
