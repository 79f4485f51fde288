"""Per-image sums that run at full speed on every backend.

XLA:CPU compiles a reduction over an image's pixels (`jnp.sum(x, axis=(1, 2))` on a batch)
into a loop that adds one value at a time. The same sum written as a matrix-vector product
with a vector of ones goes to the CPU's vectorised, multi-threaded GEMV instead, several times
faster for the samplewise modes and the statistics (docs/performance.md). GPUs and TPUs reduce
at memory bandwidth already
(and a float32 dot on a TPU would need several bf16 passes), so there the sum stays `jnp.sum`.
`jax.lax.platform_dependent` makes the choice when the program is lowered, so one traced
function is right on every platform.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np


def _sum_by_dot(x: jax.Array) -> jax.Array:
    ones = jnp.ones((x.shape[1],), x.dtype)
    return jax.lax.dot_general(x, ones, (((1,), (0,)), ((), ())),
                               precision=jax.lax.Precision.HIGHEST)


def _sum_by_reduce(x: jax.Array) -> jax.Array:
    return jnp.sum(x, axis=1)


def sum_middle_axis(x: jax.Array) -> jax.Array:
    """Sums axis 1 of a 3-D array: float[N, K, C] -> float[N, C] (same float dtype).

    Typical use: `images.reshape(n, h * w, c)` gives per-image, per-channel sums, and
    `images.reshape(n, h * w * c, 1)` per-image sums over everything.
    """
    if x.ndim != 3:
        raise ValueError(f"sum_middle_axis takes a rank-3 array [N, K, C], got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"sum_middle_axis takes a float array, got {x.dtype}")
    return jax.lax.platform_dependent(x, cpu=_sum_by_dot, default=_sum_by_reduce)


YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# XLA's default YNNPACK fusion types in jaxlib 0.10 less LIBRARY_FUSION_TYPE_REDUCE (and the
# convolutions): dots stay on YNNPACK, reductions go back to XLA's own loops. Those fuse a
# reduction over a middle axis with the conversion and arithmetic that feed it, so the exact
# statistics of uint8 images (`statistics._exact_stats`) read each batch once and write no
# float32 temporary; YNNPACK reduces a materialised float32 array (MNIST's channel
# statistics: ~2x the work per batch, measured on the 2-core development host under load).
FUSED_REDUCTIONS = {YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def fused_reduction_options(platform: str) -> dict[str, str]:
    """`compiler_options` for jitted statistics passes on `platform`: `FUSED_REDUCTIONS` on
    CPU when this jaxlib accepts them and `XLA_FLAGS` does not set the option itself (the
    user's choice wins); {} elsewhere."""
    if platform != "cpu" or YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    probe = jax.device_put(np.zeros((2, 3), np.float32), jax.devices("cpu")[0])
    try:
        jax.jit(lambda x: jnp.sum(x, axis=1), compiler_options=FUSED_REDUCTIONS).lower(
            probe).compile()
    except Exception:  # noqa: BLE001 - an unknown option or enum value: keep XLA's defaults
        return {}
    return dict(FUSED_REDUCTIONS)
