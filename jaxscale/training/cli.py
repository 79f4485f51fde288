"""The `jaxscale` command line: `jaxscale train ...` and `jaxscale stats ...`.

For example::

    jaxscale train --dataset mnist --model bn_cnn --scaling standardize --augment seed \\
        --epochs 5 --batch-size 64 --devices all
    jaxscale train --dataset cifar10 --input streaming        # raw records in the cache
    jaxscale train --image-folder photos/ --image-size 224 224 --validation-split 0.1
    jaxscale stats --dataset mnist
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from jaxscale.cpu import tune_host_allocator

if TYPE_CHECKING:
    from jaxscale.training.config import TrainConfig


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


# `jaxscale train` flags that set a TrainConfig field (the flag's dest is the field's name)
CONFIG_FLAGS = ("model", "scaling", "augment", "epochs", "batch_size", "eval_batch_size",
                "learning_rate", "optimizer", "schedule", "warmup_steps", "weight_decay",
                "label_smoothing", "compute_dtype", "steps_per_call", "seed", "parallel",
                "devices")


def build_parser(*, config_defaults: bool = True) -> argparse.ArgumentParser:
    """The argument parser (every flag documented in --help).

    config_defaults=False leaves the CONFIG_FLAGS that are not given out of the parsed
    namespace (how `main` learns which flags override a --recipe).
    """
    from jaxscale.augmentation import SEED_RECIPE, keras_keywords
    from jaxscale.data.datasets import SOURCES
    from jaxscale.scaling import MODES
    from jaxscale.training.config import COMPUTE_DTYPES, OPTIMIZERS, PARALLEL, SCHEDULES
    from jaxscale.data.pipeline import LOADERS
    from jaxscale.training.loop import INPUTS
    from jaxscale.training.models import MODELS
    from jaxscale.training.recipes import RECIPES

    def default(value):
        return value if config_defaults else argparse.SUPPRESS

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
        p.add_argument("--source", default="auto", choices=SOURCES,
                       help="how a split is read: tfds (tensorflow-datasets, prepared "
                       "offline from --data-dir), raw (MNIST / Fashion-MNIST's IDX files "
                       "read with NumPy: no TensorFlow import, seconds sooner; the examples "
                       "come in the files' order, tfds' prepared order differs), auto: tfds "
                       "when installed")

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
    train.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                       help="start from a named config (jaxscale.training.recipes: "
                       "speedrun99 / speedrun995 are make speedrun's recipes for 99.0 / 99.5 "
                       "%% MNIST); the model, optimizer and schedule flags given as well "
                       "override its fields")
    train.add_argument("--model", default=default("bn_cnn"), choices=sorted(MODELS),
                       help="registered model name")
    train.add_argument("--scaling", default=default("standardize"), choices=sorted(MODES),
                       help="pixel scaling mode (featurewise modes are fitted on the "
                       "training images)")
    recipe = ", ".join(f"{name}={value}" for name, value in keras_keywords(SEED_RECIPE).items())
    train.add_argument("--augment", default=default("none"), choices=("none", "seed"),
                       help=f"training augmentation: 'seed' is the tutorial recipe ({recipe})")
    train.add_argument("--epochs", type=int, default=default(5),
                       help="passes over the training set")
    train.add_argument("--batch-size", type=int, default=default(64),
                       help="global batch size (split over devices)")
    train.add_argument("--eval-batch-size", type=int, default=default(1000),
                       help="test batch size (must split over devices)")
    train.add_argument("--learning-rate", type=float, default=default(1e-3),
                       help="peak learning rate")
    train.add_argument("--optimizer", default=default("adam"), choices=OPTIMIZERS,
                       help="optimizer")
    train.add_argument("--schedule", default=default("constant"), choices=SCHEDULES,
                       help="learning-rate schedule")
    train.add_argument("--warmup-steps", type=int, default=default(0),
                       help="warm-up steps of warmup_cosine and onecycle")
    train.add_argument("--weight-decay", type=float, default=default(0.0), help="weight decay")
    train.add_argument("--label-smoothing", type=float, default=default(0.0),
                       help="label smoothing of the training loss")
    train.add_argument("--compute-dtype", default=default("float32"), choices=COMPUTE_DTYPES,
                       help="dtype of convolutions and matmuls (parameters stay float32)")
    train.add_argument("--steps-per-call", type=int, default=default(1),
                       help="train steps per compiled call on GPU/TPU (lax.scan); same numbers")
    train.add_argument("--input", default="auto", choices=INPUTS,
                       help="resident: the dataset on the device; streaming: read on the "
                       "host and copied ahead (a tfds dataset from raw uint8 record files "
                       "written once into the cache, an image folder from its files); auto: "
                       "resident unless its images take more than half a device's memory "
                       "(image folders stream)")
    train.add_argument("--image-folder", default=None, metavar="DIR",
                       help="train on a folder of JPEG/PNG/... files with one subfolder per "
                       "class (as Keras' flow_from_directory) instead of --dataset")
    train.add_argument("--image-size", type=int, nargs=2, default=(256, 256),
                       metavar=("H", "W"), help="with --image-folder: every image is "
                       "decoded and resized (bilinear) to H x W")
    train.add_argument("--color-mode", default="rgb", choices=("rgb", "grayscale", "rgba"),
                       help="with --image-folder: channels to decode to")
    train.add_argument("--validation-split", type=float, default=0.0,
                       help="with --image-folder: hold out this fraction of each class "
                       "folder's sorted files as the test set (as flow_from_directory's "
                       "subset='validation')")
    train.add_argument("--loader", default="auto", choices=LOADERS,
                       help="how streamed batches are read: grain (one persistent Grain "
                       "iterator), threads (no Grain), auto: grain when installed; the "
                       "batches are the same")
    train.add_argument("--stream-workers", type=int, default=0,
                       help="Grain worker processes reading batches (0: read in this "
                       "process; they help only when reading holds the GIL)")
    train.add_argument("--stream-threads", type=int, default=2,
                       help="threads reading batches in each process")
    train.add_argument("--seed", type=int, default=default(0),
                       help="seed of initialisation, order, dropout and augmentation")
    train.add_argument("--parallel", default=default("auto"), choices=("auto", *PARALLEL),
                       help="data parallelism: pmap, jit over a Mesh, or none; auto is "
                       "mesh with several accelerators or processes, else none")
    train.add_argument("--devices", type=_devices, default=default("all"),
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
        return datasets.load_process_shard(args.dataset, split, data_dir=args.data_dir,
                                           source=args.source)
    return datasets.load_dataset(args.dataset, split, data_dir=args.data_dir,
                                 source=args.source)


def _tfds_image_bytes(args, split: str) -> int | None:
    """Bytes of a tfds split's uint8 images, from its metadata (None when unknown)."""
    import math

    import jaxscale.data.datasets as datasets
    try:
        info = datasets.tfds_builder(args.dataset, args.data_dir).info
        image_key = info.supervised_keys[0]
        return int(info.splits[split].num_examples) * math.prod(
            info.features[image_key].shape)
    except (ImportError, KeyError, TypeError, ValueError, IndexError):
        return None


