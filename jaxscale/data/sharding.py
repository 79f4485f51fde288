"""Where arrays live on the devices: the one place for meshes, shardings and process shards.

A `Placement` says how one run uses its devices, and puts arrays there:

- "single": one device; arrays are copied to it as they are.
- "mesh": a 1-D `Mesh` over the devices (of every process) with the axis `DATA_AXIS`; datasets
  and train state are replicated (`PartitionSpec()`), the batch axis of every batch is split
  over "data" (`PartitionSpec(None, "data")` for a chunk of steps [K, B, ...]). The compiled
  step is the single-device program, partitioned by XLA.
- "pmap": the devices of `jax.pmap`; every array gets a leading device axis [D, ...]; a chunk
  [K, B, ...] becomes [D, K, B / D, ...] (device d takes columns d*B/D ... (d+1)*B/D - 1).

Several processes (`jax.distributed`) only run "mesh". Every process then passes either the
same global value (a replicated dataset, the rows of a global batch: `replicate`,
`split_rows`) or only its own rows of every global batch (`split_rows(process_local=True)`,
the rows `process_rows` picks), and the global arrays are assembled without any copy between
hosts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"   # the mesh axis that splits the batch
PMAP_AXIS = "batch"  # the pmap axis name (gradients, metrics and BatchNorm statistics)
KINDS = ("single", "mesh", "pmap")


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named `DATA_AXIS` over `devices` (default: every device of every process)."""
    return Mesh(np.asarray(jax.devices() if devices is None else list(devices)), (DATA_AXIS,))


def process_shard(num_examples: int, *, process_index: int | None = None,
                  process_count: int | None = None, drop_remainder: bool = True) -> slice:
    """This process's contiguous rows of a dataset of `num_examples` rows.

    Args:
      num_examples: rows in the whole dataset (every process passes the same number).
      process_index, process_count: default `jax.process_index()`, `jax.process_count()`.
      drop_remainder: True: every process gets `num_examples // process_count` rows.
        False (statistics): the first `num_examples % process_count` processes get one extra
        row, so the shards cover every row exactly once.

    Returns:
      slice(start, stop) into the rows.
    """
    index, count = _process(process_index, process_count)
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    per, extra = divmod(num_examples, count)
    if drop_remainder:
        return slice(index * per, (index + 1) * per)
    start = index * per + min(index, extra)
    return slice(start, start + per + (index < extra))


def process_rows(rows: np.ndarray, *, process_index: int | None = None,
                 process_count: int | None = None) -> np.ndarray:
    """This process's contiguous slice of the last axis of `rows` (int[..., B]): the rows of
    every global batch that it reads, B / process_count of them.

    Raises:
      ValueError: B does not split evenly over the processes.
    """
    index, count = _process(process_index, process_count)
    batch = rows.shape[-1]
    if batch % count:
        raise ValueError(f"a global batch of {batch} rows does not split over {count} "
                         "processes")
    per = batch // count
    return rows[..., index * per:(index + 1) * per]


def _process(process_index, process_count) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process_index must be in [0, process_count={count}), got {index}")
    return index, count


