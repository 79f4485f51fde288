"""The training loop: `train(config, train_data, test_data)`.

    config = TrainConfig(model="bn_cnn", scaling="standardize", augment="seed", epochs=5)
    result = train(config, load_dataset("mnist"), load_dataset("mnist", "test"))

One code path for one device, pmap, a mesh and several processes, and for resident and
streamed input. A uint8 batch goes from disk to loss through `jaxscale.data.datasets` (or any
reader), `jaxscale.data.pipeline` (a source yields chunks of K steps: rows of the resident
dataset, or batches read on the host), `jaxscale.training.runners` (the compiled program for the
devices), `jaxscale.training.steps` (gather, augment, scale, forward, backward, update) and the
model in `jaxscale.training.models`.

Sections: setup (input, scaling, runner), restore (checkpoint, config check), the epoch,
evaluation, checkpoints and logs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxscale.data.pipeline import (
    HostSource,
    ReadOrder,
    ResidentSource,
    StreamOptions,
    as_reader,
    dataset_arrays,
    read_ahead,
)
from jaxscale.data.sharding import Placement, process_shard
from jaxscale.scaling import ScalingConfig, ScalingParams, fit_scaling, scaling_config
from jaxscale.statistics import empty_stats_for
import jaxscale.training.checkpoint as checkpoint
from jaxscale.training.config import TrainConfig, make_optimizer
from jaxscale.training.distributed import global_scaling_params, merge_blocks_in_order
from jaxscale.training.metrics import MetricsWriter, epoch_line
from jaxscale.training.runners import Runner, make_runner, resolve_parallel, select_devices
from jaxscale.training.steps import create_train_state

logger = logging.getLogger("jaxscale.training")

INPUTS = ("auto", "resident", "streaming")
# "auto" keeps a dataset resident while it takes at most this share of a device's memory.
RESIDENT_SHARE = 0.5
# The scaling is fitted on fixed blocks of rows of about this many bytes (one read each).
FIT_BLOCK_BYTES = 64 << 20


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
      state: the final TrainState (on the host, unreplicated).
      history: one dict per epoch: epoch, step, train_loss, train_accuracy, test_loss,
        test_accuracy (None without test data), seconds, images_per_s.
      scaling: (ScalingConfig, ScalingParams) used.
      config: the TrainConfig, with "auto" resolved.
      input: "resident" or "streaming".
    """

    state: Any
    history: list[dict]
    scaling: tuple[ScalingConfig, ScalingParams]
    config: TrainConfig
    input: str = "resident"


# ------------------------------------------------------------------------------------ setup

def choose_input(data, placement, input: str = "auto") -> str:
    """"resident" or "streaming" for `data` (a Dataset, an (images, labels) pair or a Reader).

    "auto": a Reader (records, image files) streams; arrays stay resident unless they would
    take more than `RESIDENT_SHARE` of a device's memory (when the device reports it).
    """
    if input not in INPUTS:
        raise ValueError(f"input must be one of {INPUTS}, got {input!r}")
    readable = hasattr(data, "read") and hasattr(data, "image_shape")
    if input == "resident" and readable:
        raise ValueError("input='resident' needs the dataset as arrays (a Dataset or "
                         "(images, labels)); a reader streams: use input='streaming'")
    if input != "auto":
        return input
    if readable:
        return "streaming"
    images, _ = dataset_arrays(data)
    return "resident" if fits_on_device(images.nbytes, placement) else "streaming"


def fits_on_device(nbytes: int, placement) -> bool:
    """Whether a dataset of `nbytes` of uint8 images may stay resident: at most
    `RESIDENT_SHARE` of a device's memory, when the device reports it (else True). Logs the
    reason when it does not fit."""
    budget = _device_memory(placement.devices[0])
    if budget is not None and nbytes > RESIDENT_SHARE * budget:
        logger.info("input: streaming (%.2f GB of images > %.0f%% of the device's %.1f GB)",
                    nbytes / 1e9, RESIDENT_SHARE * 100, budget / 1e9)
        return False
    return True


