"""CPU tuning, in one module: the host allocator and XLA:CPU's convolutions.

Two settings make XLA:CPU train steps fast on the hosts this project runs on; neither matters
on GPUs and TPUs.

## 1. The host allocator: `tune_host_allocator()`
Keeps freed host memory in the process, so XLA's per-step CPU buffers do not page-fault.

Each execution of a compiled XLA:CPU program allocates its temporary buffer (tens of MB for a
train step at batch 64) with `malloc` and frees it at the end. glibc serves requests above its
mmap threshold (at most 32 MiB when adjusted dynamically) with a fresh `mmap` and returns them
to the OS on free, and trims the top of its heap when more than 128 KiB is free there. So every
step faults in every page of its scratch memory again, which is expensive on virtual machines
that return freed pages to the host (page reporting, ballooning).

`tune_host_allocator` raises both thresholds with `mallopt`, so large buffers come from the
heap and stay there for the next step. It also caps glibc at one arena (`M_ARENA_MAX`, as
`MALLOC_ARENA_MAX=1` does): XLA's worker threads otherwise allocate from per-thread arenas,
whose memory kept being handed back and faulted in again despite the thresholds (XLA's own
convolutions allocate their packing buffers on those threads). The cost: memory freed by the
process is kept (up to `trim_threshold`) rather than given back to the OS, and threads share
one malloc lock (XLA's buffers are few and large, so it is not contended). It is a no-op off
glibc (macOS, musl, Windows) and when the environment sets `JAXSCALE_TUNE_ALLOCATOR=0`.

The `jaxscale` command and the benchmarks call it at start-up; library users opt in. What it
gained on the project's machines: docs/performance.md.

## 2. XLA's own convolutions: `step_compiler_options(devices)`
XLA compiler options for the compiled train and eval steps: XLA:CPU's own convolutions.

jaxlib 0.10's XLA:CPU hands convolutions, dots and reductions to the YNNPACK library by
default (`xla_cpu_experimental_ynn_fusion_type`). For the convolutions of these CNNs YNNPACK
was the slower choice on the CPUs this project measured (docs/performance.md), so the steps
jaxscale compiles for CPU devices take convolutions off it.

`step_compiler_options(devices)` returns the `compiler_options` that keep dots and reductions
on YNNPACK and take convolutions off it, for steps compiled for CPU devices; `{}` elsewhere
(GPU, TPU), when this jaxlib does not accept the option (checked once by compiling a tiny
program), when `XLA_FLAGS` already sets it (the user's choice wins), or when the environment
sets `JAXSCALE_XLA_CPU_CONVOLUTIONS=ynnpack`. Options given to one `jax.jit` apply to that
program only: Keras or other code in the same process keeps XLA's defaults. The same effect
process-wide, for any JAX program: `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

# ------------------------------------------------------------------------- host allocator

# mallopt parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

DEFAULT_MMAP_THRESHOLD = 256 << 20  # bytes: requests above this are still mmapped
DEFAULT_TRIM_THRESHOLD = 1 << 30    # bytes of free heap top kept before trimming
DEFAULT_ARENA_MAX = 1               # malloc arenas (glibc's default: 8 per core)
ALLOCATOR_ENV = "JAXSCALE_TUNE_ALLOCATOR"


def _glibc():
    """The process's glibc as a ctypes library, or None when it is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None
    return libc


def tune_host_allocator(mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
                        trim_threshold: int = DEFAULT_TRIM_THRESHOLD,
                        arena_max: int = DEFAULT_ARENA_MAX) -> str:
    """Raises glibc's mmap and trim thresholds and caps its arenas for this process (see the
    module docstring). Call it before the first JAX computation: arenas that threads already
    hold stay theirs.

    Args:
      mmap_threshold: bytes; allocations above it keep being served by mmap. Must be > 0.
      trim_threshold: bytes of free memory at the heap top kept before returning it to the OS.
        Must be > 0.
      arena_max: the most malloc arenas glibc may create. Must be > 0.

    Returns:
      What was done, one line: "glibc X.Y: mmap threshold ..., trim threshold ..., N arena(s)", or
      "unchanged: <why>" (not glibc, switched off by JAXSCALE_TUNE_ALLOCATOR=0, or refused).
    """
    if mmap_threshold <= 0 or trim_threshold <= 0:
        raise ValueError(f"thresholds must be positive, got mmap_threshold={mmap_threshold}, "
                         f"trim_threshold={trim_threshold}")
    if arena_max <= 0:
        raise ValueError(f"arena_max must be positive, got {arena_max}")
    if os.environ.get(ALLOCATOR_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"unchanged: {ALLOCATOR_ENV}={os.environ[ALLOCATOR_ENV]}"
    libc = _glibc()
    if libc is None:
        return "unchanged: the C library is not glibc"
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    version = libc.gnu_get_libc_version().decode()
    int_max = 2**31 - 1  # mallopt takes a C int
    mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, min(mmap_threshold, int_max))
    trim_ok = libc.mallopt(M_TRIM_THRESHOLD, min(trim_threshold, int_max))
    arena_ok = libc.mallopt(M_ARENA_MAX, min(arena_max, int_max))
    if not (mmap_ok and trim_ok and arena_ok):
        return (f"unchanged: glibc {version} refused mallopt (mmap {mmap_ok}, trim {trim_ok}, "
                f"arenas {arena_ok})")
    return (f"glibc {version}: mmap threshold {min(mmap_threshold, int_max) >> 20} MiB, "
            f"trim threshold {min(trim_threshold, int_max) >> 20} MiB, "
            f"{arena_max} arena{'s' if arena_max > 1 else ''}")


# --------------------------------------------------------------------- XLA:CPU convolutions

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# XLA's default YNNPACK fusion types in jaxlib 0.10 less INDIVIDUAL_CONVOLUTION (the option
# replaces the whole list).
YNN_WITHOUT_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
CONVOLUTIONS_ENV = "JAXSCALE_XLA_CPU_CONVOLUTIONS"  # "ynnpack": leave XLA's default alone
CHOICES = ("xla", "ynnpack")


def convolution_library() -> str:
    """Who runs CPU convolutions in our steps: "xla" (default) or "ynnpack" (XLA's default),
    from `JAXSCALE_XLA_CPU_CONVOLUTIONS`.

    Raises:
      ValueError: the variable is set to something else.
    """
    choice = os.environ.get(CONVOLUTIONS_ENV, "xla").strip().lower() or "xla"
    if choice not in CHOICES:
        raise ValueError(f"{CONVOLUTIONS_ENV} must be one of {CHOICES}, got {choice!r}")
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
    probe = jax.device_put(np.zeros((1, 3, 3, 1), np.float32),
                           jax.local_devices(backend="cpu")[0])
    try:
        jax.jit(_probe_convolution, compiler_options=options).lower(probe).compile()
    except Exception:  # noqa: BLE001 - an unknown option or enum value: keep XLA's defaults
        return ()
    return tuple(options.items())


def _probe_convolution(x):
    return jax.lax.conv_general_dilated(x, jnp.ones((3, 3, 1, 1), x.dtype), (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
