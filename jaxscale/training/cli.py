"""The `jaxscale` command line: `jaxscale train ...` and `jaxscale stats ...`.

For example::

    jaxscale train --dataset mnist --model bn_cnn --scaling standardize --augment seed
    jaxscale stats --dataset mnist
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from jaxscale.cpu import tune_host_allocator


def _devices(value: str):
    if value == "all":
        return None
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--devices takes 'all' or a count, got {value!r}")
    if count < 1:
        raise argparse.ArgumentTypeError(f"--devices must be >= 1, got {count}")
    return count


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every flag documented in --help)."""
    from jaxscale.augmentation import SEED_RECIPE, keras_keywords
    from jaxscale.scaling import MODES
    from jaxscale.training.config import COMPUTE_DTYPES, OPTIMIZERS, PARALLEL, SCHEDULES
    from jaxscale.training.loop import INPUTS
    from jaxscale.training.models import MODELS

    parser = argparse.ArgumentParser(
        prog="jaxscale", description="Keras-style image scaling/augmentation in JAX, and a "
        "Flax CNN trainer that fuses them into the jitted train step.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def data_flags(p):
        p.add_argument("--dataset", default="mnist",
                       help="tfds dataset name (mnist, fashion_mnist, cifar10, ...)")
        p.add_argument("--data-dir", default=None,
                       help="folder with the dataset's original files (for MNIST the four "
                       "*-ubyte.gz files); default $JAXSCALE_DATA_DIR or the tfds cache")

    def distributed_flags(p):
        p.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize first (multi-process run); each "
                       "process loads its shard, only process 0 writes logs/checkpoints. "
                       "Implied on a Cloud TPU VM, under Slurm or Open MPI, and when "
                       "JAX_COORDINATOR_ADDRESS is set")
        p.add_argument("--coordinator-address", default=None,
                       help="host:port of process 0 (with --distributed)")
        p.add_argument("--num-processes", type=int, default=None,
                       help="number of processes (with --distributed)")
        p.add_argument("--process-id", type=int, default=None,
                       help="this process's index (with --distributed)")

    train = commands.add_parser(
        "train", help="train a CNN", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a Flax CNN on uint8 images, resident on the device or streamed "
        "from the host; scaling and augmentation run inside the jitted train step.")
    data_flags(train)
    train.add_argument("--model", default="bn_cnn", choices=sorted(MODELS),
                       help="registered model name")
    train.add_argument("--scaling", default="standardize", choices=sorted(MODES),
                       help="pixel scaling mode (featurewise modes are fitted on the "
                       "training images)")
    recipe = ", ".join(f"{name}={value}" for name, value in keras_keywords(SEED_RECIPE).items())
    train.add_argument("--augment", default="none", choices=("none", "seed"),
                       help=f"training augmentation: 'seed' is the tutorial recipe ({recipe})")
    train.add_argument("--epochs", type=int, default=5, help="passes over the training set")
    train.add_argument("--batch-size", type=int, default=64,
                       help="global batch size (split over devices)")
    train.add_argument("--eval-batch-size", type=int, default=1000,
                       help="test batch size (must split over devices)")
    train.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate")
    train.add_argument("--optimizer", default="adam", choices=OPTIMIZERS, help="optimizer")
    train.add_argument("--schedule", default="constant", choices=SCHEDULES,
                       help="learning-rate schedule")
    train.add_argument("--warmup-steps", type=int, default=0,
                       help="warm-up steps of warmup_cosine")
    train.add_argument("--weight-decay", type=float, default=0.0, help="weight decay")
    train.add_argument("--label-smoothing", type=float, default=0.0,
                       help="label smoothing of the training loss")
    train.add_argument("--compute-dtype", default="float32", choices=COMPUTE_DTYPES,
                       help="dtype of convolutions and matmuls (parameters stay float32)")
    train.add_argument("--steps-per-call", type=int, default=1,
                       help="train steps per compiled call on GPU/TPU (lax.scan); same numbers")
    train.add_argument("--input", default="auto", choices=INPUTS,
                       help="resident: the dataset on the device; streaming: read on the "
                       "host and copied ahead; auto: resident when it fits")
    train.add_argument("--seed", type=int, default=0,
                       help="seed of initialisation, order, dropout and augmentation")
    train.add_argument("--parallel", default="auto", choices=("auto", *PARALLEL),
                       help="data parallelism: pmap, jit over a Mesh, or none; auto is "
                       "mesh with several accelerators or processes, else none")
    train.add_argument("--devices", type=_devices, default="all",
                       help="local devices to use: 'all' or a count")
    train.add_argument("--train-split", default="train", help="training split (tfds slice)")
    train.add_argument("--test-split", default="test",
                       help="split evaluated after every epoch ('' for none)")
    train.add_argument("--output-dir", default="runs/latest",
                       help="where metrics.jsonl, summary.json and checkpoints go")
    train.add_argument("--checkpoint-every", type=int, default=0,
                       help="also checkpoint every N steps (0: only at the end)")
    train.add_argument("--no-checkpoint", action="store_true", help="write no checkpoints")
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest intact checkpoint in --output-dir; a "
                       "different config or training set is refused")
    train.add_argument("--allow-change", action="append", default=[], metavar="FIELD",
                       help="with --resume: accept this config field (e.g. epochs) or 'data' "
                       "differing from the checkpoint's (repeatable)")
    train.add_argument("--max-steps", type=int, default=None,
                       help="stop after this many steps (smoke runs)")
    train.add_argument("--log-every", type=int, default=50,
                       help="steps between progress-bar/metric updates")
    train.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard scalars to --output-dir/tb")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--compilation-cache", default=DEFAULT_COMPILATION_CACHE,
                       help="JAX's persistent compilation cache: a later run of the same "
                       "program loads it instead of compiling ('' turns it off; "
                       "$JAX_COMPILATION_CACHE_DIR wins)")
    distributed_flags(train)

    stats = commands.add_parser(
        "stats", help="print a dataset's per-channel mean/std, computed on the device",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data_flags(stats)
    stats.add_argument("--split", default="train", help="split (tfds slice)")
    stats.add_argument("--scope", default="channel", choices=("channel", "global"),
                       help="statistics per channel or over all pixels")
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")
    distributed_flags(stats)
    return parser


def _initialize(args) -> None:
    """Joins the multi-process job: when asked (--distributed), or when this process evidently
    is part of one (a Cloud TPU VM, Slurm, Open MPI, JAX_COORDINATOR_ADDRESS set), as
    `distributed.auto_initialize` decides; then `args.distributed` is True."""
    import jaxscale.training.distributed as distributed
    if args.distributed:
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    elif distributed.auto_initialize():
        args.distributed = True


def _load(args, split: str, *, shard: bool = False):
    """One split, whole (training: every process reads its rows itself) or, with `shard`,
    this process's part (statistics)."""
    import jaxscale.data.datasets as datasets
    if shard and args.distributed:
        return datasets.load_process_shard(args.dataset, split, data_dir=args.data_dir)
    return datasets.load_dataset(args.dataset, split, data_dir=args.data_dir)


def run_train(args) -> dict:
    import jax

    from jaxscale.training.config import TrainConfig
    from jaxscale.training.loop import train
    _initialize(args)
    config = TrainConfig(
        model=args.model, scaling=args.scaling, augment=None if args.augment == "none"
        else args.augment, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, optimizer=args.optimizer, schedule=args.schedule,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, seed=args.seed, parallel=args.parallel,
        devices=args.devices, compute_dtype=args.compute_dtype,
        steps_per_call=args.steps_per_call, eval_batch_size=args.eval_batch_size)
    train_data = _load(args, args.train_split)
    test_data = _load(args, args.test_split) if args.test_split else None
    out = Path(args.output_dir)
    main_process = jax.process_index() == 0
    if main_process:
        print(f"jaxscale train: {config.model} on {args.dataset} {args.train_split} "
              f"{train_data.images.shape}, scaling={args.scaling}, augment={args.augment}",
              flush=True)
    result = train(
        config, train_data, test_data,
        checkpoint_dir=None if args.no_checkpoint else out / "checkpoints",
        checkpoint_every=args.checkpoint_every, resume=args.resume,
        allow_changes=tuple(args.allow_change), metrics_path=out / "metrics.jsonl",
        progress=not args.no_progress, max_steps=args.max_steps, log_every=args.log_every,
        tensorboard_dir=out / "tb" if args.tensorboard else None, input=args.input)
    last = result.history[-1] if result.history else {}
    summary = {"config": result.config.to_dict(), "input": result.input,
               "steps": int(result.state.step), "final": last, "history": result.history}
    if main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print("summary:")
        print(f"  steps            {summary['steps']}")
        for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy",
                     "images_per_s"):
            value = last.get(name)
            print(f"  {name:16s} {'n/a' if value is None else f'{value:.4f}'}")
        print(f"  wrote            {out / 'metrics.jsonl'}, {out / 'summary.json'}"
              + ("" if args.no_checkpoint else f", {out / 'checkpoints'}"))
    return summary


