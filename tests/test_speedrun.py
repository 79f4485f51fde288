"""The speedrun recipe: its convolution, schedule, augmentation, determinism, and the
multi-step dispatch against one step per dispatch. Tiny nets and batches: seconds."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import speedrun, speedrun_recipe as sr
from benchmarks.speedrun_config import RECIPES, SpeedrunConfig

RECIPES_BENCH = RECIPES

TINY = SpeedrunConfig(name="tiny", widths=(4, 8), pools=(True, False), batch_size=8,
                      epochs=1, lr=0.1, shift=2)


def tiny_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int32))


def test_random_shift_moves_each_image_by_whole_pixels_with_zero_fill():
    images = np.random.default_rng(1).random((5, 6, 7, 2)).astype(np.float32) + 1.0
    key = jax.random.PRNGKey(3)
    shift = jax.jit(sr.random_shift, static_argnums=2)
    shifted = np.asarray(shift(key, jnp.asarray(images), 2))
    offsets = np.asarray(jax.jit(lambda k: jax.random.randint(k, (5, 2), 0, 5))(key))
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for n, (dy, dx) in enumerate(offsets):
        np.testing.assert_array_equal(shifted[n], padded[n, dy:dy + 6, dx:dx + 7])
    np.testing.assert_array_equal(sr.random_shift(key, jnp.asarray(images), 0), images)


def test_schedule_breakpoints_and_the_traced_rate_agree():
    config = SpeedrunConfig(lr=0.2, warmup_fraction=0.25, final_lr_fraction=0.1)
    total = 100
    xs, ys = config.lr_breakpoints(total)
    assert xs == (0.0, 24.0, 99.0) and ys == (0.2 / 25, 0.2, pytest.approx(0.02))
    rates = np.asarray([sr.lr_at(config, total, s) for s in (0, 24, 99, 50)])
    expected = [0.2 / 25, 0.2, 0.02, 0.2 - (0.2 - 0.02) * (50 - 24) / 75]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)  # float32 interpolation


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="differ in length"):
        SpeedrunConfig(widths=(8, 16), pools=(True,))
    with pytest.raises(ValueError, match="batch_size"):
        SpeedrunConfig(batch_size=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        SpeedrunConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="no batch"):
        SpeedrunConfig(batch_size=128).steps_per_epoch(100)


@functools.cache
def _compiled(config, total, k):
    """One jitted program per (config, schedule length, steps per dispatch) for all tests."""
    if k == 1:
        return jax.jit(functools.partial(sr.train_step, config, total))
    return jax.jit(functools.partial(sr.train_steps, config, total))


def _train(config, k, steps, seed=0):
    images, labels = tiny_data()
    total = config.total_steps(len(labels))
    state = sr.init_state_jit(config, seed, (28, 28, 1), total_steps=total)
    key = sr.step_key(seed)
    rows = sr.epoch_rows(seed, 0, len(labels), config.batch_size)[:steps]
    run = _compiled(config, total, k)
    losses = []
    if k == 1:
        for r in rows:
            state, metrics = run(state, images, labels, r, key)
            losses.append(metrics["loss"])
        return state, np.asarray(losses)
    for start in range(0, steps, k):
        state, metrics = run(state, images, labels, rows[start:start + k], key)
        losses.extend(np.asarray(metrics["loss"]))
    return state, np.asarray(losses)


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def test_same_seed_same_numbers():
    first, losses = _train(TINY, 1, 3)
    second, again = _train(TINY, 1, 3)
    np.testing.assert_array_equal(losses, again)
    for a, b in zip(_leaves(first), _leaves(second)):
        np.testing.assert_array_equal(a, b)
    other, _ = _train(TINY, 1, 3, seed=1)
    assert not np.array_equal(_leaves(first.params)[0], _leaves(other.params)[0])


def test_k_steps_per_dispatch_equal_k_single_dispatches():
    """lax.scan over K steps runs the same operations in the same order as K calls of the
    jitted step, so the parameters are bitwise equal (what could break it: XLA fusing the
    loop body differently and reassociating a float reduction; this pins that it does not
    on this backend)."""
    single, single_losses = _train(TINY, 1, 6)
    multi, multi_losses = _train(TINY, 3, 6)
    np.testing.assert_array_equal(single_losses, multi_losses)
    assert int(multi.step) == int(single.step) == 6
    for a, b in zip(_leaves(single), _leaves(multi)):
        np.testing.assert_array_equal(a, b)


def test_evaluate_counts_correct_predictions_in_one_call():
    images, labels = tiny_data(40)
    config = dataclasses.replace(TINY, eval_batch_size=20)
    state, _ = _train(TINY, 1, 2)
    correct = int(jax.jit(functools.partial(sr.evaluate, config))(
        state.params, state.batch_stats, images, labels))
    logits = jax.jit(sr.make_model(config).apply)(
        {"params": state.params, "batch_stats": state.batch_stats},
        jnp.asarray(images, jnp.float32) / 255.0)
    assert correct == int((np.asarray(logits).argmax(-1) == labels).sum())
    with pytest.raises(ValueError, match="multiple"):
        sr.evaluate(dataclasses.replace(config, eval_batch_size=30), state.params,
                    state.batch_stats, images, labels)


def test_epoch_rows_are_a_permutation_cut_into_batches():
    rows = sr.epoch_rows(0, 1, 100, 32)
    assert rows.shape == (3, 32) and rows.dtype == np.int32
    assert len(set(rows.ravel())) == 96 and rows.max() < 100
    assert not np.array_equal(rows, sr.epoch_rows(0, 2, 100, 32))
    np.testing.assert_array_equal(rows, sr.epoch_rows(0, 1, 100, 32))


@pytest.mark.slow  # a benchmark peer's training (Keras / PyTorch imports): make test-slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_peers_build_the_same_network(name):
    """Same layers, same parameter count per layer, in PyTorch and Keras (when installed)."""
    config = RECIPES[name]
    params = sr.init_state(config, 0, total_steps=10).params
    ours = sorted(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    try:
        from benchmarks import speedrun_torch
        torch_model = speedrun_torch.build_model(config)
        assert sorted(p.numel() for p in torch_model.parameters()) == ours
    except ImportError:
        pass
    keras = pytest.importorskip("keras")
    from benchmarks import speedrun_keras
    keras_model = speedrun_keras.build_model(config)
    trainable = sorted(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
    assert trainable == ours and keras.__version__


def _records():
    return [
        {"system": "jaxscale", "recipe": "r", "seed": s, "accuracy": 0.99 + s / 1000,
         "time_to_end_s": 10.0 + s, "compile_s": 2.0, "images_per_s": 1e4, "cache": "warm",
         "curve": [{"epoch": 1, "seconds": 10.0 + s, "accuracy": 0.99 + s / 1000}]}
        for s in range(2)] + [
        {"system": "torch", "recipe": "r", "seed": 0, "accuracy": 0.99, "time_to_end_s": 30.0,
         "compile_s": 0.0, "images_per_s": 3e3, "curve": []},
        {"system": "keras", "recipe": "r", "seed": 0, "status": "failed", "why": "boom"}]


def test_summary_and_tables_from_records():
    records = _records()
    rows = speedrun.summarize(records, ["r"])
    ours, torch_row, keras_row = rows
    assert ours["time_mean_s"] == 10.5 and ours["accuracy_min"] == 0.99
    assert torch_row["ours_speedup"] == pytest.approx(30.0 / 10.5)
    assert keras_row["status"] == "n/a" and keras_row["why"] == "boom"
    assert "boom" in speedrun.format_records(records)
    assert "2.86x" in speedrun.format_summary(rows)


def test_docs_table_and_chart_are_made_from_the_results_file(tmp_path, monkeypatch):
    from benchmarks import report

    records = _records()
    rows = speedrun.summarize(records, ["r"])
    meta = {"time_utc": "2026-12-01T22:00:00+00:00", "commit": "b" * 40, "dirty": False,
            "backend": "cpu", "device": "cpu", "cpu_model": "EPYC", "host_cpus": 2,
            "versions": {"jax": "0.10.2"}, "quick": True, "data_source": "mnist (test split)",
            "torch": "2.13.0", "split": "test", "total_seconds": 71.0,
            "recipes": {"r": {"target": 0.99}}}
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    assert report.speedrun_table("speedrun-cpu.json").startswith("No results committed yet")
    path = report.write_json(tmp_path / "speedrun-cpu.json", meta,
                             rows + [{"run": r} for r in records])
    table = report.speedrun_table("speedrun-cpu.json")
    assert ("| r | jaxscale | 2 | 99.05 % (99.00 %) | 10.5 s (11.0 s) | 2.0 s | 10.0k | 1.0x |"
            in table)
    assert "| r | torch | 1 |" in table and "2.9x |" in table
    assert "| r | keras | - | n/a: boom |" in table
    assert ("`make speedrun`: 2026-12-01, commit bbbbbbbb, EPYC, 2 cores, jax 0.10.2; a quick "
            "run, not the full one, real MNIST; torch 2.13.0, test split, 71 s in all.") in table
    assert "(../benchmarks/results/speedrun-cpu.png)" in table
    pytest.importorskip("matplotlib")
    assert [source for source, _ in report.stale_charts(tmp_path)] == [path]
    report.CHARTS["speedrun"](path, tmp_path / "speedrun-cpu.png")
    assert report.stale_charts(tmp_path) == []


def test_a_run_short_of_the_default_is_marked_quick():
    assert not speedrun.is_quick(speedrun.parse_args([]))
    assert not speedrun.is_quick(speedrun.parse_args(["--split", "validation"]))
    for argv in (["--seeds", "1"], ["--recipes", "speedrun99"], ["--peers", ""],
                 ["--epochs", "1"], ["--peer-seeds", "keras=1"]):
        assert speedrun.is_quick(speedrun.parse_args(argv)), argv


def test_torch_peer_resamples_as_jaxscale_augmentation():
    """The PyTorch peer's rotation / shift / zoom is jaxscale's transform: same parameters,
    same pixels (bilinear in float32 on [0, 1] images: the two order their few products
    differently, so agreement to ~1e-5)."""
    torch = pytest.importorskip("torch")
    import jaxscale
    from benchmarks import speedrun_torch

    images = np.random.default_rng(2).random((3, 28, 28, 1)).astype(np.float32)
    params = {"theta": [7.0, -4.0, 0.0], "tx": [1.5, -2.0, 0.0], "ty": [-2.0, 0.5, 3.0],
              "zx": [1.05, 0.92, 1.0], "zy": [0.95, 1.08, 1.0]}
    transforms = jaxscale.augmentation.Transforms.identity(3).replace(
        **{k: jnp.asarray(v, jnp.float32) for k, v in params.items()})
    # any geometric knob makes apply_transforms resample with the given transforms
    geometry = jaxscale.augment_config(rotation_range=10, fill_mode="nearest")
    ours = jaxscale.augmentation.apply_transforms(jnp.asarray(images), transforms, geometry)
    theirs = speedrun_torch.affine(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                                   *(torch.tensor(params[k]) for k in
                                     ("theta", "tx", "ty", "zx", "zy")))
    np.testing.assert_allclose(theirs.numpy().transpose(0, 2, 3, 1), np.asarray(ours),
                               atol=2e-5)


def test_peer_seed_rules():
    table = speedrun.parse_peer_seeds("torch_compile=2,speedrun995=0,keras@speedrun99=4")
    assert speedrun.seeds_for(table, "torch", "speedrun99", 5) == 5
    assert speedrun.seeds_for(table, "torch_compile", "speedrun99", 5) == 2
    assert speedrun.seeds_for(table, "torch_compile", "speedrun995", 5) == 0
    assert speedrun.seeds_for(table, "keras", "speedrun99", 5) == 4
    with pytest.raises(SystemExit):
        speedrun.parse_peer_seeds("torch")


@pytest.mark.parametrize("name", ["speedrun99", "speedrun995"])
def test_the_trainers_recipes_are_make_speedruns(name):
    """`jaxscale train --recipe NAME` (jaxscale.training.recipes) holds the numbers of the
    benchmark's recipe (benchmarks/speedrun_config.py, which the peers import without JAX)."""
    from jaxscale.training.models import SpeedrunNet
    from jaxscale.training.recipes import MNIST_STEPS_PER_EPOCH, RECIPES

    ours, bench = RECIPES[name], RECIPES_BENCH[name]
    import jaxscale

    assert (ours.model, ours.optimizer, ours.schedule) == ("speedrun_net", "nesterov",
                                                           "onecycle")
    assert jaxscale.scaling_config(ours.scaling) == sr.SCALING
    assert (ours.epochs, ours.batch_size, ours.learning_rate, ours.weight_decay,
            ours.label_smoothing, ours.eval_batch_size) == (
        bench.epochs, bench.batch_size, bench.lr, bench.weight_decay, bench.label_smoothing,
        bench.eval_batch_size)
    assert bench.momentum == 0.9 and bench.final_lr_fraction == 0 and bench.shift == 0
    assert MNIST_STEPS_PER_EPOCH == bench.steps_per_epoch(60_000)
    assert ours.warmup_steps == round(bench.warmup_fraction * bench.total_steps(60_000))
    expected_augment = sr.augmentation(bench) if bench.augment else None
    assert ours.augment == expected_augment
    net = sr.make_model(bench)
    assert net == SpeedrunNet(num_classes=10)  # the registered model's defaults are the recipe's
