"""Training: config validation, the fused step learns, eval masks padding, one loop for every
input and chunk size, no recompilation."""

import importlib.util
import warnings

import jax
import numpy as np
import pytest

from benchmarks.timing import count_compiles
from jaxscale.data.datasets import synthetic_dataset
from jaxscale.scaling import fit_scaling, scaling_config
from jaxscale.training.config import TrainConfig, learning_rate_schedule, make_optimizer
from jaxscale.training.loop import choose_input, train
from jaxscale.training.models import get_model
from jaxscale.training.runners import resolve_parallel
from jaxscale.training.steps import create_train_state, make_eval_step, make_train_step


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(256, (28, 28, 1), 10, seed=0)


@pytest.mark.parametrize("field,value,match", [
    ("model", "vgg", "unknown model"), ("scaling", "whiten", "unknown scaling"),
    ("optimizer", "lbfgs", "optimizer"), ("schedule", "step", "schedule"),
    ("parallel", "ddp", "parallel"), ("batch_size", 0, "batch_size"),
    ("batch_size", 64.0, "batch_size"), ("steps_per_call", 0, "steps_per_call"),
    ("learning_rate", 0.0, "learning_rate"), ("augment", "heavy", "augment"),
    ("devices", 0, "devices"), ("label_smoothing", 1.0, "label_smoothing"),
    ("compute_dtype", "float16", "compute_dtype"), ("dropout_rate", 1.5, "dropout_rate"),
])
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_config_differences_list_each_field_and_skip_execution_ones():
    saved = TrainConfig(batch_size=64, seed=0).to_dict()
    asked = TrainConfig(batch_size=128, seed=3, scaling="normalize", steps_per_call=8,
                        parallel="mesh")
    lines = asked.differences(saved)
    assert lines == ["batch_size: 64 -> 128", "scaling: 'standardize' -> 'normalize'",
                     "seed: 0 -> 3"]
    assert asked.differences(saved, allow=("seed", "batch_size", "scaling")) == []


@pytest.mark.parametrize("optimizer,schedule,first_step", [
    ("adam", "constant", -1e-3), ("adamw", "cosine", -1e-3), ("sgd", "constant", -1e-3),
    ("adam", "warmup_cosine", 0.0), ("adam", "onecycle", 0.0)])  # warm-ups start from 0
def test_optimizers_build_and_update(optimizer, schedule, first_step):
    config = TrainConfig(optimizer=optimizer, schedule=schedule, warmup_steps=2)
    tx = make_optimizer(config, 10)
    params = {"w": np.ones(3, np.float32)}
    updates, _ = tx.update({"w": np.ones(3, np.float32)}, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), first_step, rtol=1e-4, atol=1e-9)


def test_onecycle_rises_then_falls_to_zero():
    schedule = learning_rate_schedule(TrainConfig(schedule="onecycle", warmup_steps=4,
                                                  learning_rate=0.1), 10)
    values = [float(schedule(s)) for s in range(11)]
    np.testing.assert_allclose(values, [0, .025, .05, .075, .1, 5 / 60, 4 / 60, .05, 2 / 60,
                                        1 / 60, 0], atol=1e-7)


@pytest.mark.parametrize("model,scaling,augment,smoothing", [
    ("small_cnn", "normalize", None, 0.0), ("bn_cnn", "standardize", "seed", 0.1)])
def test_train_step_lowers_loss_on_a_fixed_batch(data, model, scaling, augment, smoothing):
    scale_cfg = scaling_config(scaling)
    params = fit_scaling(scale_cfg, data.images)
    net = get_model(model, 10)
    tx = make_optimizer(TrainConfig(model=model), 20)
    state = create_train_state(net, tx, (28, 28, 1), jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(net, tx, scale_cfg, params, augment,
                                   label_smoothing=smoothing))
    images, labels = data.images[:64], data.labels[:64]
    losses = []
    for _ in range(20):
        state, metrics = step(state, images, labels, jax.random.PRNGKey(1))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 20
    assert losses[-1] < 0.8 * losses[0]


