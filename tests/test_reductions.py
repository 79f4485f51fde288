"""sum_middle_axis: float64-exact sums on every path, and the CPU path really is a GEMV."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.reductions import sum_middle_axis


@pytest.mark.numerics
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 30, 1), (5, 784, 3), (3, 12, 4)])
@pytest.mark.parametrize("jit", [False, True])
def test_sums_match_float64(shape, jit):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 50 + 100
    fn = jax.jit(sum_middle_axis) if jit else sum_middle_axis
    got = np.asarray(fn(jnp.asarray(x)))
    assert got.shape == (shape[0], shape[2]) and got.dtype == np.float32
    np.testing.assert_allclose(got, x.astype(np.float64).sum(axis=1), rtol=2e-6)


def test_uint8_valued_sums_are_exact():
    # up to 2^24 / 255 values of an image: every partial sum is an exact float32 integer
    x = np.random.default_rng(1).integers(0, 256, (4, 4096, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(sum_middle_axis(jnp.asarray(x))),
                                  x.astype(np.int64).sum(axis=1))


def test_cpu_lowers_to_a_dot_and_other_platforms_to_a_reduce():
    x = jnp.ones((8, 16, 1), jnp.float32)
    if jax.default_backend() == "cpu":
        hlo = jax.jit(sum_middle_axis).lower(x).compile().as_text()
        assert " dot(" in hlo and " reduce(" not in hlo
    # the non-CPU branch is staged out too: lowered for a GPU it is a plain reduction
    text = jax.jit(sum_middle_axis).trace(x).lower(lowering_platforms=("cuda",)).as_text()
    assert "stablehlo.reduce" in text and "dot_general" not in text


@pytest.mark.parametrize("x, message", [
    (jnp.ones((4, 4)), "rank-3"),
    (jnp.ones((2, 4, 1), jnp.int32), "float"),
])
def test_rejects_what_it_does_not_sum(x, message):
    with pytest.raises(ValueError, match=message):
        sum_middle_axis(x)