def run_stats(args) -> dict:
    import jax
    import numpy as np

    from jaxscale.statistics import compute_stats
    _initialize(args)
    data = _load(args, args.split, shard=True)
    if args.distributed:
        from jaxscale.training.distributed import global_dataset_stats
        stats = global_dataset_stats(data.images, scope=args.scope)
    else:
        stats = compute_stats(data.images, scope=args.scope)
    mean = np.atleast_1d(np.asarray(stats.mean, np.float64))
    std = np.atleast_1d(np.asarray(stats.std, np.float64))
    out = {"dataset": args.dataset, "split": args.split, "count": int(np.asarray(stats.count)),
           "mean": mean.tolist(), "std": std.tolist(), "device": jax.devices()[0].platform}
    if jax.process_index() == 0:
        if args.json:
            print(json.dumps(out))
        else:
            print(f"{args.dataset} {args.split}: {out['count']} images, per "
                  f"{args.scope} on {out['device']}")
            for c, (m, s) in enumerate(zip(mean, std)):
                print(f"  channel {c}: mean {m:.6f}  std {s:.6f}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `jaxscale` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    # Before JAX allocates: XLA:CPU's per-step scratch buffers stay in the heap (see
    # jaxscale.cpu).
    tune_host_allocator()
    _log_to_stderr()
    if getattr(args, "compilation_cache", ""):
        use_compilation_cache(args.compilation_cache)
    try:
        if args.command == "train":
            run_train(args)
        else:
            run_stats(args)
    except (ValueError, OSError) as error:
        print(f"jaxscale {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


DEFAULT_COMPILATION_CACHE = "~/.cache/jaxscale/xla"


def use_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache in `directory`, unless the environment already
    chose one (JAX_COMPILATION_CACHE_DIR): compiled steps are reused by later runs."""
    import os

    import jax
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    jax.config.update("jax_compilation_cache_dir", str(Path(directory).expanduser()))


def _log_to_stderr() -> None:
    """jaxscale's own log lines (input chosen, resume, damaged checkpoints) on stderr."""
    logger = logging.getLogger("jaxscale")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is logged (it may be replaced)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        del value


if __name__ == "__main__":
    raise SystemExit(main())
