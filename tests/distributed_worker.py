"""One process of a multi-process jaxscale job on this machine, started by test_distributed.py.

    python tests/distributed_worker.py --mode job --coordinator 127.0.0.1:PORT \
        --num-processes 2 --process-id 0 --out DIR

Modes:
  job:  global dataset statistics of this process's shard, then a few SGD steps (in float64)
        of the package's BN CNN (the trainer's jit + Mesh program over all devices of all processes)
        on the global batches of the epoch order, each process reading only its rows of every
        batch, standardized with statistics fitted across processes. Writes DIR/<id>.json.
        With --num-processes 1 and no coordinator it is the single-process reference: the same
        global batches read by one process.
  train: jaxscale.training.train (the CLI's loop), parallel="mesh", every process given the
        whole dataset (--input resident or streaming).
  die:  joins the job and computes statistics; then process 1 kills itself with SIGKILL while
        the others keep running collectives. A survivor must fail, not hang (DIR/<id>.json
        records "hung" if it ever finishes).

The environment must set JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np

import jaxscale.training.distributed as distributed
from jaxscale.data.datasets import synthetic_dataset

NUM_EXAMPLES = 96
IMAGE_SHAPE = (16, 16, 3)  # the smallest the BN CNN's valid convs and pools take
GLOBAL_BATCH = 16  # split over the processes: 8 rows each in the 2-process run
STEPS = 3


def run_job(args) -> dict:
    from jaxscale.scaling import scaling_config

    dataset = synthetic_dataset(NUM_EXAMPLES, IMAGE_SHAPE, seed=1)
    local_images = dataset.images[distributed.process_shard(len(dataset),
                                                            drop_remainder=False)]
    stats = {scope: distributed.global_dataset_stats(local_images, scope=scope, batch_size=16)
             for scope in ("channel", "global")}

    # The trainer's program on the jit + Mesh path, over every device of every process; each
    # process reads only its rows of every global batch (HostSource), as train() does. In
    # float64: the test compares it with one process whose reductions add the same rows in
    # another order, and float32's rounding of those, grown through a few SGD steps, depends on
    # the CPU (see tests/test_parallel.py, RELATIVE).
    scaling = scaling_config("standardize")
    scaling_params = distributed.global_scaling_params(scaling, local_images, batch_size=16)
    with jax.enable_x64(True):
        losses, host_state = _train_float64(dataset, scaling, scaling_params)
    leaves = jax.tree_util.tree_leaves((host_state.params, host_state.batch_stats))
    checksum = [float(np.abs(np.asarray(leaf, np.float64)).sum()) for leaf in leaves]
    return {
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "device_count": jax.device_count(), "main": distributed.is_main_process(),
        "stats": {scope: {"count": int(s.count), "mean": np.asarray(s.mean).tolist(),
                          "std": np.asarray(s.std).tolist()} for scope, s in stats.items()},
        "scaling_mean": np.asarray(scaling_params.mean).tolist(),
        "losses": losses, "param_checksum": checksum,
        "param_dtypes": sorted({str(np.asarray(leaf).dtype) for leaf in leaves}),
    }


def _train_float64(dataset, scaling, scaling_params):
    """STEPS SGD steps with float64 parameters and BatchNorm statistics; (losses, state)."""
    from jaxscale.data.pipeline import HostSource
    from jaxscale.training.config import TrainConfig, make_optimizer
    from jaxscale.training.runners import make_runner
    from jaxscale.training.steps import create_train_state

    config = TrainConfig(model="bn_cnn", scaling="standardize", optimizer="sgd",
                         learning_rate=0.05, batch_size=GLOBAL_BATCH,
                         eval_batch_size=GLOBAL_BATCH, parallel="mesh", seed=0)
    tx = make_optimizer(config, STEPS)
    runner = make_runner("mesh", config, tx, scaling, scaling_params, devices=jax.devices(),
                         train_take=HostSource.take)
    source = HostSource(dataset, placement=runner.placement)
    state = create_train_state(runner.model, tx, IMAGE_SHAPE, jax.random.PRNGKey(config.seed))

    def wide(tree):
        return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)

    params = wide(state.params)
    state = runner.put_state(state.replace(params=params, batch_stats=wide(state.batch_stats),
                                           opt_state=tx.init(params)))
    key = runner.put_key(config.seed)
    losses = []
    for chunk in source.epoch(config.seed, 0, config.batch_size, drop_remainder=True,
                              stop=STEPS):
        state, sums = runner.train(state, runner.train_sums(), source.data, chunk, key)
        losses.append(float(np.asarray(sums["loss"].addressable_data(0))))
    return losses, runner.get_state(state)


def run_train(args) -> dict:
    """The package's own loop, `jaxscale.training.train`: every process passes the whole
    dataset and reads its rows of every global batch."""
    from jaxscale.training import train
    from jaxscale.training.config import TrainConfig

    dataset = synthetic_dataset(NUM_EXAMPLES, IMAGE_SHAPE, seed=1)
    config = TrainConfig(model="bn_cnn", batch_size=GLOBAL_BATCH, eval_batch_size=GLOBAL_BATCH,
                         epochs=1, parallel="mesh")
    # Only process 0 writes checkpoints; saving must not wait on the other host.
    ckpt = args.out / "checkpoints"
    result = train(config, dataset, max_steps=STEPS, checkpoint_dir=ckpt, input=args.input)
    leaves = jax.tree_util.tree_leaves((result.state.params, result.state.batch_stats))
    import jaxscale.training.checkpoint as checkpoint
    latest = checkpoint.latest_checkpoint(ckpt)
    return {"process_index": jax.process_index(),
            "checkpoint": None if latest is None else latest.name,
            "train_loss": result.history[-1]["train_loss"], "input": result.input,
            "param_checksum": [float(np.abs(np.asarray(leaf, np.float64)).sum())
                               for leaf in leaves]}


def run_die(args) -> dict:
    from jax.experimental import multihost_utils

    dataset = synthetic_dataset(NUM_EXAMPLES, IMAGE_SHAPE, seed=1)
    local = dataset.images[distributed.process_shard(len(dataset))]
    distributed.global_dataset_stats(local)
    multihost_utils.sync_global_devices("before the crash")
    if args.process_id == args.victim:
        how = signal.SIGSTOP if args.freeze else signal.SIGKILL
        print(f"worker {args.process_id}: sending itself {how.name}", file=sys.stderr,
              flush=True)
        os.kill(os.getpid(), how)
    start = time.monotonic()
    while time.monotonic() - start < args.hang_after:
        distributed.global_dataset_stats(local)
        time.sleep(0.2)
    return {"hung": True, "seconds": time.monotonic() - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("job", "train", "die"), default="job")
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--heartbeat", type=int, default=10)
    parser.add_argument("--victim", type=int, default=1, help="die mode: the process that dies")
    parser.add_argument("--freeze", action="store_true",
                        help="die mode: the victim stops (SIGSTOP, a hang) instead of dying")
    parser.add_argument("--hang-after", type=float, default=120.0)
    parser.add_argument("--input", default="auto", choices=("auto", "resident", "streaming"),
                        help="train mode: the input path of jaxscale.training.train")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.num_processes > 1:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               heartbeat_timeout_seconds=args.heartbeat,
                               initialization_timeout=60)
    result = {"job": run_job, "train": run_train, "die": run_die}[args.mode](args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.process_id}.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
