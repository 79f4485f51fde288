"""pmap and jit+Mesh over 8 host devices compute what one device computes."""

import types

import jax
import numpy as np
import pytest

from jaxscale import parallel, training
from jaxscale.data.datasets import synthetic_dataset
from jaxscale.scaling import fit_scaling, scaling_config

STEPS = 4


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(256, (28, 28, 1), 10, seed=3)


def _curve(kind, config, data, devices):
    scale_cfg = scaling_config(config.scaling)
    params = fit_scaling(scale_cfg, data.images)
    tx = training.make_optimizer(config, STEPS)
    runner = parallel.make_runner(kind, config, tx, scale_cfg, params,
                                  devices=jax.devices()[:devices])
    key = jax.random.PRNGKey(config.seed)
    state = runner.put_state(training.create_train_state(runner.model, tx, (28, 28, 1), key))
    resident = runner.put_data(data.images, data.labels)
    indices, _ = jax.device_get(training.pipeline.epoch_indices(
        key, 256, config.batch_size, drop_remainder=True))
    indices = runner.put_indices(indices)
    losses = []
    with training.count_compiles() as compiles:
        for s in range(STEPS):
            state, metrics = runner.train(state, resident, indices, s, key)
            losses.append(float(np.mean(np.asarray(metrics["loss"]))))
    host = runner.get_state(state)
    return np.array(losses), host, compiles[0]


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
    config = training.TrainConfig(model="bn_cnn", scaling="standardize", augment=augment,
                                  dropout_rate=dropout, batch_size=64, eval_batch_size=64)
    one, one_state, _ = _curve("none", config, data, 1)
    eight, eight_state, compiles = _curve(kind, config, data, 8)
    np.testing.assert_allclose(eight, one, rtol=2e-5, atol=2e-5)
    assert one[-1] < one[0]
    assert compiles == 1  # one compiled step, reused
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
    config = training.TrainConfig(model="small_cnn", batch_size=60)
    tx = training.make_optimizer(config, 1)
    with pytest.raises(ValueError, match="does not split"):
        parallel.make_runner(kind, config, tx, scaling_config("none"),
                             devices=jax.devices()[:8])


def test_unknown_kind_and_too_many_devices():
    config = training.TrainConfig(model="small_cnn")
    with pytest.raises(ValueError, match="parallel kind"):
        parallel.make_runner("ddp", config, None, scaling_config("none"))
    with pytest.raises(ValueError, match="only"):
        parallel.select_devices(jax.local_device_count() + 1)


@pytest.mark.parametrize("platforms, donate", [(("cpu",), ()), (("cpu", "cpu"), ()),
                                                (("gpu",), (0,)), (("tpu", "tpu"), (0,))])
def test_state_donated_on_accelerators_only(platforms, donate):
    devices = [types.SimpleNamespace(platform=platform) for platform in platforms]
    assert parallel.donated_state(devices) == donate