def _device_memory(device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend reports memory
        return None
    return None if not stats else stats.get("bytes_limit")


def make_source(data, input: str, placement, options: StreamOptions | None = None
                ) -> ResidentSource | HostSource:
    """The source of `data` for `input` ("resident" or "streaming") on `placement`.

    Streaming reads through Grain (`jaxscale.data.streaming.GrainSource`, one persistent
    iterator) when `options.loader` is "grain", or "auto" and grain is importable; else
    through `HostSource`'s read-ahead threads. Both give the same batches."""
    if input == "resident":
        return ResidentSource(data, placement=placement)
    options = options or StreamOptions()
    if options.loader != "threads":
        try:
            from jaxscale.data.streaming import GrainSource
        except ImportError:
            if options.loader == "grain":
                raise
            if options.worker_count:
                raise ValueError(f"worker_count={options.worker_count} needs grain, which is "
                                 "not importable (Python >= 3.11: pip install "
                                 "'jaxscale[streaming]')") from None
        else:
            return GrainSource(data, placement=placement, options=options)
    return HostSource(data, placement=placement, options=options)


def describe_source(source) -> str:
    """"resident", or how a host source reads ("streaming (grain, 0 workers, 2 threads)")."""
    if source.kind == "resident":
        return "resident"
    o = source.options
    workers = f"{o.worker_count} workers, " if source.loader == "grain" else ""
    return f"streaming ({source.loader}, {workers}{o.read_threads} threads)"


def num_classes_of(data) -> int:
    """`data.num_classes` when it has one, else max(label) + 1."""
    known = getattr(data, "num_classes", None)
    if known:
        return int(known)
    return int(np.max(np.asarray(dataset_arrays(data)[1]))) + 1


def data_fingerprint(data) -> dict:
    """What identifies a training set for `--resume`: size, image shape, classes, and the
    dataset's name and split when it has them."""
    reader = as_reader(data)
    out = {"num_examples": len(reader), "image_shape": list(reader.image_shape),
           "num_classes": num_classes_of(data)}
    for name in ("name", "split"):
        if getattr(data, name, None) is not None:
            out[name] = getattr(data, name)
    return out


def fit_training_scaling(scaling: ScalingConfig, data, *, progress: bool = False
                         ) -> ScalingParams:
    """`fit_scaling` over the training set in one pass, merged over processes, exactly.

    The rows are cut into fixed blocks of about `FIT_BLOCK_BYTES` (the same cut for arrays
    and readers, and whatever the process count); each process reads its contiguous run of
    blocks (`process_shard` of the blocks), one `read` per block with the next one read
    ahead, fits each block on its own and the block statistics are merged in row order
    (`distributed.merge_blocks_in_order`). So the fitted numbers are the same bits for
    resident and streamed input and for 1 or P processes. The dataset is never held in
    host memory (one block or two at a time). `progress` shows a bar on process 0.
    """
    if not scaling.needs_fit:
        return ScalingParams()
    reader = as_reader(data)
    image_shape = tuple(reader.image_shape)
    per_block = max(1, FIT_BLOCK_BYTES // max(1, int(np.prod(image_shape))))
    starts = range(0, len(reader), per_block)
    mine = [(start, min(start + per_block, len(reader))) for start in
            starts[process_shard(len(starts), drop_remainder=False)]]
    bar = None
    if progress and jax.process_index() == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(b - a for a, b in mine), desc="fit scaling", unit="img")

    def read(block):
        images = np.asarray(reader.read(np.arange(*block))[0])
        if bar is not None:
            bar.update(len(images))
        return images

    try:
        if scaling.zca_whitening:  # its co-moments do not merge: one fold over the blocks
            return global_scaling_params(scaling, read_ahead(read, mine, 1))
        blocks = [fit_scaling(scaling, images).stats for images in read_ahead(read, mine, 1)]
    finally:
        if bar is not None:
            bar.close()
    stats = merge_blocks_in_order(blocks, empty_stats_for(image_shape,
                                                          scope=scaling.statistics_scope))
    return ScalingParams(mean=stats.mean if scaling.featurewise_center else None,
                         std=stats.std if scaling.featurewise_std_normalization else None,
                         stats=stats)


@dataclasses.dataclass
class _Run:
    """Everything a run's epochs need, built once by `_setup`."""

    config: TrainConfig
    runner: Runner
    source: Any
    test_source: Any
    scaling: ScalingConfig
    scaling_params: ScalingParams
    order: ReadOrder
    total_steps: int
    input: str
    data: dict
    tx: Any

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch


def _setup(config: TrainConfig, train_data, test_data, *, input: str,
           scaling_params: ScalingParams | None, max_steps: int | None,
           checkpoint_dir, resume: bool, progress: bool,
           stream_options: StreamOptions | None) -> _Run:
    kind = resolve_parallel(config.parallel, config.devices)
    config = config.replace(parallel=kind)
    if jax.process_count() > 1 and kind != "mesh":
        raise ValueError("a run over several processes needs parallel='mesh' (or 'auto')")
    placement = _placement(kind, config.devices)
    chosen = choose_input(train_data, placement, input)
    source = make_source(train_data, chosen, placement, stream_options)
    if source.num_examples < config.batch_size:
        raise ValueError(f"{source.num_examples} training images < batch_size "
                         f"{config.batch_size}")
    test_source = None
    if test_data is not None:
        # a streamed run streams its test set too; a resident one keeps it resident if it can
        test_input = choose_input(test_data, placement,
                                  "streaming" if chosen == "streaming" else "auto")
        test_source = make_source(test_data, test_input, placement, stream_options)
        if test_source.image_shape != source.image_shape:
            raise ValueError(f"test images {test_source.image_shape} differ from training "
                             f"images {source.image_shape}")
    scaling = scaling_config(config.scaling)
    if scaling_params is None and resume and checkpoint_dir is not None:
        scaling_params = _saved_scaling(checkpoint_dir, scaling)
    if scaling_params is None:
        scaling_params = fit_training_scaling(scaling, train_data, progress=progress)
    # the trainer's order: shuffled every epoch, the last partial batch dropped
    order = ReadOrder(source.num_examples, config.batch_size, config.seed, shuffle=True,
                      drop_remainder=True)
    total = order.steps_per_epoch * config.epochs
    tx = make_optimizer(config, total)
    runner = make_runner(kind, config, tx, scaling, scaling_params,
                         num_classes=num_classes_of(train_data),
                         devices=list(placement.devices), train_take=source.take,
                         eval_take=test_source.take if test_source else ResidentSource.take)
    logger.info("input: %s, %d examples of %s; parallel=%s over %d %s device(s)",
                describe_source(source), source.num_examples, source.image_shape, kind,
                placement.count, placement.devices[0].platform)
    return _Run(config=config, runner=runner, source=source, test_source=test_source,
                scaling=scaling, scaling_params=scaling_params, order=order,
                total_steps=total if max_steps is None else min(total, max_steps),
                input=chosen, data=data_fingerprint(train_data), tx=tx)


def _placement(kind: str, devices: int | None) -> Placement:
    """The placement a runner of `kind` uses (see `runners.make_runner`)."""
    if kind == "mesh" and jax.process_count() > 1:
        return Placement.create("mesh")
    chosen = select_devices(1 if kind == "none" else devices)
    return Placement({"none": "single"}.get(kind, kind), tuple(chosen))


def _saved_scaling(directory, scaling: ScalingConfig) -> ScalingParams | None:
    """The scaling saved with the checkpoints, when it is intact and of the same config."""
    if checkpoint.latest_checkpoint(directory) is None:
        return None
    try:
        saved_config, params = checkpoint.load_scaling_for(directory)
    except checkpoint.CheckpointError as error:
        logger.warning("%s; fitting the scaling again (it is rewritten at the next "
                       "checkpoint)", error)
        return None
    if saved_config.replace(preprocessing_function=None) != scaling.replace(
            preprocessing_function=None):
        return None  # a changed --scaling: the config check refuses it with the details
    return params


# ---------------------------------------------------------------------------------- restore

@dataclasses.dataclass
class _Progress:
    """Where a run stands: its step, the finished epochs, the running sums of the current one."""

    step: int
    history: list[dict]
    sums: dict | None  # host floats of the current epoch's sums, None at an epoch start


def _restore(run: _Run, host_state, checkpoint_dir, allow_changes: tuple[str, ...]):
    """(state, progress) from the newest intact checkpoint, or None when there is none.

    Raises:
      ValueError: the checkpoint was written by a different run (config or training data),
        listing every difference.
    """
    found = checkpoint.restore_latest(checkpoint_dir, host_state)
    if found is None:
        return None
    path, state, meta = found
    differences = run.config.differences(meta.get("config", {}), allow=allow_changes)
    saved_data = meta.get("data")
    if saved_data is not None and "data" not in allow_changes:
        for name in sorted(set(saved_data) | set(run.data)):
            if saved_data.get(name) != run.data.get(name):
                differences.append(f"data.{name}: {saved_data.get(name)!r} -> "
                                   f"{run.data.get(name)!r}")
    if differences:
        raise ValueError(
            f"--resume: {path} was written by a different run; refusing to continue it. "
            "Differences (saved -> requested): " + "; ".join(differences) + ". Use another "
            "output directory, or allow the change explicitly (allow_changes / "
            "--allow-change FIELD) if you mean it.")
    step = int(np.asarray(state.step))
    saved_iterator = meta.get("data_iterator")
    if saved_iterator is not None and not {"batch_size", "seed", "data"} & set(allow_changes):
        step = _iterator_step(run, path, saved_iterator, step)
    sums = meta.get("epoch_sums")
    # finished epochs only: a partial record (a run stopped by max_steps) is superseded
    history = [h for h in meta.get("history", [])
               if h["step"] <= step and h["step"] % run.steps_per_epoch == 0]
    logger.info("resuming from %s (step %d)", path, step)
    return state, _Progress(step=step, history=history, sums=sums)


def _iterator_step(run: _Run, path, saved: dict, step: int) -> int:
    """The global step at which the saved data iterator state resumes reading, checked
    against the run's order and the train state's step."""
    if "step_in_epoch" in saved and "step" not in saved:  # saved before the state had a
        saved = dict(dataclasses.asdict(run.order), **saved, step=saved["step_in_epoch"])
    try:
        epoch, in_epoch = run.order.position(saved)
    except ValueError as error:
        raise ValueError(f"--resume: {path} cannot continue this run's input: {error}") from None
    resumes = epoch * run.steps_per_epoch + in_epoch
    if resumes != step:
        raise ValueError(f"--resume: {path} is inconsistent: its data iterator resumes at "
                         f"epoch {epoch} step {in_epoch} (global step {resumes}), its train "
                         f"state is at step {step}")
    return resumes


# -------------------------------------------------------------------------------- the epoch

def _chunk_breaks(epoch_start: int, first: int, last: int, every: int) -> tuple[int, ...]:
    """Steps within an epoch (starting at global step `epoch_start`) where a checkpoint every
    `every` steps falls, in (first, last)."""
    if not every:
        return ()
    return tuple(s - epoch_start for s in range((epoch_start + first) // every * every + every,
                                                epoch_start + last, every))


def _host_floats(sums) -> dict:
    """Running sums (replicated float32[] per name) as host floats."""
    return {k: float(np.asarray(v.addressable_data(0)).reshape(-1)[0]) for k, v in
            sums.items()}


def _means(sums) -> dict:
    host = _host_floats(sums)
    steps = max(host.pop("steps"), 1.0)
    return {k: v / steps for k, v in host.items()}


def evaluate(runner: Runner, state, source, batch_size: int, *, steps_per_call: int = 16
             ) -> dict:
    """Mean loss and accuracy of a placed `state` over every example of `source` (padded
    batches, padding masked), `steps_per_call` eval steps per compiled call."""
    sums = runner.eval_sums()
    for chunk in source.epoch(0, 0, batch_size, shuffle=False, drop_remainder=False,
                              steps_per_call=steps_per_call):
        sums = runner.eval(state, sums, source.data, chunk)
    total = _host_floats(sums)
    count = max(total["count"], 1.0)
    return {"loss": total["loss_sum"] / count, "accuracy": total["correct"] / count}


def train(config: TrainConfig, train_data, test_data=None, *,
          scaling_params: ScalingParams | None = None,
          checkpoint_dir: str | Path | None = None, checkpoint_every: int = 0,
          resume: bool = False, allow_changes: tuple[str, ...] = (),
          metrics_path: str | Path | None = None, progress: bool = False,
          max_steps: int | None = None, log_every: int = 50,
          tensorboard_dir: str | Path | None = None, input: str = "auto",
          stream_options: StreamOptions | None = None) -> TrainResult:
    """Trains `config.model` on uint8 images: resident on the device(s), or streamed.

    Args:
      config: the run's TrainConfig.
      train_data: a `Dataset`, (images uint8[N, H, W, C], labels int[N]), or a reader
        (`jaxscale.data.pipeline.Reader`: records, image folders). Every process of a
        multi-process job passes the whole training set; each reads only its rows.
      test_data: the same kinds, evaluated after every epoch, or None.
      scaling_params: fitted scaling numbers; None fits them on the training images (or, on
        resume, takes those saved with the checkpoints).
      checkpoint_dir: where checkpoints (and the fitted scaling) go; None: no checkpoints.
      checkpoint_every: also save every this many steps (0: only at the end of the run).
      resume: continue from the newest intact checkpoint in `checkpoint_dir` (a damaged one is
        reported and the previous one used). The run must be the same: a different config or
        training set is refused with the list of differences, except fields named in
        `allow_changes` (and execution-only fields: parallel, devices, steps_per_call,
        eval_batch_size). The result equals the uninterrupted run's, metrics included.
      allow_changes: TrainConfig fields (or "data") a resumed run may change.
      metrics_path: JSON lines, one per epoch and per `log_every` steps (on resume, records
        after the checkpoint are dropped first).
      progress: a tqdm bar with step, loss, accuracy, images/s.
      max_steps: stop after this many steps in total (the schedule still spans every epoch).
      log_every: steps between progress/metric updates (each one reads the device).
      tensorboard_dir: also write TensorBoard scalars here (needs tensorflow).
      input: "resident", "streaming" or "auto" (see `choose_input`); the numbers are the same.
      stream_options: how a streamed input is read (`StreamOptions`: Grain or threads,
        worker processes, read threads); never changes the batches.

    Returns:
      TrainResult.
    """
    run = _setup(config, train_data, test_data, input=input, scaling_params=scaling_params,
                 max_steps=max_steps, checkpoint_dir=checkpoint_dir, resume=resume,
                 progress=progress, stream_options=stream_options)
    try:
        return _train(run, checkpoint_dir=checkpoint_dir,
                      checkpoint_every=checkpoint_every, resume=resume,
                      allow_changes=allow_changes, metrics_path=metrics_path,
                      progress=progress, log_every=log_every, tensorboard_dir=tensorboard_dir)
    finally:
        for source in (run.source, run.test_source):
            if source is not None:
                source.close()


def _train(run: _Run, *, checkpoint_dir, checkpoint_every, resume, allow_changes,
           metrics_path, progress, log_every, tensorboard_dir) -> TrainResult:
    config, runner = run.config, run.runner
    host_state = create_train_state(runner.model, run.tx, run.source.image_shape,
                                    jax.random.fold_in(jax.random.PRNGKey(config.seed),
                                                       1 << 20))
    position = _Progress(step=0, history=[], sums=None)
    restored = None
    if checkpoint_dir is not None and resume:
        restored = _restore(run, host_state, checkpoint_dir, tuple(allow_changes))
        if restored is not None:
            host_state, position = restored
    state = runner.put_state(host_state)
    main = jax.process_index() == 0
    saver = _Saver(run, checkpoint_dir if main else None, position.history)
    log = _Log(run, metrics_path if main else None, tensorboard_dir if main else None,
               progress=progress and main, step=position.step,
               resumed=restored is not None)
    step, sums = position.step, None
    try:
        while step < run.total_steps:
            epoch = step // run.steps_per_epoch
            if position.sums is not None and step % run.steps_per_epoch:
                sums = runner.put_state({k: np.float32(v) for k, v in position.sums.items()})
            else:
                sums = runner.train_sums()
            position.sums = None
            state, sums, step = _train_epoch(run, state, sums, epoch, step, saver, log,
                                             checkpoint_every=checkpoint_every,
                                             log_every=log_every)
        saver.save(state, None if step % run.steps_per_epoch == 0 else sums, step)
        if checkpoint_dir is not None and jax.process_count() > 1:
            # Process 0 alone writes; the others return once it is on disk, so a resume that
            # follows (in this job) finds it complete on every process, not one step behind.
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("jaxscale train: checkpoint written")
    finally:
        log.close()
    return TrainResult(state=runner.get_state(state), history=position.history,
                       scaling=(run.scaling, run.scaling_params), config=config,
                       input=run.input)


def _train_epoch(run: _Run, state, sums, epoch: int, step: int, saver: "_Saver",
                 log: "_Log", *, checkpoint_every: int, log_every: int):
    """Trains from global `step` to the end of `epoch` (or of the run), checkpointing and
    logging between chunks, then evaluates and records the epoch. Returns (state, sums,
    step)."""
    config, runner = run.config, run.runner
    epoch_start = epoch * run.steps_per_epoch
    first, last = step - epoch_start, min(run.steps_per_epoch, run.total_steps - epoch_start)
    started = time.perf_counter()
    key = runner.put_key(config.seed)
    chunks = run.source.epoch(config.seed, epoch, config.batch_size, drop_remainder=True,
                              start=first, stop=last, steps_per_call=config.steps_per_call,
                              breaks=_chunk_breaks(epoch_start, first, last, checkpoint_every))
    means = None
    for chunk in chunks:
        state, sums = runner.train(state, sums, run.source.data, chunk, key)
        done = int(jax.tree_util.tree_leaves(chunk)[0].shape[1 if runner.kind == "pmap" else 0])
        previous, step = step, step + done
        if checkpoint_every and step // checkpoint_every > previous // checkpoint_every \
                and step < run.total_steps:
            saver.save(state, sums, step)
        # a stop by max_steps reads the means (for the partial epoch's record) but logs no
        # step record off the log_every grid: a resumed run would not have it
        logged = step // log_every > previous // log_every or \
            step == epoch_start + run.steps_per_epoch
        read = logged or step == epoch_start + last
        if read:
            means = _means(sums)
        log.step(step, epoch, means if logged else None, finished=read)
    seconds = time.perf_counter() - started
    record = {"epoch": epoch + 1, "step": step, "train_loss": means["loss"],
              "train_accuracy": means["accuracy"], "test_loss": None, "test_accuracy": None,
              "seconds": seconds, "images_per_s": (last - first) * config.batch_size / seconds}
    if run.test_source is not None:
        result = evaluate(runner, state, run.test_source, config.eval_batch_size)
        record.update(test_loss=result["loss"], test_accuracy=result["accuracy"])
    saver.history.append(record)
    # an epoch cut short by max_steps is recorded as such; a resumed run supersedes it
    log.epoch(record, finished=step == epoch_start + run.steps_per_epoch)
    return state, sums, step


class _Saver:
    """Checkpoints of a run (process 0's job; `directory` None on the others)."""

    def __init__(self, run: _Run, directory, history: list[dict]):
        self.run, self.directory, self.history = run, directory, history

    def save(self, state, sums, step: int) -> None:
        """The state at `step` with the run's metadata and the current epoch's running sums
        (None at an epoch's end)."""
        if self.directory is None:
            return
        run = self.run
        epoch = step // run.steps_per_epoch
        # the input's position, saved with the train state it belongs to: the state a Grain
        # stream takes (set_state), the same for resident and streamed input
        meta = {"config": run.config.to_dict(), "data": run.data, "history": self.history,
                "epoch_sums": None if sums is None else _host_floats(sums),
                "data_iterator": run.order.state(epoch, step - epoch * run.steps_per_epoch)}
        checkpoint.save_checkpoint(self.directory, run.runner.get_state(state), meta=meta,
                                   scaling=(run.scaling, run.scaling_params))


class _Log:
    """The run's metrics file, TensorBoard scalars and progress bar."""

    def __init__(self, run: _Run, metrics_path, tensorboard_dir, *, progress: bool,
                 step: int, resumed: bool):
        self.batch_size = run.config.batch_size
        self.writer = MetricsWriter(metrics_path, tensorboard_dir,
                                    resume_step=step if resumed else None)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=run.total_steps, initial=step, unit="step",
                            dynamic_ncols=True)
        self.window = (time.perf_counter(), step)

    def step(self, step: int, epoch: int, means: dict | None, *, finished: bool) -> None:
        """Progress to `step`; with `means`, a step record and the bar's figures.

        The bar counts finished steps: it moves when `finished` (the host has just read the
        running sums, so every step up to `step` is done), not at each dispatch, which runs
        ahead of the device (the bar then raced ahead and waited at every log point)."""
        if self.bar is not None and finished:
            self.bar.update(step - self.bar.n)
        if means is None:
            return
        now = time.perf_counter()
        rate = (step - self.window[1]) * self.batch_size / max(now - self.window[0], 1e-9)
        self.window = (now, step)
        if self.bar is not None:
            self.bar.set_postfix(epoch=epoch + 1, loss=f"{means['loss']:.4f}",
                                 acc=f"{means['accuracy']:.4f}", img_s=f"{rate:.0f}")
        self.writer.write({"kind": "step", "step": step, "epoch": epoch + 1,
                           "train_loss": means["loss"], "train_accuracy": means["accuracy"],
                           "images_per_s": rate})

    def epoch(self, record: dict, *, finished: bool) -> None:
        self.writer.write({"kind": "epoch" if finished else "partial_epoch", **record})
        if self.bar is not None:
            self.bar.write(epoch_line(record))
        else:  # no bar to write under: the log has it (the CLI shows jaxscale's INFO lines)
            logger.info("%s", epoch_line(record))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.close()
