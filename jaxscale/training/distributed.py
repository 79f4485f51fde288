"""Multi-host runs on JAX's own multi-controller runtime (Cloud TPU pod slices, multi-GPU, CPU).

Every host runs the same program. `initialize` joins the job through `jax.distributed`
(auto-detected on Cloud TPU VMs, Slurm and Open MPI; explicit address/count/id elsewhere), each
host then reads only its `process_shard` of the data, `global_batch_from_local` assembles the
global batch from the hosts' local rows, and `global_dataset_stats` merges per-host statistics
exactly. Only `is_main_process()` should write logs and checkpoints.

Failure handling is the runtime's: every process heartbeats to the coordinator (process 0);
`heartbeat_timeout_seconds` after a peer stops, the survivors are terminated with an error that
says a task died, instead of waiting forever in a collective.

On CPU the cross-process collectives are gloo (`jax_cpu_collectives_implementation`), so the
whole path runs on one machine with several processes on 127.0.0.1 (see the tests).
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxscale.data.sharding import DATA_AXIS, data_mesh, process_shard  # noqa: F401
from jaxscale.statistics import (
    DatasetStats,
    Scope,
    compute_stats,
    empty_stats_for,
    merge_stats_across_hosts,
)
from jaxscale.scaling import ScalingConfig, ScalingParams, fit_scaling
from jaxscale.validation import DataFormat, check_data_format

logger = logging.getLogger(__name__)

# The runtime's default (100 s) suits big pods with slow starts; a minute still fails a dead
# peer's survivors long before anyone would notice a hang by hand.
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
DEFAULT_INITIALIZATION_TIMEOUT_S = 300
_GOOGLE_PCI_VENDOR = "0x1ae0"


def on_cloud_tpu_vm() -> bool:
    """True on a Cloud TPU VM (a Google TPU PCI device, or the TPU worker environment).

    Reads sysfs and the environment only; does not start a JAX backend.
    """
    if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_WORKER_ID"):
        return True
    for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor_file) as handle:
                if handle.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids: int | Sequence[int] | None = None, *,
               heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
               initialization_timeout: int = DEFAULT_INITIALIZATION_TIMEOUT_S,
               shutdown_timeout_seconds: int | None = None) -> None:
    """Joins this process to a multi-host JAX job (wraps `jax.distributed.initialize`).

    Call it first, before anything touches a JAX device. Calling it again is a no-op.

    Args:
      coordinator_address: "host:port" of process 0. None: `$JAX_COORDINATOR_ADDRESS`, or
        detected by JAX on Cloud TPU VMs, Slurm and Open MPI.
      num_processes: processes in the job. None: `$JAX_NUM_PROCESSES` or detected.
      process_id: this process's index in [0, num_processes). None: `$JAX_PROCESS_ID` or
        detected.
      local_device_ids: restrict this process to these local devices (GPU: one per process).
      heartbeat_timeout_seconds: a process silent this long is declared dead and every other
        process fails with an error naming the lost task, instead of hanging.
      initialization_timeout: seconds to wait for all processes to join.
      shutdown_timeout_seconds: seconds an exiting process waits for the others at shutdown
        (default: twice the heartbeat timeout).

    Raises:
      ValueError: nothing to go on (not a TPU VM or known cluster, and no address, count or
        id given), or an id outside [0, num_processes).
      RuntimeError: a JAX backend was already started in this process without distribution.
    """
    if jax.distributed.is_initialized():
        return
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    explicit = (coordinator_address, num_processes, process_id)
    if None in explicit and not on_cloud_tpu_vm() and not _known_cluster():
        raise ValueError(
            "jaxscale.training.distributed.initialize: not on a Cloud TPU VM or Slurm/Open MPI job, so "
            "give coordinator_address ('host:port' of process 0), num_processes and process_id "
            "(or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); got "
            f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r}")
    if num_processes is not None and process_id is not None and \
            not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    if shutdown_timeout_seconds is None:
        shutdown_timeout_seconds = 2 * heartbeat_timeout_seconds
    # gloo is JAX's default CPU collective; set it explicitly so a CPU job never silently
    # runs without cross-process collectives.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id, local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        shutdown_timeout_seconds=shutdown_timeout_seconds)
    logger.info("jax.distributed: process %d of %d, %d local / %d global devices",
                jax.process_index(), jax.process_count(), jax.local_device_count(),
                jax.device_count())


def auto_initialize(**kwargs) -> bool:
    """`initialize()` when this process is evidently part of a multi-process job, else nothing.

    "Evidently": a Cloud TPU VM, a Slurm/Open MPI job, or `JAX_COORDINATOR_ADDRESS` set. Lets a
    command line start distributed without a flag on TPU VMs and stay single-process on a
    laptop. Keyword arguments go to `initialize`.

    Returns:
      True if the process is (now) part of a distributed job.
    """
    if jax.distributed.is_initialized():
        return True
    if on_cloud_tpu_vm() or _known_cluster() or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        initialize(**kwargs)
        return True
    return False


def _known_cluster() -> bool:
    """Slurm or Open MPI launched us: JAX detects address, count and id itself."""
    return "SLURM_JOB_ID" in os.environ or "OMPI_MCA_orte_hnp_uri" in os.environ \
        or "OMPI_COMM_WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """True on process 0, the one that writes logs, metrics and checkpoint metadata."""
    return jax.process_index() == 0


def batch_sharding(mesh: Mesh | None = None) -> NamedSharding:
    """Batch axis split over a 1-D "data" mesh of every device of every process."""
    return NamedSharding(mesh or data_mesh(), PartitionSpec(DATA_AXIS))


def global_batch_from_local(local_batch, sharding: NamedSharding | None = None):
    """The global batch as one `jax.Array` built from every process's local rows.

    Args:
      local_batch: a pytree of host arrays [B_local, ...], this process's rows; every process
        passes the same B_local, divisible by its local device count.
      sharding: where the global batch lives (default `batch_sharding()`).

    Returns:
      The same pytree of global arrays [B_local * process_count, ...], rows ordered by process.
    """
    sharding = batch_sharding() if sharding is None else sharding
    local_devices = sum(d.process_index == jax.process_index()
                        for d in sharding.mesh.devices.flat)

    def assemble(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % max(local_devices, 1):
            raise ValueError(f"local batch of shape {x.shape} does not split over this "
                             f"process's {local_devices} devices")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map(assemble, local_batch)


def global_dataset_stats(local_images, *, scope: Scope = "channel",
                         data_format: DataFormat = "channels_last",
                         batch_size: int | None = None) -> DatasetStats:
    """Statistics of the union of every process's images, the same on every process.

    Each process streams its own images through `compute_stats` on a local device, then the
    per-host (count, mean, M2) are merged exactly across hosts (Chan et al.), so the result
    equals single-process statistics of all images up to float32 rounding order.

    Args:
      local_images: uint8 or float[N_local, H, W, C] (or channels_first); N_local may be 0.
      scope: "channel", "pixel" or "global".
      data_format: layout of `local_images`.
      batch_size: images per local device step; None: `statistics.auto_batch_size`.

    Returns:
      DatasetStats with statistic shape [C], [H, W, C] or [].
    """
    check_data_format(data_format)
    if len(getattr(local_images, "shape", ())) != 4:
        raise ValueError(f"local_images must be rank 4, got shape "
                         f"{getattr(local_images, 'shape', None)}")
    if local_images.shape[0] == 0:
        # A host without rows still joins the merge, with the identity element.
        stats = empty_stats_for(local_images.shape[1:], scope=scope, data_format=data_format)
    else:
        stats = compute_stats(local_images, scope=scope, data_format=data_format,
                              batch_size=batch_size)
    return merge_stats_across_hosts(stats)


def global_scaling_params(config: ScalingConfig, local_images, *,
                          batch_size: int | None = None, progress: bool = False
                          ) -> ScalingParams:
    """`fit_scaling` over the union of every process's images, the same on every process.

    Each process fits its own images (statistics of the images as `scale` sees them before
    the featurewise steps), then the statistics are merged exactly across hosts.

    Args:
      config: the scaling config; modes without featurewise steps need no fit.
      local_images: uint8 or float[N_local, H, W, C] (or channels_first), N_local >= 1, or an
        iterable of such batches.
      batch_size: images per local device step; None: `statistics.auto_batch_size`.
      progress: show a progress bar.

    Returns:
      ScalingParams (mean/std of all hosts' images; all None when the config needs no fit).

    Raises:
      ValueError: ZCA whitening with several processes (its D x D co-moments are not merged
        across hosts; fit it on one host and load it with `load_scaling`).
    """
    if not config.needs_fit:
        return ScalingParams()
    if config.zca_whitening and jax.process_count() > 1:
        raise ValueError("zca_whitening is not fitted across processes: fit it on one host "
                         "(fit_scaling + save_scaling) and load_scaling it on every host")
    local = fit_scaling(config, local_images, batch_size=batch_size, progress=progress)
    if jax.process_count() == 1:
        return local
    stats = merge_stats_across_hosts(local.stats)
    return ScalingParams(mean=stats.mean if config.featurewise_center else None,
                         std=stats.std if config.featurewise_std_normalization else None,
                         stats=stats)
