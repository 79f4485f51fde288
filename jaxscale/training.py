"""Pure train and eval steps for the Flax classifiers, and the training loop around them.

The steps take the *uint8* batch straight from device-resident data: augmentation (train only,
when configured) and scaling run inside the same jitted step as the forward and backward pass,
so there is no separate preprocessing pass and no host round trip per step.

    config = TrainConfig(model="bn_cnn", scaling="standardize", augment="seed", epochs=5)
    result = train(config, load_dataset("mnist"), load_dataset("mnist", "test"))

Randomness: one run key `PRNGKey(seed)`; each step folds in `state.step` (so a resumed run
draws the same dropout masks and augmentations as an uninterrupted one) and splits it into an
augmentation key and a dropout key; epoch orders come from `pipeline.epoch_key(seed, epoch)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxscale import models, pipeline
from jaxscale.scaling import ScalingConfig, ScalingParams, fit_scaling, scale, scaling_config

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
PARALLEL = ("none", "pmap", "mesh")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run's numbers.

    Attributes:
      model: a `models.MODELS` name ("small_cnn", "bn_cnn").
      scaling: a `jaxscale.scaling.MODES` name ("none", "normalize", "center",
        "standardize", ...) or a ScalingConfig.
      augment: None, "seed" (the tutorial's recipe, `augmentation.SEED_RECIPE`) or an
        `augmentation.AugmentConfig`; applied to training batches only.
      epochs: passes over the training set.
      batch_size: global batch (split over devices when parallel); the last partial batch of
        an epoch is dropped so every step has one shape.
      learning_rate: peak learning rate.
      optimizer: "adam" (default, as the tutorial), "adamw" or "sgd" (momentum 0.9).
      schedule: "constant", "cosine" (decay to 0 over the run) or "warmup_cosine".
      warmup_steps: linear warm-up steps for "warmup_cosine".
      weight_decay: decoupled weight decay (adamw; added to the gradient for adam/sgd).
      seed: run seed (initialisation, epoch order, dropout, augmentation).
      parallel: "none" (one device), "pmap" (replicated state, `lax.pmean`), "mesh"
        (`jax.jit` over a `Mesh` with the batch sharded by `NamedSharding`), or "auto"
        (`auto_parallel`, decided when `train` starts).
      devices: how many local devices to use (None: all) for "pmap"/"mesh".
      dropout_rate: override the model's dropout rate (None keeps it).
      eval_batch_size: test-set batch size (padded and masked, never dropped).
    """

    model: str = "bn_cnn"
    scaling: str | ScalingConfig = "standardize"
    augment: Any = None
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    seed: int = 0
    parallel: str = "none"
    devices: int | None = None
    dropout_rate: float | None = None
    eval_batch_size: int = 1000

    def __post_init__(self):
        if self.model not in models.MODELS:
            raise ValueError(f"unknown model {self.model!r}; known: {sorted(models.MODELS)}")
        scaling_config(self.scaling)  # raises on an unknown mode
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.parallel not in (*PARALLEL, "auto"):
            raise ValueError(f"parallel must be one of {PARALLEL} or 'auto', "
                             f"got {self.parallel!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("weight_decay and warmup_steps must be >= 0")
        if self.devices is not None and self.devices < 1:
            raise ValueError(f"devices must be >= 1 or None, got {self.devices}")
        if self.augment is not None and not isinstance(self.augment, str):
            from jaxscale.augmentation import AugmentConfig
            if not isinstance(self.augment, AugmentConfig):
                raise ValueError(f"augment must be None, 'seed' or an AugmentConfig, got "
                                 f"{self.augment!r}")
        elif isinstance(self.augment, str) and self.augment not in ("seed", "none"):
            raise ValueError(f"augment must be None, 'seed' or an AugmentConfig, got "
                             f"{self.augment!r}")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def augment_config(augment) -> Any:
    """The AugmentConfig for `TrainConfig.augment` (None for no augmentation)."""
    if augment is None or augment == "none":
        return None
    from jaxscale.augmentation import SEED_RECIPE  # lazy: optional at import time
    return SEED_RECIPE if augment == "seed" else augment


@flax.struct.dataclass
class TrainState:
    """What a step updates. All leaves are arrays, so it can be replicated or checkpointed.

    Attributes:
      step: int32[] steps taken.
      params: the model's parameters.
      batch_stats: BatchNorm running means/variances ({} for models without BN).
      opt_state: the optax optimizer state.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax optimizer of a config; `total_steps` sets the length of decaying schedules."""
    total_steps = max(int(total_steps), 1)
    if config.schedule == "constant":
        lr = config.learning_rate
    elif config.schedule == "cosine":
        lr = optax.cosine_decay_schedule(config.learning_rate, total_steps)
    else:
        lr = optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, min(config.warmup_steps, total_steps - 1) or 1,
            total_steps)
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay)
    base = optax.adam(lr) if config.optimizer == "adam" else optax.sgd(lr, momentum=0.9)
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), base)
    return base


