"""Checkpoints: exact round trip in both formats, verified on restore with fallback to the
previous one, resume == uninterrupted run (metrics too), and a changed run is refused."""

import json
import logging

import jax
import numpy as np
import pytest

import jaxscale.training.checkpoint as checkpoint
from jaxscale.data.datasets import synthetic_dataset
from jaxscale.training.config import TrainConfig, make_optimizer
from jaxscale.training.loop import train
from jaxscale.training.models import get_model
from jaxscale.training.steps import TrainState, create_train_state

FORMATS = [pytest.param("orbax", marks=pytest.mark.skipif(
    checkpoint.ocp is None, reason="orbax-checkpoint is not installed")), "msgpack"]


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(96, (28, 28, 1), 10, seed=5)


@pytest.fixture(params=FORMATS)
def fmt(request, monkeypatch):
    monkeypatch.setattr(checkpoint, "FORMAT", request.param)
    return request.param


def _leaves(state):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


def _state(model_name="bn_cnn", seed=0):
    tx = make_optimizer(TrainConfig(model=model_name), 10)
    return create_train_state(get_model(model_name, 10), tx, (28, 28, 1),
                              jax.random.PRNGKey(seed))


def _tiny(step=0):
    return TrainState(step=np.int32(step), params={"w": np.arange(4, dtype=np.float32)},
                      batch_stats={}, opt_state=())


def test_default_format_is_orbax_when_installed():
    assert checkpoint.FORMAT == ("orbax" if checkpoint.ocp is not None else "msgpack")


def test_round_trip_is_exact(tmp_path, fmt):
    state = _state().replace(step=np.int32(7))
    path = checkpoint.save_checkpoint(tmp_path, state, meta={"note": "x", "sums": [0.1]})
    assert path.name == f"step_00000007.{fmt}"
    restored, meta = checkpoint.restore_checkpoint(path, _state(seed=1))
    assert meta == {"note": "x", "sums": [0.1]}
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


def test_first_release_checkpoints_still_restore(tmp_path):
    # The first release wrote the state alone (orbax StandardCheckpointHandler, or a msgpack
    # file) and a JSON sidecar with the config and history, without checksums.
    from flax import serialization
    state = _tiny(5)
    (tmp_path / "step_00000005.msgpack").write_bytes(serialization.to_bytes(state))
    (tmp_path / "step_00000005.json").write_text(json.dumps({"config": {"seed": 1}}))
    restored, meta = checkpoint.restore_checkpoint(tmp_path / "step_00000005.msgpack",
                                                   _tiny())
    assert int(restored.step) == 5 and meta == {"config": {"seed": 1}}
    if checkpoint.ocp is not None:
        path = tmp_path / "step_00000006.orbax"
        checkpoint._orbax_checkpointer(checkpoint.ocp.StandardCheckpointHandler()).save(
            path.absolute(), jax.tree_util.tree_map(np.asarray, _tiny(6)))
        (tmp_path / "step_00000006.json").write_text(json.dumps({"history": []}))
        restored, meta = checkpoint.restore_checkpoint(path, _tiny())
        assert int(restored.step) == 6 and meta == {"history": []}


def test_keep_only_newest(tmp_path, fmt):
    for step in range(5):
        checkpoint.save_checkpoint(tmp_path, _tiny(step), keep=2)
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
    with pytest.raises(checkpoint.CheckpointError, match="intact.*different model"):
        checkpoint.restore_checkpoint(path, _state("bn_cnn"))
    with pytest.raises(ValueError, match="format"):
        checkpoint.checkpoint_path(tmp_path, 1, "pickle")


def _largest_file(path):
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _flip_one_byte(file):
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate_manifest", "no_manifest", "delete"])
def test_a_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, fmt,
                                                                          damage, caplog):
    good = checkpoint.save_checkpoint(tmp_path, _state().replace(step=np.int32(1)),
                                      meta={"at": 1})
    bad = checkpoint.save_checkpoint(tmp_path, _state().replace(step=np.int32(2)),
                                     meta={"at": 2})
    manifest = checkpoint.manifest_path(bad)
    if damage == "flip":  # one flipped byte in the largest array file
        _flip_one_byte(_largest_file(bad))
        expected = "does not match its checksum"
    elif damage == "truncate_manifest":
        manifest.write_text(manifest.read_text()[:17])
        expected = f"its manifest {manifest} is unreadable"
    elif damage == "no_manifest":
        manifest.unlink()
        expected = "incomplete"
    else:
        victim = _largest_file(bad)
        victim.unlink()
        expected = "is missing|no checkpoint at"  # msgpack: its only file
    with pytest.raises(checkpoint.CheckpointError, match=expected):
        checkpoint.restore_checkpoint(bad, _state())
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        path, state, meta = checkpoint.restore_latest(tmp_path, _state())
    assert path == good and meta == {"at": 1} and int(state.step) == 1
    if bad.exists():  # else nothing is left to report: the checkpoint is simply not there
        assert str(bad) in caplog.text and f"resuming from {good} instead" in caplog.text


def test_no_intact_checkpoint_lists_every_problem(tmp_path, fmt):
    for step in (1, 2):
        path = checkpoint.save_checkpoint(tmp_path, _tiny(step))
        _flip_one_byte(_largest_file(path))
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint.*00000002.*"
                       "00000001"):
        checkpoint.restore_latest(tmp_path, _tiny())
    assert checkpoint.restore_latest(tmp_path / "empty", _tiny()) is None


