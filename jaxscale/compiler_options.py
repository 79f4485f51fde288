"""XLA compiler options for the compiled train and eval steps: XLA:CPU's own convolutions.

jaxlib 0.10's XLA:CPU hands convolutions, dots and reductions to the YNNPACK library by
default (`xla_cpu_experimental_ynn_fusion_type`). For the convolutions of these CNNs YNNPACK is
the slow choice: on this project's 2-core AMD EPYC (AVX-512) host, the BN CNN's 26x26x32 -> 32
convolution at batch 64 took 11.4 ms through YNNPACK and 3.8 ms through XLA's built-in (Eigen)
convolution, and the whole BN CNN train step ran at ~1,500 instead of ~1,000 images/s
(batch 64, interleaved in one process), ~1,000 instead of ~400 at batch 512.

`step_compiler_options(devices)` returns the `compiler_options` that keep dots and reductions
on YNNPACK and take convolutions off it, for steps compiled for CPU devices; `{}` elsewhere
(GPU, TPU), when this jaxlib does not accept the option (checked once by compiling a tiny
program), when `XLA_FLAGS` already sets it (the user's choice wins), or when the environment
sets `JAXSCALE_XLA_CPU_CONVOLUTIONS=ynnpack`. Options given to one `jax.jit` apply to that
program only: Keras or other code in the same process keeps XLA's defaults. The same effect
process-wide, for any JAX program: `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# XLA's default YNNPACK fusion types in jaxlib 0.10 less INDIVIDUAL_CONVOLUTION (the option
# replaces the whole list).
YNN_WITHOUT_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
ENV_SWITCH = "JAXSCALE_XLA_CPU_CONVOLUTIONS"  # "ynnpack": leave XLA's default alone
CHOICES = ("xla", "ynnpack")


def convolution_library() -> str:
    """Who runs CPU convolutions in our steps: "xla" (default) or "ynnpack" (XLA's default),
    from `JAXSCALE_XLA_CPU_CONVOLUTIONS`.

    Raises:
      ValueError: the variable is set to something else.
    """
    choice = os.environ.get(ENV_SWITCH, "xla").strip().lower() or "xla"
    if choice not in CHOICES:
        raise ValueError(f"{ENV_SWITCH} must be one of {CHOICES}, got {choice!r}")
    return choice


def step_compiler_options(devices) -> dict[str, str]:
    """`compiler_options` for `jax.jit` of a train/eval step that runs on `devices`.

    Args:
      devices: the jax devices the step runs on.

    Returns:
      {YNN_FUSION_OPTION: YNN_WITHOUT_CONVOLUTIONS} when every device is a CPU and the option
      applies (see the module docstring); {} otherwise.
    """
    devices = list(devices)
    if not devices or any(device.platform != "cpu" for device in devices):
        return {}
    if convolution_library() == "ynnpack" or YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(_accepted_options())


@functools.cache
def _accepted_options() -> tuple[tuple[str, str], ...]:
    """The options if this jaxlib's CPU compiler accepts them, else () (checked once)."""
    options = {YNN_FUSION_OPTION: YNN_WITHOUT_CONVOLUTIONS}
    probe = jax.device_put(np.zeros((1, 3, 3, 1), np.float32), jax.devices("cpu")[0])
    try:
        jax.jit(_probe_convolution, compiler_options=options).lower(probe).compile()
    except Exception:  # noqa: BLE001 - an unknown option or enum value: keep XLA's defaults
        return ()
    return tuple(options.items())


def _probe_convolution(x):
    return jax.lax.conv_general_dilated(x, jnp.ones((3, 3, 1, 1), x.dtype), (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