def _tfds_input(args) -> str:
    """"resident" or "streaming" for --dataset: --input, or for "auto" whether the training
    images fit on the device (`loop.fits_on_device`, from the tfds metadata)."""
    if args.input != "auto":
        return args.input
    if args.source == "raw":
        return "resident"  # MNIST-sized IDX files
    from jaxscale.data.sharding import Placement
    from jaxscale.training.loop import fits_on_device
    nbytes = _tfds_image_bytes(args, args.train_split)
    if nbytes is None or fits_on_device(nbytes, Placement.create("single")):
        return "resident"
    return "streaming"


def _records(args, split: str):
    """A tfds split as raw uint8 record files in the cache (written on the first run), or,
    without grain / tensorflow-datasets, the split loaded into host memory."""
    if args.source == "raw":
        return _load(args, split)
    try:
        from jaxscale.data.streaming import tfds_records
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        return _load(args, split)
    return tfds_records(args.dataset, split, data_dir=args.data_dir,
                        progress=not args.no_progress)


def _image_folder(args):
    """(train, test or None) from --image-folder: readers of the files (streaming), or
    with --input resident the decoded images in host memory."""
    import os

    from jaxscale.data.image_files import ImageFileReader, list_directory, load_image_folder
    folder, split = args.image_folder, args.validation_split
    if not 0.0 <= split < 1.0:
        raise ValueError(f"--validation-split must be in [0, 1), got {split}")
    size = tuple(args.image_size)
    if args.input == "resident":
        options = dict(image_size=size, color_mode=args.color_mode)
        if not split:
            return load_image_folder(folder, **options), None
        return (load_image_folder(folder, validation_split=split, subset="training",
                                  **options),
                load_image_folder(folder, validation_split=split, subset="validation",
                                  **options))

    def reader(part, name):
        listing = list_directory(folder, split=part)
        if not listing.filenames:
            raise ValueError(f"no image files in the class subfolders of {folder!r}"
                             + (f" for the {name} subset" if part else ""))
        files = ImageFileReader([os.path.join(folder, f) for f in listing.filenames],
                                listing.classes, target_size=size,
                                color_mode=args.color_mode, interpolation="bilinear",
                                num_classes=len(listing.class_indices))
        files.name, files.split = os.path.basename(os.path.normpath(folder)), name
        return files

    if not split:
        return reader(None, "all"), None
    return reader((split, 1.0), "training"), reader((0.0, split), "validation")


