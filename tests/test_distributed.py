"""jaxscale.training.distributed: in-process units, and real multi-process jobs on 127.0.0.1.

The multi-process tests start `tests/distributed_worker.py` as 2 processes with 2 CPU devices
each (gloo collectives through jax.distributed) and compare them with one process of 4
devices: (a) dataset statistics, (b) losses and parameters of a few training steps on the same
global batches, (c) a dead or frozen peer fails the survivor with a clear error in bounded time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxscale.training.distributed as distributed
from jaxscale.scaling import fit_scaling, scaling_config
from jaxscale.statistics import compute_stats

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "distributed_worker.py"
HEARTBEAT_S = 5


# ---------------------------------------------------------------- in-process units


@pytest.mark.parametrize("num_examples,count", [(10, 3), (96, 2), (7, 7), (5, 8), (0, 2)])
@pytest.mark.parametrize("drop_remainder", [True, False])
def test_process_shard_partitions_rows(num_examples, count, drop_remainder):
    shards = [distributed.process_shard(num_examples, process_index=i, process_count=count,
                                        drop_remainder=drop_remainder) for i in range(count)]
    rows = np.concatenate([np.arange(num_examples)[s] for s in shards])
    sizes = [s.stop - s.start for s in shards]
    if drop_remainder:
        # equal contiguous parts, in order: every host runs the same number of steps
        assert sizes == [num_examples // count] * count
        np.testing.assert_array_equal(rows, np.arange(num_examples // count * count))
    else:
        # every row exactly once, sizes differ by at most one
        np.testing.assert_array_equal(rows, np.arange(num_examples))
        assert max(sizes) - min(sizes) <= 1


def test_process_shard_defaults_to_this_process():
    assert distributed.process_shard(9) == slice(0, 9)
    assert distributed.is_main_process() is True


@pytest.mark.parametrize("index,count", [(2, 2), (-1, 2), (0, 0)])
def test_process_shard_rejects_bad_index(index, count):
    with pytest.raises(ValueError, match="process_index"):
        distributed.process_shard(10, process_index=index, process_count=count)


def test_initialize_without_cluster_says_what_to_pass(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                 "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID",
                 "OMPI_COMM_WORLD_SIZE", "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: False)
    with pytest.raises(ValueError, match="coordinator_address"):
        distributed.initialize(num_processes=2)
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\), got 5"):
        distributed.initialize("127.0.0.1:1", 2, 5)
    assert not jax.distributed.is_initialized()


def test_initialize_reads_process_numbers_from_environment(monkeypatch):
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer, got 'two'"):
        distributed.initialize("127.0.0.1:1", process_id=0)


def test_auto_initialize_stays_single_process_off_cluster(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE",
                 "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: False)
    assert distributed.auto_initialize() is False
    assert jax.process_count() == 1


def test_auto_initialize_joins_on_a_tpu_vm(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: True)
    monkeypatch.setattr(distributed, "initialize", lambda **kw: calls.append(kw))
    assert distributed.auto_initialize(heartbeat_timeout_seconds=7) is True
    assert calls == [{"heartbeat_timeout_seconds": 7}]


@pytest.mark.parametrize("variable", ["TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES"])
def test_cloud_tpu_vm_detected_from_worker_environment(monkeypatch, variable):
    monkeypatch.setenv(variable, "0")
    assert distributed.on_cloud_tpu_vm() is True


def test_global_batch_from_local_single_process():
    sharding = distributed.batch_sharding()
    images = np.arange(16 * 2 * 2 * 1, dtype=np.float32).reshape(16, 2, 2, 1)
    labels = np.arange(16, dtype=np.int32)
    global_images, global_labels = distributed.global_batch_from_local((images, labels),
                                                                       sharding)
    assert global_images.sharding == sharding
    assert len(global_images.addressable_shards) == jax.device_count()
    np.testing.assert_array_equal(np.asarray(global_images), images)
    np.testing.assert_array_equal(np.asarray(global_labels), labels)


def test_global_batch_from_local_rejects_uneven_rows():
    with pytest.raises(ValueError, match=r"does not split over this process's 8 devices"):
        distributed.global_batch_from_local(np.zeros((6, 2)), distributed.batch_sharding())


def _fake_second_host(monkeypatch, other_stats):
    """Pretends to be process 0 of 2; the gather returns this host's statistics stacked with
    `other_stats()` (what process 1 would send), computed lazily with the real count."""
    from jax.experimental import multihost_utils

    gathered = []

    def allgather(stats, tiled=False):
        assert not tiled
        other = other_stats()
        gathered.append(other)
        return jax.tree_util.tree_map(lambda a, b: np.stack([np.asarray(a), np.asarray(b)]),
                                      stats, other)

    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    return gathered


@pytest.mark.parametrize("scope", ["channel", "pixel", "global"])
def test_global_dataset_stats_merges_the_other_hosts_share(monkeypatch, scope):
    images = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    mine, theirs = images[:13], images[13:]
    gathered = _fake_second_host(monkeypatch, lambda: compute_stats(theirs, scope=scope))
    got = distributed.global_dataset_stats(mine, scope=scope, batch_size=8)
    assert len(gathered) == 1 and int(got.count) == 20
    axes = {"channel": (0, 1, 2), "pixel": (0,), "global": (0, 1, 2, 3)}[scope]
    whole = images.astype(np.float64)
    np.testing.assert_allclose(np.asarray(got.mean), whole.mean(axis=axes), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got.std), whole.std(axis=axes), rtol=1e-6)


@pytest.mark.parametrize("data_format,shape,stat", [("channels_last", (0, 4, 5, 3), (3,)),
                                                    ("channels_first", (0, 3, 4, 5), (3,))])
def test_global_dataset_stats_of_an_empty_host_is_the_identity(data_format, shape, stat):
    stats = distributed.global_dataset_stats(np.zeros(shape, np.uint8), data_format=data_format)
    assert int(stats.count) == 0
    assert stats.shape == stat
    assert stats.elements_per_image == 20


@pytest.mark.parametrize("mode,overrides", [("standardize", {}), ("center", {}),
                                            ("center", {"samplewise_center": True})])
def test_global_scaling_params_merges_the_other_hosts_share(monkeypatch, mode, overrides):
    config = scaling_config(mode, **overrides)
    images = np.random.default_rng(1).integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    mine, theirs = images[:5], images[5:]
    gathered = _fake_second_host(monkeypatch, lambda: fit_scaling(config, theirs).stats)
    got = distributed.global_scaling_params(config, mine, batch_size=5)
    want = fit_scaling(config, images)  # one process holding all rows
    assert len(gathered) == 1 and int(got.stats.count) == 12
    np.testing.assert_allclose(np.asarray(got.mean), np.asarray(want.mean), rtol=1e-6)
    if config.featurewise_std_normalization:
        np.testing.assert_allclose(np.asarray(got.std), np.asarray(want.std), rtol=1e-6)
    else:
        assert got.std is None
    # and not what this host alone would have fitted
    alone = fit_scaling(config, mine)
    assert not np.allclose(np.asarray(got.mean), np.asarray(alone.mean), rtol=1e-3)


def test_global_scaling_params_of_a_mode_without_fit_is_empty():
    got = distributed.global_scaling_params(scaling_config("none"), np.zeros((2, 4, 4, 1)))
    assert got.mean is None and got.std is None and got.stats is None


def test_global_scaling_params_refuses_zca_across_processes(monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    config = scaling_config("zca")
    with pytest.raises(ValueError, match="zca_whitening is not fitted across processes"):
        distributed.global_scaling_params(config, np.zeros((4, 2, 2, 1), np.uint8))


# ---------------------------------------------------------------- multi-process jobs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(tmp: Path, mode: str, num_processes: int, devices: int, *extra: str):
    """Starts the worker as `num_processes` processes; returns (processes, log paths)."""
    # The workers keep this process's other XLA flags (e.g. `--xla_cpu_max_isa=AVX2`).
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
             if not flag.startswith("--xla_force_host_platform_device_count")]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
               PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="0")
    port = _free_port()
    processes, logs = [], []
    for process_id in range(num_processes):
        log = tmp / f"{mode}-{num_processes}x{devices}-{process_id}.log"
        args = [sys.executable, str(WORKER), "--mode", mode, "--out", str(tmp / "out"),
                "--num-processes", str(num_processes), "--process-id", str(process_id),
                "--coordinator", f"127.0.0.1:{port}", "--heartbeat", str(HEARTBEAT_S), *extra]
        with open(log, "w") as handle:
            processes.append(subprocess.Popen(args, env=env, stdout=handle,
                                              stderr=subprocess.STDOUT, cwd=REPO))
        logs.append(log)
    return processes, logs


def _finish(processes, logs, timeout: float) -> None:
    try:
        for process, log in zip(processes, logs):
            rc = process.wait(timeout=timeout)
            assert rc == 0, f"{log.name} exited {rc}:\n{log.read_text()[-3000:]}"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def job_results(tmp_path_factory):
    """Results of the 2-process x 2-device job and of the 1-process x 4-device reference."""
    multi_dir = tmp_path_factory.mktemp("multi")
    single_dir = tmp_path_factory.mktemp("single")
    multi = _launch(multi_dir, "job", 2, 2)
    single = _launch(single_dir, "job", 1, 4)
    _finish(*multi, timeout=240)
    _finish(*single, timeout=240)
    read = lambda d, i: json.loads((d / "out" / f"{i}.json").read_text())  # noqa: E731
    return [read(multi_dir, 0), read(multi_dir, 1)], read(single_dir, 0)


def test_job_topology(job_results):
    multi, single = job_results
    assert [(r["process_index"], r["process_count"], r["device_count"], r["main"])
            for r in multi] == [(0, 2, 4, True), (1, 2, 4, False)]
    assert (single["process_count"], single["device_count"]) == (1, 4)


@pytest.mark.numerics
@pytest.mark.parametrize("scope", ["channel", "global"])
def test_stats_across_processes_equal_single_process(job_results, scope):
    multi, single = job_results
    want = single["stats"][scope]
    for result in multi:
        got = result["stats"][scope]
        assert got["count"] == want["count"] == 96
        np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-6)
        np.testing.assert_allclose(got["std"], want["std"], rtol=1e-6)


@pytest.mark.numerics
def test_training_across_processes_matches_single_process(job_results):
    """jaxscale's BN CNN (with dropout) on the jit + Mesh runner over all processes' devices.

    Both jobs run the same global-batch math in float64 and differ only in the order in which
    their reductions add the rows (4 devices over 2 processes vs 4 in one): the bound is the
    one of tests/test_parallel.py (RELATIVE, derived there), a sum of n <= 16 * 14 * 14 terms
    errs by at most ~n 2^-53 of sum|t|. The scaling statistics are float32 sums of the same
    rows merged in another order (Chan et al.), exact to a few float32 ulps.
    """
    multi, single = job_results
    assert len(single["losses"]) == 3 and single["param_dtypes"] == ["float64"]
    for result in multi:
        np.testing.assert_allclose(result["scaling_mean"], single["scaling_mean"], rtol=1e-6)
        np.testing.assert_allclose(result["losses"], single["losses"], rtol=1e-9)
        np.testing.assert_allclose(result["param_checksum"], single["param_checksum"],
                                   rtol=1e-9)
    # every host ends with bit-identical parameters and BN statistics
    assert multi[0]["param_checksum"] == multi[1]["param_checksum"]
    assert single["losses"][-1] < single["losses"][0]


@pytest.mark.slow
@pytest.mark.parametrize("input", ["resident", "streaming"])
def test_training_loop_across_processes_keeps_hosts_identical(tmp_path, input):
    """`jaxscale train --distributed`'s loop must leave every host with the same parameters."""
    processes, logs = _launch(tmp_path, "train", 2, 2, "--input", input)
    _finish(processes, logs, timeout=240)
    results = [json.loads((tmp_path / "out" / f"{i}.json").read_text()) for i in range(2)]
    assert results[0]["param_checksum"] == results[1]["param_checksum"]
    assert results[0]["train_loss"] == results[1]["train_loss"]
    assert results[0]["input"] == input
    # process 0 wrote the final checkpoint alone (in the format of the day) and it restores
    import jaxscale.training.checkpoint as checkpoint
    from jaxscale.training.config import TrainConfig, make_optimizer
    from jaxscale.training.models import get_model
    from jaxscale.training.steps import create_train_state
    assert results[0]["checkpoint"] == f"step_00000003.{checkpoint.FORMAT}"
    tx = make_optimizer(TrainConfig(model="bn_cnn", batch_size=8), 3)
    target = create_train_state(get_model("bn_cnn", 10), tx, (16, 16, 3),
                                jax.random.PRNGKey(0))
    restored, meta = checkpoint.restore_checkpoint(
        tmp_path / "out" / "checkpoints" / results[0]["checkpoint"], target)
    assert int(restored.step) == 3 and meta["config"]["model"] == "bn_cnn"


