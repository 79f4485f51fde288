"""One process of a multi-process jaxscale job on this machine, started by test_distributed.py.

    python tests/distributed_worker.py --mode job --coordinator 127.0.0.1:PORT \
        --num-processes 2 --process-id 0 --out DIR

Modes:
  job:  global dataset statistics of this process's shard, then a few SGD steps of the
        package's BN CNN (jaxscale.training + jaxscale.parallel's jit + Mesh runner over all
        devices of all processes) on global batches assembled from every process's local rows,
        standardized with statistics fitted across processes. Writes DIR/<id>.json.
        With --num-processes 1 and no coordinator it is the single-process reference: the same
        global batches built from all shards in one process.
  train: jaxscale.training.train (the CLI's loop) on this process's shard, parallel="mesh".
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
from jax.sharding import NamedSharding, PartitionSpec

from jaxscale import distributed
from jaxscale.data.datasets import synthetic_dataset

NUM_EXAMPLES = 96
IMAGE_SHAPE = (16, 16, 3)  # the smallest the BN CNN's valid convs and pools take
SHARDS = 2  # the data layout of the multi-process run; the reference rebuilds it in one process
LOCAL_BATCH = 8  # rows per shard per step; global batch = SHARDS * LOCAL_BATCH
STEPS = 3


def _global_batches(dataset, num_processes: int, process_id: int):
    """Per step, this process's rows of the global batch (the whole global batch if alone)."""
    shards = [dataset.take(distributed.process_shard(len(dataset), process_index=i,
                                                     process_count=SHARDS))
              for i in range(SHARDS)]
    mine = shards if num_processes == 1 else [shards[process_id]]
    for step in range(STEPS):
        rows = slice(step * LOCAL_BATCH, (step + 1) * LOCAL_BATCH)
        yield (np.concatenate([s.images[rows] for s in mine]),
               np.concatenate([s.labels[rows] for s in mine]).astype(np.int32))


def run_job(args) -> dict:
    from jaxscale.parallel import make_runner
    from jaxscale.scaling import scaling_config
    from jaxscale.training import TrainConfig, create_train_state, make_optimizer

    dataset = synthetic_dataset(NUM_EXAMPLES, IMAGE_SHAPE, seed=1)
    if args.num_processes == 1:
        local_images = dataset.images
    else:
        local_images = dataset.images[distributed.process_shard(len(dataset),
                                                                drop_remainder=False)]
    stats = {scope: distributed.global_dataset_stats(local_images, scope=scope, batch_size=16)
             for scope in ("channel", "global")}

    # The package's BN CNN on the jit + Mesh path, over every device of every process.
    config = TrainConfig(model="bn_cnn", scaling="standardize", optimizer="sgd",
                         learning_rate=0.05, batch_size=SHARDS * LOCAL_BATCH,
                         eval_batch_size=SHARDS * LOCAL_BATCH, parallel="mesh", seed=0)
    scaling = scaling_config(config.scaling)
    scaling_params = distributed.global_scaling_params(scaling, local_images, batch_size=16)
    tx = make_optimizer(config, STEPS)
    runner = make_runner("mesh", config, tx, scaling, scaling_params, devices=jax.devices())
    state = runner.put_state(create_train_state(runner.model, tx, IMAGE_SHAPE,
                                                jax.random.key(config.seed)))
    sharding = distributed.batch_sharding()
    # A key made on one device cannot be device_put onto other processes' devices: make it
    # replicated in the first place.
    key = jax.jit(lambda: jax.random.key(config.seed),
                  out_shardings=NamedSharding(sharding.mesh, PartitionSpec()))()
    losses = []
    for images, labels in _global_batches(dataset, args.num_processes, args.process_id):
        global_images, global_labels = distributed.global_batch_from_local(
            (images, labels), sharding)
        state, metrics = runner.train_batch(state, global_images, global_labels, key)
        losses.append(float(metrics["loss"].addressable_data(0)))
    host_state = runner.get_state(state)
    leaves = jax.tree_util.tree_leaves((host_state.params, host_state.batch_stats))
    checksum = [float(np.abs(np.asarray(leaf, np.float64)).sum()) for leaf in leaves]
    return {
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "device_count": jax.device_count(), "main": distributed.is_main_process(),
        "stats": {scope: {"count": int(s.count), "mean": np.asarray(s.mean).tolist(),
                          "std": np.asarray(s.std).tolist()} for scope, s in stats.items()},
        "scaling_mean": np.asarray(scaling_params.mean).tolist(),
        "losses": losses, "param_checksum": checksum,
    }


def run_train(args) -> dict:
    """The package's own loop, `jaxscale.training.train`, on this process's shard."""
    from jaxscale import training

    dataset = synthetic_dataset(NUM_EXAMPLES, IMAGE_SHAPE, seed=1)
    local = dataset.take(distributed.process_shard(len(dataset)))
    config = training.TrainConfig(model="bn_cnn", batch_size=SHARDS * LOCAL_BATCH,
                                  eval_batch_size=SHARDS * LOCAL_BATCH, epochs=1,
                                  parallel="mesh")
    # Only process 0 writes checkpoints; saving must not wait on the other host.
    ckpt = args.out / "checkpoints"
    result = training.train(config, local, max_steps=STEPS, checkpoint_dir=ckpt)
    leaves = jax.tree_util.tree_leaves((result.state.params, result.state.batch_stats))
    from jaxscale import checkpoint
    latest = checkpoint.latest_checkpoint(ckpt)
    return {"process_index": jax.process_index(),
            "checkpoint": None if latest is None else latest.name,
            "train_loss": result.history[-1]["train_loss"],
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
