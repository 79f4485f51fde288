"""Checkpoints: exact round trip in both formats, resume == uninterrupted run, scaling saved
with the model."""

import jax
import numpy as np
import pytest

from jaxscale import checkpoint, training
from jaxscale.data.datasets import synthetic_dataset

FORMATS = [pytest.param("orbax", marks=pytest.mark.skipif(
    checkpoint.ocp is None, reason="orbax-checkpoint is not installed")), "msgpack"]


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(192, (28, 28, 1), 10, seed=5)


@pytest.fixture(params=FORMATS)
def fmt(request, monkeypatch):
    monkeypatch.setattr(checkpoint, "FORMAT", request.param)
    return request.param


def _leaves(state):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


def _state(model_name="bn_cnn", seed=0):
    config = training.TrainConfig(model=model_name)
    tx = training.make_optimizer(config, 10)
    model = training.models.get_model(model_name, 10)
    return training.create_train_state(model, tx, (28, 28, 1), jax.random.PRNGKey(seed))


def test_default_format_is_orbax_when_installed():
    assert checkpoint.FORMAT == ("orbax" if checkpoint.ocp is not None else "msgpack")


def test_round_trip_is_exact(tmp_path, fmt):
    state = _state().replace(step=np.int32(7))
    path = checkpoint.save_checkpoint(tmp_path, state, meta={"note": "x"})
    assert path.name == f"step_00000007.{fmt}"
    restored, meta = checkpoint.restore_checkpoint(path, _state(seed=1))
    assert meta == {"note": "x"}
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    for a, b in zip(_leaves(state), _leaves(restored)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_either_format_restores_whatever_writes_now(tmp_path, monkeypatch):
    if checkpoint.ocp is None:
        pytest.skip("orbax-checkpoint is not installed")
    state = _state().replace(step=np.int32(3))
    monkeypatch.setattr(checkpoint, "FORMAT", "msgpack")
    old = checkpoint.save_checkpoint(tmp_path, state)
    monkeypatch.setattr(checkpoint, "FORMAT", "orbax")
    new = checkpoint.save_checkpoint(tmp_path, state.replace(step=np.int32(4)))
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [old.name, new.name]
    for path in (old, new):
        restored, _ = checkpoint.restore_checkpoint(path, _state(seed=2))
        for a, b in zip(_leaves(state)[1:], _leaves(restored)[1:]):
            np.testing.assert_array_equal(a, b)


def test_keep_only_newest(tmp_path, fmt):
    state = training.TrainState(step=np.int32(0), params={"w": np.ones(2)}, batch_stats={},
                                opt_state=())
    for step in range(5):
        checkpoint.save_checkpoint(tmp_path, state.replace(step=np.int32(step)), keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        f"step_00000003.{fmt}", f"step_00000004.{fmt}"]
    assert checkpoint.latest_checkpoint(tmp_path).name == f"step_00000004.{fmt}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000003.json", f"step_00000003.{fmt}", "step_00000004.json",
        f"step_00000004.{fmt}"]


def test_restore_errors(tmp_path, fmt):
    with pytest.raises(ValueError, match="no checkpoint"):
        checkpoint.restore_checkpoint(tmp_path / f"step_00000001.{fmt}", {})
    assert checkpoint.latest_checkpoint(tmp_path / "missing") is None
    path = checkpoint.save_checkpoint(tmp_path, _state("small_cnn"))
    with pytest.raises(ValueError, match="does not match"):
        checkpoint.restore_checkpoint(path, _state("bn_cnn"))
    with pytest.raises(ValueError, match="format"):
        checkpoint.checkpoint_path(tmp_path, 1, "pickle")


def test_resumed_run_matches_uninterrupted(data, tmp_path, fmt):
    # bn_cnn with dropout and augmentation: every random draw must line up after resuming,
    # mid-epoch (6 steps per epoch, interrupted at step 4).
    config = training.TrainConfig(model="bn_cnn", scaling="standardize", augment="seed",
                                  epochs=2, batch_size=32, seed=11)
    straight = training.train(config, data)
    ckpt = tmp_path / "ckpt"
    training.train(config, data, checkpoint_dir=ckpt, max_steps=4)
    assert checkpoint.latest_checkpoint(ckpt).name == f"step_00000004.{fmt}"
    resumed = training.train(config, data, checkpoint_dir=ckpt, resume=True)
    assert int(resumed.state.step) == int(straight.state.step) == 12
    for a, b in zip(_leaves(straight.state), _leaves(resumed.state)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    # The fitted standardize statistics travel with the model.
    scale_cfg, params = checkpoint.load_scaling_for(ckpt)
    assert scale_cfg.featurewise_std_normalization
    np.testing.assert_allclose(np.asarray(params.mean), np.asarray(straight.scaling[1].mean),
                               rtol=1e-6)
