"""Training: config validation, the fused step learns, eval masks padding, no recompilation."""

import jax
import numpy as np
import pytest

from jaxscale import training
from jaxscale.data.datasets import synthetic_dataset
from jaxscale.models import get_model
from jaxscale.scaling import fit_scaling, scaling_config


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(256, (28, 28, 1), 10, seed=0)


@pytest.mark.parametrize("field,value,match", [
    ("model", "vgg", "unknown model"), ("scaling", "whiten", "unknown scaling"),
    ("optimizer", "lbfgs", "optimizer"), ("schedule", "step", "schedule"),
    ("parallel", "ddp", "parallel"), ("batch_size", 0, "batch_size"),
    ("learning_rate", 0.0, "learning_rate"), ("augment", "heavy", "augment"),
    ("devices", 0, "devices"),
])
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        training.TrainConfig(**{field: value})


@pytest.mark.parametrize("optimizer,schedule,first_step", [
    ("adam", "constant", -1e-3), ("adamw", "cosine", -1e-3), ("sgd", "constant", -1e-3),
    ("adam", "warmup_cosine", 0.0)])  # warm-up starts from a learning rate of 0
def test_optimizers_build_and_update(optimizer, schedule, first_step):
    config = training.TrainConfig(optimizer=optimizer, schedule=schedule, warmup_steps=2)
    tx = training.make_optimizer(config, 10)
    params = {"w": np.ones(3, np.float32)}
    updates, _ = tx.update({"w": np.ones(3, np.float32)}, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), first_step, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("model,scaling,augment", [("small_cnn", "normalize", None),
                                                   ("bn_cnn", "standardize", "seed")])
def test_train_step_lowers_loss_on_a_fixed_batch(data, model, scaling, augment):
    config = training.TrainConfig(model=model, scaling=scaling, augment=augment)
    scale_cfg = scaling_config(scaling)
    params = fit_scaling(scale_cfg, data.images)
    net = get_model(model, 10)
    tx = training.make_optimizer(config, 20)
    state = training.create_train_state(net, tx, (28, 28, 1), jax.random.PRNGKey(0))
    step = jax.jit(training.make_train_step(net, tx, scale_cfg, params, augment))
    images, labels = data.images[:64], data.labels[:64]
    losses = []
    for _ in range(20):
        state, metrics = step(state, images, labels, jax.random.PRNGKey(1))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 20
    assert losses[-1] < 0.8 * losses[0]


def test_eval_step_ignores_masked_rows(data):
    net = get_model("small_cnn", 10)
    config = training.TrainConfig(model="small_cnn", scaling="normalize")
    tx = training.make_optimizer(config, 1)
    state = training.create_train_state(net, tx, (28, 28, 1), jax.random.PRNGKey(0))
    evaluate = jax.jit(training.make_eval_step(net, scaling_config("normalize")))
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
    config = training.TrainConfig(model="small_cnn", scaling="normalize", epochs=3,
                                  batch_size=32, eval_batch_size=64, parallel="auto")
    result = training.train(config, data, (data.images[:100], data.labels[:100]),
                            metrics_path=tmp_path / "m.jsonl", log_every=4)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert int(result.state.step) == 3 * (256 // 32)
    assert result.history[-1]["test_accuracy"] > 0.5  # chance is 0.1
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert sum('"kind": "epoch"' in line for line in lines) == 3


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
    assert training.auto_parallel(devices) == want


def test_no_recompilation_after_first_step():
    result = training.benchmark_train_step(model="small_cnn", scaling="standardize",
                                           batch_size=32, steps=5, warmup=1)
    assert result["compiles"] == 0
    assert result["warmup_compiles"] >= 1
    assert set(result) >= {"images_per_s", "step_ms_median", "step_ms_spread", "compiles"}
    assert result["images_per_s"] > 0


def test_train_rejects_float_images():
    config = training.TrainConfig(model="small_cnn", scaling="none")
    with pytest.raises(ValueError, match="uint8"):
        training.train(config, (np.zeros((64, 28, 28, 1), np.float32), np.zeros(64)))


def test_benchmark_train_variants_interleaves_without_recompiling(data):
    results = training.benchmark_train_variants(
        {"none": ("none", None), "standardize": ("standardize", None)}, model="small_cnn",
        batch_size=32, rounds=3, warmup=1, images=data.images, labels=data.labels)
    assert list(results) == ["none", "standardize"]
    assert results["none"]["overhead_pct"] == 0.0
    for result in results.values():
        assert result["compiles"] == 0
        assert result["images_per_s"] == pytest.approx(32e3 / result["step_ms_median"])
    with pytest.raises(ValueError, match="at least one"):
        training.benchmark_train_variants({})