def create_train_state(model: flax.linen.Module, tx: optax.GradientTransformation,
                       image_shape: tuple[int, int, int], key: jax.Array) -> TrainState:
    """Initial state of `model` for images of `image_shape` (H, W, C), from `key`."""
    variables = model.init({"params": key}, jnp.zeros((1, *image_shape), jnp.float32),
                           train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params))


def _step_keys(key: jax.Array, step: jax.Array, axis_name: str | None):
    key = jax.random.fold_in(key, step)
    if axis_name is not None:
        # Each device's shard needs its own masks and transforms.
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    augment_key, dropout_key = jax.random.split(key)
    return augment_key, dropout_key


def make_train_step(model: flax.linen.Module, tx: optax.GradientTransformation,
                    scaling: ScalingConfig, scaling_params: ScalingParams | None = None,
                    augment=None, *, axis_name: str | None = None) -> Callable:
    """A pure train step: augment (if any) + scale + forward/backward + optax update.

    Returns `train_step(state, images, labels, key) -> (state, metrics)` with
      images: uint8[B, H, W, C] (the shard of one device under pmap);
      labels: int32[B];
      key: the run key (the step folds in `state.step`, and the device index under pmap);
      metrics: {"loss": float32[], "accuracy": float32[]}, means over the global batch.
    Not jitted: wrap it with `jax.jit` / `jax.pmap` (see `jaxscale.parallel.make_runner`).
    Under pmap pass `axis_name` (and build the model with the same `axis_name`): gradients and
    metrics are averaged with `lax.pmean`, BatchNorm statistics over the axis.
    """
    augment = augment_config(augment)

    def train_step(state: TrainState, images, labels, key):
        augment_key, dropout_key = _step_keys(key, state.step, axis_name)
        x = images
        if augment is not None:
            x = _augment(augment_key, x, augment)
        x = scale(x, scaling, scaling_params)

        def loss_fn(params):
            variables = {"params": params}
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
            logits, updates = model.apply(variables, x, train=True,
                                          rngs={"dropout": dropout_key},
                                          mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (logits, updates.get("batch_stats", {}))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            loss, accuracy = jax.lax.pmean((loss, accuracy), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                               opt_state=opt_state)
        return new_state, {"loss": loss, "accuracy": accuracy}

    return train_step


def _augment(key, images, config):
    from jaxscale.augmentation import augment
    return augment(key, images, config)


def make_eval_step(model: flax.linen.Module, scaling: ScalingConfig,
                   scaling_params: ScalingParams | None = None, *,
                   axis_name: str | None = None) -> Callable:
    """A pure eval step (never augments; BatchNorm uses its running statistics).

    Returns `eval_step(state, images, labels, mask) -> sums` with images uint8[B, H, W, C],
    labels int32[B], mask bool[B] (False rows are padding and count nothing), and sums
    {"loss_sum", "correct", "count"} float32[] (summed over the axis under pmap).
    """

    def eval_step(state: TrainState, images, labels, mask):
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        logits = model.apply(variables, scale(images, scaling, scaling_params), train=False)
        weight = mask.astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        sums = {"loss_sum": jnp.sum(losses * weight),
                "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * weight),
                "count": jnp.sum(weight)}
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return sums

    return eval_step


# --------------------------------------------------------------------------- compile counter

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compile_counters: list[list[int]] = []


def _on_event(event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == _COMPILE_EVENT:
        for counter in _compile_counters:
            counter[0] += 1


_listener_registered = False


@contextlib.contextmanager
def count_compiles():
    """Counts XLA compilations inside the block: `with count_compiles() as n: ...; n[0]`."""
    global _listener_registered
    if not _listener_registered:
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _listener_registered = True
    counter = [0]
    _compile_counters.append(counter)
    try:
        yield counter
    finally:
        _compile_counters.remove(counter)


# --------------------------------------------------------------------------- training loop

@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
      state: the final TrainState (on the host, unreplicated).
      history: one dict per epoch: epoch, step, train_loss, train_accuracy, test_loss,
        test_accuracy (None without test data), seconds, images_per_s.
      scaling: (ScalingConfig, ScalingParams) used (fitted on the training images).
      config: the TrainConfig.
    """

    state: TrainState
    history: list[dict]
    scaling: tuple[ScalingConfig, ScalingParams]
    config: TrainConfig


def _arrays(data):
    if hasattr(data, "images"):
        return np.asarray(data.images), np.asarray(data.labels), getattr(
            data, "num_classes", None)
    images, labels = data
    return np.asarray(images), np.asarray(labels), None


def _check_data(images, labels):
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"training images must be uint8[N, H, W, C], got "
                         f"{images.dtype}{list(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be int[N] with N = {images.shape[0]}, got "
                         f"{labels.shape}")


def _global_batch(arrays, sharding):
    from jaxscale.distributed import global_batch_from_local
    return global_batch_from_local(arrays, sharding)


def evaluate_process_local(runner, state, images, labels, batch_size: int) -> dict:
    """`evaluate` for a run over several processes: each holds its own test rows (host
    arrays, the same count on every process) and every step assembles the global batch."""
    local = batch_size // jax.process_count()
    indices, mask = pipeline.host_epoch_indices(0, 0, images.shape[0], local, shuffle=False)
    total = None
    for rows, valid in zip(indices, mask):
        batch = _global_batch((images[rows], labels[rows], valid), runner.batch_sharding)
        sums = runner.eval_batch(state, *batch)
        total = sums if total is None else jax.tree_util.tree_map(jnp.add, total, sums)
    total = {k: float(np.asarray(v.addressable_data(0))) for k, v in total.items()}
    count = max(total["count"], 1.0)
    return {"loss": total["loss_sum"] / count, "accuracy": total["correct"] / count}


def evaluate(runner, state, data, batch_size: int) -> dict:
    """Mean loss and accuracy of a placed `state` on resident `data` (runner.put_data)."""
    n = data[0].shape[0] if runner.kind != "pmap" else data[0].shape[1]
    indices, mask = pipeline.epoch_indices(jax.random.PRNGKey(0), n, batch_size,
                                           shuffle=False)
    indices, mask = runner.put_indices(indices), runner.put_indices(mask)
    total = None
    for s in range(indices.shape[0] if runner.kind != "pmap" else indices.shape[1]):
        sums = runner.eval(state, data, indices, mask, s)
        total = sums if total is None else jax.tree_util.tree_map(jnp.add, total, sums)
    total = jax.device_get(total)
    # Under pmap every device holds the same psum: the mean over devices is that sum.
    total = {k: float(np.mean(v)) for k, v in total.items()}
    count = max(total["count"], 1.0)
    return {"loss": total["loss_sum"] / count, "accuracy": total["correct"] / count}


def auto_parallel(devices: int | None = None) -> str:
    """The data parallelism `parallel="auto"` picks: "mesh" across several processes or
    several accelerators (`devices` local ones; None: all), else "none".

    Host-platform CPU "devices" share the same cores: splitting a batch over them buys no
    speed, and their in-process all-reduce can time out on a loaded machine.
    """
    count = devices or jax.local_device_count()
    accelerated = jax.devices()[0].platform != "cpu"
    return "mesh" if (count > 1 and accelerated) or jax.process_count() > 1 else "none"


def train(config: TrainConfig, train_data, test_data=None, *,
          scaling_params: ScalingParams | None = None,
          checkpoint_dir: str | Path | None = None, checkpoint_every: int = 0,
          resume: bool = False, metrics_path: str | Path | None = None,
          progress: bool = False, max_steps: int | None = None,
          log_every: int = 50, tensorboard_dir: str | Path | None = None) -> TrainResult:
    """Trains `config.model` on uint8 images resident on the device(s).

    Args:
      config: the run's TrainConfig.
      train_data: a `jaxscale.datasets.Dataset` or (images uint8[N, H, W, C], labels int[N]).
      test_data: the same kind, evaluated after every epoch, or None.
      scaling_params: fitted scaling numbers; None fits them on the training images.
      checkpoint_dir: where checkpoints (and the fitted scaling) go; None: no checkpoints.
      checkpoint_every: also save every this many steps (0: only at the end of the run).
      resume: continue from the latest checkpoint in `checkpoint_dir` (same config); the
        result matches an uninterrupted run.
      metrics_path: append one JSON line per epoch (and per `log_every` steps) here.
      progress: show a tqdm bar with step, loss, accuracy, images/s.
      max_steps: stop after this many steps in total (for tests and smoke runs).
      log_every: steps between progress/metric updates (each one syncs with the device).
      tensorboard_dir: also write TensorBoard scalars here (needs tensorflow).

    Returns:
      TrainResult.
    """
    from jaxscale import checkpoint, parallel

    if config.parallel == "auto":
        config = dataclasses.replace(config, parallel=auto_parallel(config.devices))
    images, labels, num_classes = _arrays(train_data)
    _check_data(images, labels)
    labels = labels.astype(np.int32)
    num_classes = num_classes or int(labels.max()) + 1
    scaling = scaling_config(config.scaling)
    multi = jax.process_count() > 1
    if scaling_params is None:
        # with one process this is fit_scaling; with several, the merge over all hosts
        from jaxscale.distributed import global_scaling_params
        scaling_params = global_scaling_params(scaling, images)
    # Several processes (jax.distributed): each holds its own rows and feeds its share of
    # every global batch through `global_batch_from_local`; the step is the mesh one.
    if multi and config.parallel != "mesh":
        raise ValueError("a run over several processes needs parallel='mesh'")
    local_batch = config.batch_size // jax.process_count()
    steps_per_epoch = images.shape[0] // local_batch
    if steps_per_epoch < 1:
        raise ValueError(f"{images.shape[0]} training images < batch_size "
                         f"{config.batch_size}")
    total_steps = steps_per_epoch * config.epochs
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    tx = make_optimizer(config, steps_per_epoch * config.epochs)
    runner = parallel.make_runner(config.parallel, config, tx, scaling, scaling_params,
                                  num_classes=num_classes)
    run_key = jax.random.PRNGKey(config.seed)
    host_state = create_train_state(runner.model, tx, images.shape[1:],
                                    jax.random.fold_in(run_key, 1 << 20))
    history: list[dict] = []
    main = jax.process_index() == 0
    if checkpoint_dir is not None and resume:
        latest = checkpoint.latest_checkpoint(checkpoint_dir)
        if latest is not None:
            host_state, meta = checkpoint.restore_checkpoint(latest, host_state)
            # A run stopped mid-epoch logged a partial epoch; it is trained again in full.
            history = [h for h in meta.get("history", []) if h["step"] % steps_per_epoch == 0]
    state = runner.put_state(host_state)
    data = None if multi else runner.put_data(images, labels)
    test = None
    if test_data is not None:
        test_images, test_labels, _ = _arrays(test_data)
        _check_data(test_images, test_labels)
        test_labels = test_labels.astype(np.int32)
        test = None if multi else runner.put_data(test_images, test_labels)

    writer = _MetricsWriter(metrics_path if main else None,
                            tensorboard_dir if main else None)
    step = int(host_state.step)
    bar = None
    if progress and main:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True)

    def save(state_now):
        if checkpoint_dir is not None and main:
            checkpoint.save_checkpoint(checkpoint_dir, runner.get_state(state_now),
                                       scaling=(scaling, scaling_params),
                                       meta={"config": _config_dict(config),
                                             "history": history})

    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            first = step - epoch * steps_per_epoch
            indices, _ = pipeline.epoch_indices(pipeline.epoch_key(config.seed, epoch),
                                                images.shape[0], local_batch,
                                                drop_remainder=True)
            if multi:
                host_indices = np.asarray(indices)
            else:
                indices = runner.put_indices(indices)
            last = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
            sums = None
            window_start, window_steps = time.perf_counter(), 0
            epoch_start = time.perf_counter()
            for s in range(first, last):
                if multi:
                    rows = host_indices[s]
                    batch = _global_batch((images[rows], labels[rows]), runner.batch_sharding)
                    state, metrics = runner.train_batch(state, *batch, run_key)
                else:
                    state, metrics = runner.train(state, data, indices, s, run_key)
                sums = metrics if sums is None else jax.tree_util.tree_map(
                    jnp.add, sums, metrics)
                step += 1
                window_steps += 1
                if checkpoint_every and step % checkpoint_every == 0 and step < total_steps:
                    save(state)
                if step % log_every == 0 or s == last - 1:
                    means = {k: float(np.mean(np.asarray(v.addressable_data(0)))) /
                             (s - first + 1) for k, v in sums.items()}
                    now = time.perf_counter()
                    rate = window_steps * config.batch_size / max(now - window_start, 1e-9)
                    window_start, window_steps = now, 0
                    if bar is not None:
                        bar.update(step - bar.n)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{means['loss']:.4f}",
                                        acc=f"{means['accuracy']:.4f}",
                                        img_s=f"{rate:.0f}")
                    writer.write({"kind": "step", "step": step, "epoch": epoch + 1,
                                  "train_loss": means["loss"],
                                  "train_accuracy": means["accuracy"],
                                  "images_per_s": rate})
            seconds = time.perf_counter() - epoch_start
            record = {"epoch": epoch + 1, "step": step,
                      "train_loss": means["loss"], "train_accuracy": means["accuracy"],
                      "test_loss": None, "test_accuracy": None, "seconds": seconds,
                      "images_per_s": (last - first) * config.batch_size / seconds}
            if test_data is not None:
                result = (evaluate_process_local(runner, state, test_images, test_labels,
                                                 config.eval_batch_size) if multi else
                          evaluate(runner, state, test, config.eval_batch_size))
                record.update(test_loss=result["loss"], test_accuracy=result["accuracy"])
            history.append(record)
            writer.write({"kind": "epoch", **record})
            if bar is not None:
                bar.write(_epoch_line(record))
        save(state)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
    return TrainResult(state=runner.get_state(state), history=history,
                       scaling=(scaling, scaling_params), config=config)


def _epoch_line(record: dict) -> str:
    line = (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f}")
    if record["test_accuracy"] is not None:
        line += f" | test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f}"
    return line + f" | {record['seconds']:.1f} s, {record['images_per_s']:.0f} img/s"


def _config_dict(config: TrainConfig) -> dict:
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        out[field.name] = value if isinstance(value, (str, int, float, bool, type(None))) \
            else repr(value)
    return out


class _MetricsWriter:
    """JSONL lines (and TensorBoard scalars when tensorflow imports) for the main process."""

    def __init__(self, path, tensorboard_dir):
        self._file = None
        self._tb = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a")
        if tensorboard_dir is not None:
            try:
                import tensorflow as tf
                self._tf = tf
                self._tb = tf.summary.create_file_writer(str(tensorboard_dir))
            except Exception:  # TensorBoard is optional
                self._tb = None

    def write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            with self._tb.as_default():
                for name, value in record.items():
                    if isinstance(value, float):
                        self._tf.summary.scalar(f"{record['kind']}/{name}", value,
                                                step=record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.flush()


# --------------------------------------------------------------------------- benchmark

def _timed_train_step(model: str, scaling: str, batch_size: int, augment, images, labels,
                      parallel: str, seed: int, total_steps: int):
    """A zero-argument function running one fused train step on resident data; it returns the
    step's wall-clock seconds (to `block_until_ready`)."""
    from jaxscale import parallel as parallel_lib

    config = TrainConfig(model=model, scaling=scaling, augment=augment,
                         batch_size=batch_size, seed=seed, parallel=parallel)
    scaling_cfg = scaling_config(scaling)
    params = fit_scaling(scaling_cfg, images)
    tx = make_optimizer(config, total_steps)
    num_classes = int(labels.max()) + 1
    runner = parallel_lib.make_runner(parallel, config, tx, scaling_cfg, params,
                                      num_classes=max(num_classes, 10))
    key = jax.random.PRNGKey(seed)
    carry = {"state": runner.put_state(create_train_state(runner.model, tx, images.shape[1:],
                                                          key)), "step": 0}
    data = runner.put_data(images, labels)
    n_batches = max(images.shape[0] // batch_size, 1)
    indices, _ = pipeline.epoch_indices(key, images.shape[0], batch_size, drop_remainder=True)
    indices = runner.put_indices(indices)

    def step_once() -> float:
        start = time.perf_counter()
        state, metrics = runner.train(carry["state"], data, indices,
                                      carry["step"] % n_batches, key)
        jax.block_until_ready((state, metrics))
        carry["state"], carry["step"] = state, carry["step"] + 1
        return time.perf_counter() - start

    return step_once


def _benchmark_images(images, labels, batch_size: int, seed: int):
    if images is None:
        from jaxscale.data.datasets import synthetic_dataset
        data = synthetic_dataset(max(4096, batch_size), (28, 28, 1), 10, seed)
        images, labels = data.images, data.labels
    images, labels = np.asarray(images), np.asarray(labels).astype(np.int32)
    _check_data(images, labels)
    return images, labels


def benchmark_train_step(model: str = "bn_cnn", scaling: str = "none", batch_size: int = 64,
                         steps: int = 20, warmup: int = 3, augment=None, images=None,
                         labels=None, parallel: str = "none", seed: int = 0) -> dict:
    """Times the fused train step (gather + augment + scale + forward/backward + update).

    Data is resident on the device as uint8; each step is timed to `block_until_ready`;
    warm-up steps (compilation) are excluded.

    Args:
      model, scaling, augment, parallel, seed: as in TrainConfig.
      batch_size: global batch.
      steps: timed steps; warmup: untimed steps before them.
      images: uint8[N, H, W, C] (default: 4096 synthetic 28x28x1 images); labels: int[N].

    Returns:
      {"images_per_s": batch / median step time, "step_ms_median", "step_ms_spread"
      (max - min over the timed steps), "compiles": XLA compilations during the timed steps
      (0 when nothing recompiles), "warmup_compiles", "steps", "batch_size", "device"}.
    """
    images, labels = _benchmark_images(images, labels, batch_size, seed)
    step_once = _timed_train_step(model, scaling, batch_size, augment, images, labels,
                                  parallel, seed, steps + warmup)
    with count_compiles() as warm_compiles:
        for _ in range(warmup):
            step_once()
    with count_compiles() as compiles:
        times = [step_once() for _ in range(steps)]
    median = float(np.median(times))
    return {"images_per_s": batch_size / median, "step_ms_median": median * 1e3,
            "step_ms_spread": (max(times) - min(times)) * 1e3, "compiles": compiles[0],
            "warmup_compiles": warm_compiles[0], "steps": steps, "batch_size": batch_size,
            "device": str(jax.devices()[0].platform)}


def benchmark_train_variants(variants: dict, *, model: str = "bn_cnn", batch_size: int = 64,
                             rounds: int = 20, warmup: int = 3, images=None, labels=None,
                             parallel: str = "none", seed: int = 0) -> dict:
    """Times several fused train steps interleaved, so that each sees the same machine load.

    One round runs one step of every variant in turn; the overhead of a variant is the median
    over rounds of (its step time / the first variant's step time) - 1, which cancels the load
    drift that makes separately timed runs on a shared host differ by tens of percent.

    Args:
      variants: name -> (scaling mode, augment or None); the first is the baseline.
      rounds: timed rounds; warmup: untimed rounds (compilation) before them.
      model, batch_size, images, labels, parallel, seed: as in `benchmark_train_step`.

    Returns:
      name -> {"images_per_s", "step_ms_median", "step_ms_spread", "overhead_pct",
      "compiles", "batch_size"}.
    """
    if not variants:
        raise ValueError("benchmark_train_variants needs at least one variant")
    images, labels = _benchmark_images(images, labels, batch_size, seed)
    steps = {name: _timed_train_step(model, scaling, batch_size, augment, images, labels,
                                     parallel, seed, rounds + warmup)
             for name, (scaling, augment) in variants.items()}
    for _ in range(warmup):
        for step_once in steps.values():
            step_once()
    times = {name: [] for name in steps}
    with count_compiles() as compiles:
        for _ in range(rounds):
            for name, step_once in steps.items():
                times[name].append(step_once())
    base = np.asarray(times[next(iter(variants))])
    results = {}
    for name, seconds in times.items():
        seconds = np.asarray(seconds)
        median = float(np.median(seconds))
        results[name] = {
            "images_per_s": batch_size / median, "step_ms_median": median * 1e3,
            "step_ms_spread": float(seconds.max() - seconds.min()) * 1e3,
            "overhead_pct": float(np.median(seconds / base) - 1.0) * 100.0,
            "compiles": compiles[0], "batch_size": batch_size}
    return results
