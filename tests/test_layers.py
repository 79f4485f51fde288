"""The speedrun network's layers against their definitions: the hand-written convolution
gradient against JAX's in float64, space-to-depth and the reshape max pool elementwise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxscale.training.layers as layers


def test_conv2d_values_and_gradients_are_lax_conv_in_float64():
    """The hand-written backward is the same mathematics as JAX's: compared in float64, where
    a different summation order changes at most the last bits (|sum| ~ 1e2, eps 2.2e-16)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((3, 9, 8, 5)))
        kernel = jnp.asarray(rng.standard_normal((3, 3, 5, 4)))
        probe = jnp.asarray(rng.standard_normal((3, 7, 6, 4)))

        def reference(x, kernel):
            return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        ours = layers.conv2d(x, kernel)
        np.testing.assert_allclose(ours, reference(x, kernel), rtol=0, atol=1e-12)
        grads = jax.grad(lambda x, k: (layers.conv2d(x, k) * probe).sum(), (0, 1))(x, kernel)
        expected = jax.grad(lambda x, k: (reference(x, k) * probe).sum(), (0, 1))(x, kernel)
        for got, want in zip(grads, expected):
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)


def test_space_to_depth_and_max_pool_match_their_definitions():
    x = np.arange(2 * 6 * 4 * 3, dtype=np.float32).reshape(2, 6, 4, 3)
    folded = np.asarray(layers.space_to_depth(jnp.asarray(x), 2))
    assert folded.shape == (2, 3, 2, 12)
    # channel index = (row in block * 2 + column in block) * C + channel
    for i in range(2):
        for j in range(2):
            np.testing.assert_array_equal(folded[..., (i * 2 + j) * 3:(i * 2 + j + 1) * 3],
                                          x[:, i::2, j::2, :])
    pooled = np.asarray(layers.max_pool2(jnp.asarray(x[:, :5])))  # odd height: last row dropped
    np.testing.assert_array_equal(pooled, x[:, :4].reshape(2, 2, 2, 2, 2, 3).max((2, 4)))
    with pytest.raises(ValueError, match="does not divide"):
        layers.space_to_depth(jnp.zeros((1, 5, 4, 1)), 2)
