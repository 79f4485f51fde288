"""Checkpoints: exact round trip, resume == uninterrupted run, scaling saved with the model."""

import jax
import numpy as np
import pytest

from jaxscale import checkpoint, training
from jaxscale.datasets import synthetic_dataset


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(192, (28, 28, 1), 10, seed=5)


def _leaves(state):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


def test_round_trip_is_exact(tmp_path):
    config = training.TrainConfig(model="bn_cnn")
    tx = training.make_optimizer(config, 10)
    model = training.models.get_model("bn_cnn", 10)
    state = training.create_train_state(model, tx, (28, 28, 1), jax.random.PRNGKey(0))
    state = state.replace(step=np.int32(7))
    path = checkpoint.save_checkpoint(tmp_path, state, meta={"note": "x"})
    assert path.name == "step_00000007.msgpack"
    fresh = training.create_train_state(model, tx, (28, 28, 1), jax.random.PRNGKey(1))
    restored, meta = checkpoint.restore_checkpoint(path, fresh)
    assert meta == {"note": "x"}
    for a, b in zip(_leaves(state), _leaves(restored)):
        np.testing.assert_array_equal(a, b)


def test_keep_only_newest(tmp_path):
    state = training.TrainState(step=np.int32(0), params={"w": np.ones(2)}, batch_stats={},
                                opt_state=())
    for step in range(5):
        checkpoint.save_checkpoint(tmp_path, state.replace(step=np.int32(step)), keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "step_00000003.msgpack", "step_00000004.msgpack"]
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_00000004.msgpack"


def test_restore_errors(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        checkpoint.restore_checkpoint(tmp_path / "step_00000001.msgpack", {})
    assert checkpoint.latest_checkpoint(tmp_path / "missing") is None


def test_resumed_run_matches_uninterrupted(data, tmp_path):
    # bn_cnn with dropout and augmentation: every random draw must line up after resuming,
    # mid-epoch (6 steps per epoch, interrupted at step 4).
    config = training.TrainConfig(model="bn_cnn", scaling="standardize", augment="seed",
                                  epochs=2, batch_size=32, seed=11)
    straight = training.train(config, data)
    ckpt = tmp_path / "ckpt"
    training.train(config, data, checkpoint_dir=ckpt, max_steps=4)
    assert checkpoint.latest_checkpoint(ckpt).name == "step_00000004.msgpack"
    resumed = training.train(config, data, checkpoint_dir=ckpt, resume=True)
    assert int(resumed.state.step) == int(straight.state.step) == 12
    for a, b in zip(_leaves(straight.state), _leaves(resumed.state)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    # The fitted standardize statistics travel with the model.
    scale_cfg, params = checkpoint.load_scaling_for(ckpt)
    assert scale_cfg.featurewise_std_normalization
    np.testing.assert_allclose(np.asarray(params.mean), np.asarray(straight.scaling[1].mean),
                               rtol=1e-6)