def test_eval_step_ignores_masked_rows(data):
    net = get_model("small_cnn", 10)
    tx = make_optimizer(TrainConfig(model="small_cnn"), 1)
    state = create_train_state(net, tx, (28, 28, 1), jax.random.PRNGKey(0))
    evaluate = jax.jit(make_eval_step(net, scaling_config("normalize")))
    full = evaluate(state, data.images[:8], data.labels[:8], np.ones(8, bool))
    mask = np.array([True] * 5 + [False] * 3)
    # Rows 5..7 replaced by garbage and masked: same sums as the first five alone.
    junk = data.images[:8].copy()
    junk[5:] = 255
    part = evaluate(state, junk, data.labels[:8], mask)
    first5 = evaluate(state, data.images[:5], data.labels[:5], np.ones(5, bool))
    assert float(full["count"]) == 8 and float(part["count"]) == 5
    np.testing.assert_allclose(float(part["loss_sum"]), float(first5["loss_sum"]), rtol=1e-5)


def test_train_reaches_accuracy_and_records_history(data, tmp_path):
    config = TrainConfig(model="small_cnn", scaling="normalize", epochs=3, batch_size=32,
                         eval_batch_size=64, parallel="auto")
    result = train(config, data, (data.images[:100], data.labels[:100]),
                   metrics_path=tmp_path / "m.jsonl", log_every=4)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert int(result.state.step) == 3 * (256 // 32)
    assert result.history[-1]["test_accuracy"] > 0.5  # chance is 0.1
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert sum('"kind": "epoch"' in line for line in lines) == 3


def _leaves(result):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(result.state)]


@pytest.fixture(scope="module")
def small(data):
    return data.take(slice(0, 128))


@pytest.fixture(scope="module")
def one_step_per_call(small):
    # BN CNN with dropout: its random draws must line up whatever the input and chunking.
    config = TrainConfig(model="bn_cnn", scaling="standardize", epochs=2, batch_size=32,
                         seed=4)
    return config, train(config, small, (small.images[:64], small.labels[:64]),
                         input="resident", log_every=3)


needs_grain = pytest.mark.skipif(importlib.util.find_spec("grain") is None,
                                 reason="grain is not installed (Python >= 3.11)")


@pytest.mark.parametrize("input,steps_per_call,reading", [
    ("resident", 3, None), ("resident", 16, None),
    ("streaming", 1, dict(loader="threads")),
    pytest.param("streaming", 5, dict(loader="grain"), marks=needs_grain),
    pytest.param("records", 4, dict(loader="grain", worker_count=1, read_threads=1),
                 marks=needs_grain)],
    ids=["resident-3", "resident-16", "threads-1", "grain-5", "records-1-worker-4"])
