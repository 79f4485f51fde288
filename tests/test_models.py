"""Models: registry, output shapes, parameter counts, BatchNorm really in the graph."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxscale.training.models as models


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name,params,bn_layers", [
    # small: 32*9+32 + 64*32*9+64 + 1600*64+64 + 64*10+10
    ("small_cnn", 320 + 18496 + 102464 + 650, 0),
    # BN CNN: conv weights (no bias) + 5 BN scale/offset + dense 1024*512 + 512*10+10
    ("bn_cnn", 288 + 9216 + 18432 + 36864 + 2 * (32 + 32 + 64 + 64 + 512) + 524288 + 5130, 5),
    # speedrun: space-to-depth 2 (14x14x4), conv 3x3x4x32, pool (6x6), conv 3x3x32x64 (4x4),
    # dense 1024*256 (no biases before BN), 3 BN scale/offset, head 256*10+10
    ("speedrun_net", 1152 + 18432 + 262144 + 2 * (32 + 64 + 256) + 2570, 3),
])
def test_parameter_counts_and_batchnorm(name, params, bn_layers):
    model = models.get_model(name, 10)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))
    assert _count(variables["params"]) == params
    assert len(variables.get("batch_stats", {})) == bn_layers
    logits = model.apply(variables, jnp.zeros((3, 28, 28, 1)))
    assert logits.shape == (3, 10)


def test_batchnorm_changes_running_stats_in_training():
    model = models.get_model("bn_cnn", 10)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1)) * 3 + 2
    variables = model.init(jax.random.PRNGKey(0), x)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.PRNGKey(2)})
    before = variables["batch_stats"]["BatchNorm_0"]["mean"]
    after = updates["batch_stats"]["BatchNorm_0"]["mean"]
    assert float(jnp.abs(after - before).max()) > 1e-3


def test_dropout_rate_override_makes_training_deterministic():
    model = models.get_model("bn_cnn", 10, dropout_rate=0.0)
    assert model.dropout_rate == 0.0
    x = jnp.ones((2, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    outs = [model.apply(variables, x, train=True, mutable=["batch_stats"],
                        rngs={"dropout": jax.random.PRNGKey(k)})[0] for k in (1, 2)]
    np.testing.assert_array_equal(outs[0], outs[1])


def test_registry_errors_and_extension():
    with pytest.raises(ValueError, match="unknown model"):
        models.get_model("resnet9000")
    with pytest.raises(ValueError, match="num_classes"):
        models.get_model("small_cnn", 0)
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("small_cnn")(lambda n, **k: None)
    assert {"small_cnn", "bn_cnn", "speedrun_net"} <= set(models.MODELS)


def test_none_options_keep_the_models_defaults_and_zero_is_passed():
    get_model = models.get_model
    assert get_model("bn_cnn", dropout_rate=None, axis_name=None).dropout_rate == 0.2
    assert get_model("bn_cnn", dropout_rate=0.0).dropout_rate == 0.0
    assert get_model("bn_cnn", axis_name="batch").axis_name == "batch"
    # the small CNN has neither option and ignores both
    assert isinstance(get_model("small_cnn", dropout_rate=0.5, axis_name="batch"), models.SmallCNN)


def test_speedrun_net_computes_in_the_compute_dtype_with_float32_logits():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 28, 28, 1))
    wide = models.get_model("speedrun_net", 10)
    narrow = models.get_model("speedrun_net", 10, dtype=jnp.bfloat16, dropout_rate=0.5)
    variables = wide.init(jax.random.PRNGKey(0), x)
    logits = narrow.apply(variables, x)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
    # bfloat16 rounds every layer's inputs to 8 bits (relative 2^-9): over 4 layers the logits
    # move by a few tenths of a percent of their size, never by 5 %, and never by nothing
    reference = wide.apply(variables, x)
    assert not np.array_equal(np.asarray(logits), np.asarray(reference))
    assert float(jnp.abs(logits - reference).max()) <= 0.05 * float(jnp.abs(reference).max())
    with pytest.raises(ValueError, match="differ in length"):
        models.SpeedrunNet(widths=(8, 16), pools=(True,)).init(jax.random.PRNGKey(0), x)