def _shape(data) -> tuple:
    images = getattr(data, "images", None)
    return tuple(images.shape) if images is not None else (len(data), *data.image_shape)


def train_config(args) -> TrainConfig:
    """The TrainConfig of parsed `jaxscale train` arguments: the CONFIG_FLAGS' values, or with
    --recipe the recipe's config with the flags in `args.given_flags` (those on the command
    line) replacing its fields."""
    from jaxscale.training.config import TrainConfig
    from jaxscale.training.recipes import recipe
    fields = {name: getattr(args, name) for name in CONFIG_FLAGS}
    if fields["augment"] == "none":
        fields["augment"] = None
    if not args.recipe:
        return TrainConfig(**fields)
    # how the run is spread over devices is the command line's (default: auto), not a recipe's
    given = getattr(args, "given_flags", frozenset(CONFIG_FLAGS)) | {"parallel", "devices"}
    return recipe(args.recipe).replace(**{name: fields[name] for name in CONFIG_FLAGS
                                         if name in given})


def run_train(args) -> dict:
    import jax

    from jaxscale.data.pipeline import StreamOptions
    from jaxscale.training.loop import train
    _initialize(args)
    config = train_config(args)
    options = StreamOptions(loader=args.loader, worker_count=args.stream_workers,
                            read_threads=args.stream_threads)
    if args.image_folder is not None:
        train_data, test_data = _image_folder(args)
        what, split = args.image_folder, train_data.split
    else:
        load = _records if _tfds_input(args) == "streaming" else _load
        train_data = load(args, args.train_split)
        test_data = load(args, args.test_split) if args.test_split else None
        what, split = args.dataset, args.train_split
    out = Path(args.output_dir)
    main_process = jax.process_index() == 0
    if main_process:
        augment = "none" if config.augment is None else (
            config.augment if isinstance(config.augment, str) else "recipe's")
        print(f"jaxscale train: {config.model} on {what} {split} {_shape(train_data)}, "
              + (f"recipe={args.recipe}, " if args.recipe else "")
              + f"scaling={config.scaling}, augment={augment}", flush=True)
    result = train(
        config, train_data, test_data,
        checkpoint_dir=None if args.no_checkpoint else out / "checkpoints",
        checkpoint_every=args.checkpoint_every, resume=args.resume,
        allow_changes=tuple(args.allow_change), metrics_path=out / "metrics.jsonl",
        progress=not args.no_progress, max_steps=args.max_steps, log_every=args.log_every,
        tensorboard_dir=out / "tb" if args.tensorboard else None,
        input=args.input, stream_options=options)
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
    if args.command == "train":  # the config flags on the command line (they beat a recipe)
        args.given_flags = frozenset(vars(build_parser(config_defaults=False).parse_args(
            argv))) & set(CONFIG_FLAGS)
    # Before JAX allocates: XLA:CPU's per-step scratch buffers stay in the heap (see
    # jaxscale.cpu).
    tune_host_allocator()
    _log_to_stderr()
    if getattr(args, "compilation_cache", ""):
        use_compilation_cache(args.compilation_cache)
    # Our lines once: a library (tfds, grain) may have given the root logger a handler too.
    logger = logging.getLogger("jaxscale")
    propagate, logger.propagate = logger.propagate, False
    try:
        if args.command == "train":
            run_train(args)
        else:
            run_stats(args)
    except (ValueError, OSError) as error:
        print(f"jaxscale {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        logger.propagate = propagate
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