def _run_until_survivor_fails(tmp: Path, victim: int, freeze: bool) -> tuple[int, float, str]:
    extra = ["--victim", str(victim), "--hang-after", "120"] + (["--freeze"] if freeze else [])
    processes, logs = _launch(tmp, "die", 2, 2, *extra)
    survivor = 1 - victim
    died_at = None
    deadline = time.monotonic() + 150
    try:
        while processes[survivor].poll() is None and time.monotonic() < deadline:
            if died_at is None and "sending itself" in logs[victim].read_text():
                died_at = time.monotonic()
            time.sleep(0.2)
        if died_at is None and "sending itself" in logs[victim].read_text():
            died_at = time.monotonic()
        rc = processes[survivor].poll()
        elapsed = time.monotonic() - died_at if died_at is not None else float("inf")
        return rc, elapsed, logs[survivor].read_text()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("victim,freeze", [
    (1, False),
    pytest.param(0, False, marks=pytest.mark.slow),
    pytest.param(1, True, marks=pytest.mark.slow),
    pytest.param(0, True, marks=pytest.mark.slow),
], ids=["worker-dies", "coordinator-dies", "worker-freezes", "coordinator-freezes"])
def test_lost_peer_fails_survivor_with_clear_error(tmp_path, victim, freeze):
    rc, elapsed, log = _run_until_survivor_fails(tmp_path, victim, freeze)
    assert rc is not None and rc != 0, f"survivor still running or succeeded:\n{log[-3000:]}"
    assert "another task died" in log, log[-3000:]
    # a heartbeat timeout, its error propagation and the abort, with slack for a busy machine
    assert elapsed < 4 * HEARTBEAT_S + 20, f"survivor took {elapsed:.1f} s to fail"
