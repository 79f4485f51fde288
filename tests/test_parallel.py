"""pmap and jit+Mesh over 8 host devices compute what one device computes."""

import types

import jax
import numpy as np
import pytest

from benchmarks.timing import count_compiles
from jaxscale.data.datasets import synthetic_dataset
from jaxscale.data.pipeline import ResidentSource
from jaxscale.data.sharding import DATA_AXIS, data_mesh
from jaxscale.scaling import fit_scaling, scaling_config
from jaxscale.training import runners
from jaxscale.training.config import TrainConfig, make_optimizer
from jaxscale.training.steps import create_train_state

STEPS = 4
IMAGE_SHAPE = (16, 16, 1)  # the smallest the BN CNN's valid convolutions and pools take


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(256, IMAGE_SHAPE, 10, seed=3)


def _float64(state, tx):
    """`state` with float64 parameters and BatchNorm statistics (and a fresh optimizer state
    for them): the model then computes in float64 from the first convolution on."""
    def wide(tree):
        return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)

    params = wide(state.params)
    return state.replace(params=params, batch_stats=wide(state.batch_stats),
                         opt_state=tx.init(params))


def _curve(kind, config, data, devices):
    """Losses of STEPS single-step calls of the trainer's program, the final state and the
    compilations after the first step."""
    scale_cfg = scaling_config(config.scaling)
    params = fit_scaling(scale_cfg, data.images)
    tx = make_optimizer(config, STEPS)
    runner = runners.make_runner(kind, config, tx, scale_cfg, params,
                                 devices=jax.devices()[:devices])
    source = ResidentSource(data, placement=runner.placement)
    state = runner.put_state(_float64(create_train_state(
        runner.model, tx, IMAGE_SHAPE, jax.random.PRNGKey(config.seed)), tx))
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


# How close two runs of the same global-batch math on 1 and on 8 devices must be. They differ
# only in the order of the reductions over the batch (BatchNorm statistics, the loss mean, the
# gradient sums: 8 partial sums of 8 rows instead of one sum of 64). A sum of n terms in any
# order errs by at most gamma_n * sum|t|, gamma_n ~ n u (Higham, Accuracy and Stability of
# Numerical Algorithms, 4.2). The longest sums here are the convolution kernel gradients,
# n = B * H * W = 64 * 14 * 14 ~ 1.3e4 terms. In float32 (u = 2^-24) that is up to 7.5e-4 of
# sum|t|, and Adam divides near-zero gradients by sqrt(v) + 1e-8, which turns such a rounding
# difference into a whole +-lr step: no bound worth having survives four steps, and what one
# CPU rounds another rounds differently (AVX2 vs AVX-512 kernels). So the comparison runs in
# float64 (u = 2^-53: 1.4e-12 of sum|t| per reduction) with SGD, whose update is linear in the
# gradient. RELATIVE allows 7e2 times that per-reduction bound for cancellation
# (sum|t| / |sum t|) and for the growth through STEPS steps; the bugs this test is for (a
# device normalising with its own shard's BatchNorm statistics, a psum where a pmean belongs,
# another device's rows, keys or dropout masks) change the loss by more than 1e-3.
RELATIVE = 1e-9


def _assert_leaves_close(got, want):
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got),
                    strict=True):
        scale = max(float(np.abs(a).max()), 1e-3)
        assert np.abs(np.asarray(b, np.float64) - a).max() <= RELATIVE * scale


@pytest.mark.numerics
@pytest.mark.parametrize("kind,dropout", [
    # One global program, only partitioned: dropout draws the same masks.
    ("mesh", None),
    # pmap draws dropout per device (keys folded with the device index), so the 1-device
    # run would draw other masks; without dropout the math is the same global batch, with
    # BatchNorm statistics averaged over the pmap axis.
    ("pmap", 0.0),
])
def test_eight_devices_match_one(data, kind, dropout):
    assert jax.device_count() >= 8
    config = TrainConfig(model="bn_cnn", scaling="standardize", optimizer="sgd",
                         learning_rate=0.05, dropout_rate=dropout, batch_size=64,
                         eval_batch_size=64)
    with jax.enable_x64(True):
        one, one_state, _ = _curve("none", config, data, 1)
        eight, eight_state, compiles = _curve(kind, config, data, 8)
    assert one[-1] < one[0]
    assert compiles == 0  # compiled for the first step, then reused
    np.testing.assert_allclose(eight, one, rtol=RELATIVE)
    _assert_leaves_close(eight_state.batch_stats, one_state.batch_stats)
    _assert_leaves_close(eight_state.params, one_state.params)


@pytest.mark.numerics
def test_augmentation_over_a_mesh_draws_what_one_device_draws(data):
    """The mesh step augments its rows inside the partitioned program: every image must get
    the transform it gets on one device (threefry keys are partitionable), whatever the split.
    Same draws leave only the rounding of the resampling: each output pixel is a bilinear
    blend of 4 input pixels with weights linear in a float32 coordinate |c| < 64, which
    another fusion may round a few ulps (2^-18 each) apart; pixels differ by at most 255, so
    the outputs agree to 2 * 255 * 4 * 2^-18 < 8e-3. Another draw moves pixels by tens."""
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxscale.augmentation import SEED_RECIPE, augment

    images = data.images[:64]
    key = jax.random.PRNGKey(0)
    mesh = data_mesh(jax.devices()[:8])
    one = jax.jit(augment, static_argnums=2)(key, images, SEED_RECIPE)
    eight = jax.jit(augment, static_argnums=2,
                    in_shardings=(NamedSharding(mesh, PartitionSpec()),
                                  NamedSharding(mesh, PartitionSpec(DATA_AXIS))),
                    out_shardings=NamedSharding(mesh, PartitionSpec(DATA_AXIS)))(
        key, images, SEED_RECIPE)
    assert len(eight.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(eight), np.asarray(one), rtol=0, atol=8e-3)
    assert np.abs(np.asarray(one, np.float32) - images).max() > 10  # it did augment


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


@pytest.mark.parametrize("kind", ["mesh", "pmap"])
def test_chunks_of_steps_are_the_single_steps_on_eight_devices(data, kind):
    # On CPU devices a chunk of K steps is K calls of the one-step program, each given its
    # step sliced from the sharded (mesh) or per-device (pmap) chunk: the same arithmetic as
    # one step per chunk, so the same bits.
    from jaxscale.training.loop import train
    config = TrainConfig(model="small_cnn", scaling="standardize", epochs=1, batch_size=64,
                         optimizer="sgd", parallel=kind, devices=8)
    one = train(config, data)
    chunked = train(config.replace(steps_per_call=3), data)  # 4 steps: chunks of 3 and 1
    for a, b in zip(jax.tree_util.tree_leaves(one.state),
                    jax.tree_util.tree_leaves(chunked.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert one.history[-1]["train_loss"] == chunked.history[-1]["train_loss"]