def test_every_input_and_chunk_size_gives_the_same_run(small, one_step_per_call, tmp_path,
                                                       input, steps_per_call, reading):
    # The same steps on the same batches, in the same order: the programs differ only in
    # where the batch comes from (a gather from the resident copy, or streamed rows: from
    # the arrays, or from record files through a Grain worker process) and how many steps
    # one call scans, neither of which changes an arithmetic operation, and the scaling is
    # fitted on the same blocks either way, so the parameters and metrics must agree
    # exactly. (With augmentation XLA compiles the affine resampling's float32 coordinate
    # arithmetic into different fusions in the two programs, which may round differently:
    # `test_augmentation_in_both_programs_agrees` bounds that.)
    from jaxscale.data.pipeline import StreamOptions
    config, reference = one_step_per_call
    train_data = small
    if input == "records":
        from jaxscale.data.streaming import RecordReader, write_records
        train_data = RecordReader(write_records(tmp_path / "train", small, num_shards=2))
    result = train(config.replace(steps_per_call=steps_per_call), train_data,
                   (small.images[:64], small.labels[:64]),
                   input="resident" if input == "resident" else "streaming", log_every=3,
                   stream_options=None if reading is None else StreamOptions(**reading))
    assert result.input == ("resident" if input == "resident" else "streaming")
    for a, b in zip(_leaves(reference), _leaves(result)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(reference.history, result.history):
        for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert a[name] == b[name], name


@needs_grain
def test_a_corrupt_record_file_fails_the_run_naming_it(data, tmp_path):
    # never a short epoch: the step that needs the damaged record raises
    from jaxscale.data.streaming import RecordFileError, RecordReader, write_records
    small = data.take(slice(0, 96))
    paths = write_records(tmp_path / "train", small, num_shards=2)
    raw = bytearray(paths[1].read_bytes())
    at = raw.find(small.images[80].tobytes())
    raw[at:at + 16] = bytes(b ^ 0xFF for b in raw[at:at + 16])
    paths[1].write_bytes(bytes(raw))
    config = TrainConfig(model="small_cnn", scaling="none", epochs=1, batch_size=32)
    with pytest.raises(RecordFileError, match=f"{paths[1].name}: corrupt record"):
        train(config, RecordReader(paths))


def test_augmentation_in_both_programs_agrees(data):
    # The resident program gathers the batch and augments it; the streamed one augments the
    # batch it is given. Same key, same images, same transforms: they may differ only by
    # float32 rounding of the sample coordinates. A coordinate off by e (pixels) moves a
    # bilinear sample by at most e * 255 grey levels (the largest neighbour difference);
    # coordinates are affine maps of indices < 28 with |matrix entries| < 2, so e is a few
    # float32 ulps of 56: below 56 * 2**-23 * 8 = 5.3e-5 pixel, and 255 * 5.3e-5 = 0.014.
    import jax.numpy as jnp
    from jaxscale.augmentation import SEED_RECIPE, augment
    rows = np.arange(32, dtype=np.int32)[::-1].copy()
    key = jax.random.PRNGKey(3)
    streamed = jax.jit(lambda k, x: augment(k, x, SEED_RECIPE))(key, data.images[rows])
    resident = jax.jit(lambda k, x, r: augment(k, jnp.take(x, r, axis=0), SEED_RECIPE))(
        key, data.images, rows)
    np.testing.assert_allclose(np.asarray(resident), np.asarray(streamed), rtol=0, atol=0.014)


def test_a_run_compiles_once_however_many_epochs(small):
    # Every train() builds its programs anew, so each run compiles them once; what must not
    # happen is a compilation per epoch or per step. Chunks of 3 steps over 4 steps per epoch
    # have two shapes (3 and 1): both compile in the first epoch, nothing after it.
    config = TrainConfig(model="small_cnn", scaling="standardize", epochs=1, batch_size=32,
                         steps_per_call=3)
    train(config, small)  # module-level programs (the epoch order) compile here
    with count_compiles() as one_epoch:
        train(config, small)
    with count_compiles() as three_epochs:
        train(config.replace(epochs=3), small)
    # (0 and 0 when the persistent compilation cache already holds the programs)
    assert three_epochs[0] == one_epoch[0]


@pytest.mark.parametrize("platform,devices,processes,want", [
    ("cpu", 8, 1, "none"),   # host "devices" share the cores
    ("cpu", 1, 2, "mesh"),   # several processes always shard
    ("gpu", 4, 1, "mesh"),
    ("gpu", 1, 1, "none"),
])
def test_auto_parallel(monkeypatch, platform, devices, processes, want):
    class Device:
        pass

    device = Device()
    device.platform = platform
    monkeypatch.setattr(jax, "devices", lambda *a: [device])
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    assert resolve_parallel("auto", devices) == want
    assert resolve_parallel("pmap", devices) == "pmap"


def test_input_choice(data, monkeypatch):
    from jaxscale.data.pipeline import ArrayReader
    from jaxscale.data.sharding import Placement
    import jaxscale.training.loop as loop

    placement = Placement.create("single")
    assert choose_input(data, placement) == "resident"
    reader = ArrayReader(data.images, data.labels)
    assert choose_input(reader, placement) == "streaming"
    with pytest.raises(ValueError, match="a reader streams"):
        choose_input(reader, placement, "resident")
    with pytest.raises(ValueError, match="input must be one of"):
        choose_input(data, placement, "disk")
    monkeypatch.setattr(loop, "_device_memory", lambda device: data.images.nbytes)
    assert choose_input(data, placement) == "streaming"  # would take 100 % of the device


def test_train_rejects_float_images():
    config = TrainConfig(model="small_cnn", scaling="none")
    with pytest.raises(ValueError, match="uint8"):
        train(config, (np.zeros((64, 28, 28, 1), np.float32), np.zeros(64)))


def test_old_module_paths_still_work_and_warn():
    with pytest.warns(DeprecationWarning, match="jaxscale.training.runners"):
        from jaxscale.parallel import make_runner
    from jaxscale.training.runners import make_runner as new
    assert make_runner is new
    with pytest.warns(DeprecationWarning, match="jaxscale.data.datasets"):
        from jaxscale.datasets import load_dataset
    from jaxscale.training import TrainConfig as same  # the trainer's home: no warning
    assert same is TrainConfig and callable(load_dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        import jaxscale
        assert jaxscale.TrainConfig is TrainConfig  # the curated surface does not warn
    with pytest.warns(DeprecationWarning, match="resolve_parallel"):
        from jaxscale import training
        assert training.auto_parallel(1) in ("none", "mesh")
    with pytest.warns(DeprecationWarning, match="benchmarks"):
        assert training.count_compiles is count_compiles


def test_the_scaling_fit_reads_blocks_the_same_from_arrays_and_readers(data, monkeypatch,
                                                                        capsys):
    # fixed blocks (here 4 of 56 images and one of 32), one read each, with a progress bar;
    # an array and a reader of it are cut and merged alike, so they fit the same bits
    from jaxscale.data.pipeline import ArrayReader
    import jaxscale.training.loop as loop

    monkeypatch.setattr(loop, "FIT_BLOCK_BYTES", 56 * 28 * 28)
    reads = []

    class Counting(ArrayReader):
        def read(self, rows):
            reads.append(len(rows))
            return super().read(rows)

    config = scaling_config("standardize")
    from_reader = loop.fit_training_scaling(config, Counting(data.images, data.labels),
                                            progress=True)
    assert reads == [56, 56, 56, 56, 32] and "fit scaling" in capsys.readouterr().err
    from_arrays = loop.fit_training_scaling(config, data)
    for name in ("mean", "std"):
        np.testing.assert_array_equal(getattr(from_reader, name), getattr(from_arrays, name))
    # and they are the data's statistics: each image's moments are float32 sums of its
    # 28 * 28 values (error <= (784 - 1) u of a sum of non-negative terms), and the merges of
    # images and blocks are compensated (hi + lo), adding a few roundings more
    rtol = (28 * 28 + 4) * 2.0 ** -24
    images = data.images.astype(np.float64)
    np.testing.assert_allclose(from_reader.mean, images.mean(axis=(0, 1, 2)), rtol=rtol)
    np.testing.assert_allclose(np.asarray(from_reader.std, np.float64) ** 2,
                               images.var(axis=(0, 1, 2)), rtol=2 * rtol)


def test_the_progress_bar_counts_finished_steps(small, monkeypatch):
    # The bar moves only where the host has read the running sums (log points, epoch ends):
    # at each dispatch it would run ahead of the device and then stall at the next read.
    import tqdm.auto

    positions = []

    class Recording:
        def __init__(self, *args, initial=0, **kwargs):
            self.n = initial

        def update(self, count):
            self.n += count
            positions.append(self.n)

        def set_postfix(self, **kwargs):
            pass

        def write(self, line):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    config = TrainConfig(model="small_cnn", scaling="normalize", epochs=2, batch_size=32)
    train(config, small, progress=True, log_every=3)  # 4 steps an epoch
    assert positions == [3, 4, 6, 8]
