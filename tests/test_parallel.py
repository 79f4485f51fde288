"""pmap and jit+Mesh over 8 host devices compute what one device computes."""

import types

import jax
import numpy as np
import pytest

from benchmarks.timing import count_compiles
from jaxscale.data.datasets import synthetic_dataset
from jaxscale.data.pipeline import ResidentSource
from jaxscale.scaling import fit_scaling, scaling_config
from jaxscale.training import runners
from jaxscale.training.config import TrainConfig, make_optimizer
from jaxscale.training.steps import create_train_state

STEPS = 4


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(256, (28, 28, 1), 10, seed=3)


def _curve(kind, config, data, devices):
    """Losses of STEPS single-step calls of the trainer's program, the final state and the
    compilations after the first step."""
    scale_cfg = scaling_config(config.scaling)
    params = fit_scaling(scale_cfg, data.images)
    tx = make_optimizer(config, STEPS)
    runner = runners.make_runner(kind, config, tx, scale_cfg, params,
                                 devices=jax.devices()[:devices])
    source = ResidentSource(data, placement=runner.placement)
    state = runner.put_state(create_train_state(runner.model, tx, (28, 28, 1),
                                                jax.random.PRNGKey(config.seed)))
    key = runner.put_key(config.seed)
    losses = []

    def step(state, chunk):
        state, sums = runner.train(state, runner.train_sums(), source.data, chunk, key)
        losses.append(float(np.asarray(sums["loss"].addressable_data(0)).reshape(-1)[0]))
        return state

    chunks = source.epoch(config.seed, 0, config.batch_size, drop_remainder=True, stop=STEPS)
    state = step(state, next(chunks))
    with count_compiles() as compiles:
        for chunk in chunks:
            state = step(state, chunk)
    return np.array(losses), runner.get_state(state), compiles[0]


@pytest.mark.parametrize("kind,augment,dropout", [
    # One global program, only partitioned: dropout and augmentation draw the same numbers.
    ("mesh", "seed", None),
    # pmap draws dropout per device (keys folded with the device index), so the 1-device
    # run would draw other masks; without dropout the math is the same global batch, with
    # BatchNorm statistics averaged over the pmap axis.
    ("pmap", None, 0.0),
])
def test_eight_devices_match_one(data, kind, augment, dropout):
    assert jax.device_count() >= 8
    config = TrainConfig(model="bn_cnn", scaling="standardize", augment=augment,
                         dropout_rate=dropout, batch_size=64, eval_batch_size=64)
    one, one_state, _ = _curve("none", config, data, 1)
    eight, eight_state, compiles = _curve(kind, config, data, 8)
    np.testing.assert_allclose(eight, one, rtol=2e-5, atol=2e-5)
    assert one[-1] < one[0]
    assert compiles == 0  # compiled for the first step, then reused
    for a, b in zip(jax.tree_util.tree_leaves(one_state.batch_stats),
                    jax.tree_util.tree_leaves(eight_state.batch_stats)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(one_state.params),
                    jax.tree_util.tree_leaves(eight_state.params)):
        # Adam divides by sqrt(v): a near-zero gradient summed in another order can move
        # its weight by a visible fraction of one step (lr), so bound the difference by a
        # tenth of the most any weight can have moved, and the typical one tightly.
        assert np.abs(b - a).max() < 0.1 * config.learning_rate * STEPS
        assert np.abs(b - a).mean() < 0.01 * config.learning_rate


@pytest.mark.parametrize("kind", ["pmap", "mesh"])
def test_batch_must_split_over_devices(kind):
    config = TrainConfig(model="small_cnn", batch_size=60)
    tx = make_optimizer(config, 1)
    with pytest.raises(ValueError, match="does not split"):
        runners.make_runner(kind, config, tx, scaling_config("none"),
                            devices=jax.devices()[:8])


def test_unknown_kind_and_too_many_devices():
    config = TrainConfig(model="small_cnn")
    with pytest.raises(ValueError, match="parallel kind"):
        runners.make_runner("ddp", config, None, scaling_config("none"))
    with pytest.raises(ValueError, match="only"):
        runners.select_devices(jax.local_device_count() + 1)


@pytest.mark.parametrize("platforms, donate", [(("cpu",), ()), (("cpu", "cpu"), ()),
                                                (("gpu",), (0, 1)), (("tpu", "tpu"), (0, 1))])
def test_state_donated_on_accelerators_only(platforms, donate):
    devices = [types.SimpleNamespace(platform=platform) for platform in platforms]
    assert runners.donated_state(devices) == donate