@dataclasses.dataclass(frozen=True)
class Placement:
    """How a run lays arrays out on its devices (see the module docstring).

    Attributes:
      kind: "single", "mesh" or "pmap".
      devices: the devices used (for "mesh" across processes: every process's).
    """

    kind: Literal["single", "mesh", "pmap"]
    devices: tuple

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"placement kind must be one of {KINDS}, got {self.kind!r}")
        if not self.devices:
            raise ValueError("a placement needs at least one device")
        if self.kind == "single" and len(self.devices) != 1:
            raise ValueError(f"a single-device placement takes one device, got "
                             f"{len(self.devices)}")
        if self.kind != "mesh" and any(d.process_index != jax.process_index()
                                       for d in self.devices):
            raise ValueError(f"{self.kind!r} uses this process's devices only; a run over "
                             "several processes needs kind 'mesh'")

    @classmethod
    def create(cls, kind: str, devices=None) -> "Placement":
        """A placement of `kind` over `devices` (default: "single" the first local device,
        "pmap" every local device, "mesh" every device of every process)."""
        if devices is None:
            devices = {"single": jax.local_devices()[:1], "pmap": jax.local_devices(),
                       "mesh": jax.devices()}.get(kind, ())
        return cls(kind, tuple(devices))

    @property
    def count(self) -> int:
        """Devices the batch is split over."""
        return len(self.devices)

    @property
    def mesh(self) -> Mesh:
        return data_mesh(self.devices)

    @property
    def replicated(self) -> NamedSharding:
        """Every device holds the whole array ("mesh")."""
        return NamedSharding(self.mesh, PartitionSpec())

    def rows_sharding(self, batch_axis: int = 1) -> NamedSharding:
        """The batch axis (`batch_axis`) split over the mesh ("mesh")."""
        return NamedSharding(self.mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))

    @property
    def _device_axis(self) -> NamedSharding:
        """The leading axis [D, ...] over the devices, one slice each ("pmap")."""
        return NamedSharding(Mesh(np.asarray(self.devices), (PMAP_AXIS,)),
                             PartitionSpec(PMAP_AXIS))

    def check_batch(self, batch_size: int, name: str = "batch_size") -> None:
        """Raises ValueError unless `batch_size` splits evenly over the devices."""
        if self.kind != "single" and batch_size % self.count:
            raise ValueError(f"{name} {batch_size} does not split over {self.count} devices")

    def replicate(self, tree: Any) -> Any:
        """Every leaf on every device (the same value on every process)."""
        if self.kind == "single":
            return jax.device_put(tree, self.devices[0])
        if self.kind == "pmap":
            count = self.count
            return jax.device_put(jax.tree_util.tree_map(
                lambda x: np.broadcast_to(np.asarray(x)[None], (count, *np.shape(x))), tree),
                self._device_axis)
        return jax.tree_util.tree_map(lambda x: _global(x, self.replicated), tree)

    def split_rows(self, tree: Any, *, process_local: bool = False) -> Any:
        """Leaves [K, B, ...] (K steps of B rows) with the batch axis split over the devices.

        Args:
          tree: host arrays [K, B, ...]; with `process_local`, this process's rows only
            [K, B / process_count, ...] (what `process_rows` selects).
          process_local: see `tree` ("mesh" across processes; elsewhere it changes nothing).

        Returns:
          "single": [K, B, ...] on the device; "mesh": global [K, B, ...] arrays sharded
          along B; "pmap": [D, K, B / D, ...] split over the devices.
        """
        if self.kind == "single":
            return jax.device_put(tree, self.devices[0])
        if self.kind == "pmap":
            count = self.count

            def split(x):
                x = np.asarray(x)
                self.check_batch(x.shape[1], "batch")
                parts = x.reshape(x.shape[0], count, x.shape[1] // count, *x.shape[2:])
                return np.ascontiguousarray(np.moveaxis(parts, 1, 0))

            return jax.device_put(jax.tree_util.tree_map(split, tree), self._device_axis)
        sharding = self.rows_sharding(1)
        if process_local and jax.process_count() > 1:
            return jax.tree_util.tree_map(
                lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
        return jax.tree_util.tree_map(lambda x: _global(x, sharding), tree)

    def to_host(self, tree: Any) -> Any:
        """A NumPy copy of a replicated tree (one device's copy; [D, ...] loses its axis)."""
        if self.kind == "pmap":
            return jax.tree_util.tree_map(lambda x: np.asarray(x[0]), tree)
        return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0))
                                      if isinstance(x, jax.Array) else np.asarray(x), tree)


def _global(x, sharding: NamedSharding) -> jax.Array:
    """`x` (the same host value on every process, or an array on this process's devices) as a
    global array with `sharding`."""
    if isinstance(x, jax.Array) and jax.process_count() == 1:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