def test_an_unwritable_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(checkpoint.CheckpointError, match=f"cannot write checkpoint {blocker}"):
        checkpoint.save_checkpoint(blocker / "ckpt", _tiny(1))


CONFIG = TrainConfig(model="bn_cnn", scaling="standardize", augment="seed", epochs=2,
                     batch_size=32, seed=11)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    metrics = tmp_path_factory.mktemp("straight") / "metrics.jsonl"
    return train(CONFIG, data, (data.images[:64], data.labels[:64]), metrics_path=metrics,
                 log_every=2), metrics


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resumed_run_matches_uninterrupted_metrics_included(data, tmp_path, fmt, straight):
    # bn_cnn with dropout and augmentation: every random draw must line up after resuming
    # mid-epoch (3 steps per epoch, interrupted at step 2, then at step 5).
    reference, reference_metrics = straight
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "metrics.jsonl"
    test = (data.images[:64], data.labels[:64])
    train(CONFIG, data, test, checkpoint_dir=ckpt, max_steps=2, metrics_path=metrics,
          log_every=2)
    assert checkpoint.latest_checkpoint(ckpt).name == f"step_00000002.{fmt}"
    # a run that got further than its last checkpoint (killed after step 3's metrics)
    with open(metrics, "a") as handle:
        handle.write(json.dumps({"kind": "step", "step": 3}) + "\n" + '{"kind": "st')
    train(CONFIG, data, test, checkpoint_dir=ckpt, resume=True, max_steps=5,
          metrics_path=metrics, log_every=2)
    resumed = train(CONFIG, data, test, checkpoint_dir=ckpt, resume=True,
                    metrics_path=metrics, log_every=2)
    assert int(resumed.state.step) == int(reference.state.step) == 6
    for a, b in zip(_leaves(reference.state), _leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)
    # epoch metrics are those of the uninterrupted run (running sums saved mid-epoch)
    assert [h["step"] for h in resumed.history] == [3, 6]
    for a, b in zip(reference.history, resumed.history):
        for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert a[name] == b[name], name
    # and the metrics file reads as the uninterrupted one's: same records, none twice
    def comparable(records):
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
                for r in records]
    assert comparable(_records(metrics)) == comparable(_records(reference_metrics))
    # The fitted standardize statistics travel with the model.
    scale_cfg, params = checkpoint.load_scaling_for(ckpt)
    assert scale_cfg.featurewise_std_normalization
    np.testing.assert_array_equal(np.asarray(params.mean),
                                  np.asarray(reference.scaling[1].mean))


@pytest.mark.parametrize("change,field", [
    (dict(batch_size=48), "batch_size: 32 -> 48"),
    (dict(scaling="normalize"), "scaling: 'standardize' -> 'normalize'"),
    (dict(seed=12), "seed: 11 -> 12"),
    (dict(learning_rate=2e-3), "learning_rate: 0.001 -> 0.002"),
    (dict(augment=None), "augment: 'seed' -> None"),
])
def test_resume_refuses_a_changed_run_naming_each_difference(data, tmp_path, change, field):
    ckpt = tmp_path / "ckpt"
    train(CONFIG.replace(model="small_cnn"), data, checkpoint_dir=ckpt, max_steps=2)
    with pytest.raises(ValueError, match="different run") as error:
        train(CONFIG.replace(model="small_cnn", **change), data, checkpoint_dir=ckpt,
              resume=True)
    assert field in str(error.value)
    # the saved scaling is not touched by a refused run
    assert checkpoint.load_scaling_for(ckpt)[0].featurewise_std_normalization


def test_resume_refuses_other_training_data_and_allows_named_changes(data, tmp_path):
    ckpt = tmp_path / "ckpt"
    config = CONFIG.replace(model="small_cnn", augment=None)
    train(config, data, checkpoint_dir=ckpt, max_steps=2)
    with pytest.raises(ValueError, match="data.num_examples: 96 -> 64"):
        train(config, data.take(slice(0, 64)), checkpoint_dir=ckpt, resume=True)
    more = train(config.replace(epochs=3), data, checkpoint_dir=ckpt, resume=True,
                 allow_changes=("epochs",))
    assert int(more.state.step) == 3 * 3
    # execution-only fields may always change
    train(config.replace(epochs=3, steps_per_call=4), data, checkpoint_dir=ckpt, resume=True,
          allow_changes=("epochs",))


def test_a_damaged_scaling_file_is_refit_and_rewritten(data, tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    config = CONFIG.replace(model="small_cnn", augment=None)
    first = train(config, data, checkpoint_dir=ckpt, max_steps=2)
    (ckpt / checkpoint.SCALING_FILE).write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="scaling.npz is damaged"):
        checkpoint.load_scaling_for(ckpt)
    with caplog.at_level(logging.WARNING, logger="jaxscale.training"):
        train(config, data, checkpoint_dir=ckpt, resume=True, max_steps=4)
    assert "scaling.npz is damaged" in caplog.text
    _, params = checkpoint.load_scaling_for(ckpt)  # rewritten, intact again
    np.testing.assert_array_equal(np.asarray(params.mean), np.asarray(first.scaling[1].mean))
