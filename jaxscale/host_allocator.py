"""Keeps freed host memory in the process, so XLA's per-step CPU buffers do not page-fault.

Each execution of a compiled XLA:CPU program allocates its temporary buffer (tens of MB for a
train step at batch 64) with `malloc` and frees it at the end. glibc serves requests above its
mmap threshold (at most 32 MiB when adjusted dynamically) with a fresh `mmap` and returns them
to the OS on free, and trims the top of its heap when more than 128 KiB is free there. So every
step faults in every page of its scratch memory again; on virtual machines that return freed
pages to the host (page reporting, ballooning) those faults are expensive. Measured on this
project's 2-core CPU VM: the BN CNN's train step at batch 64 went from ~500 to ~780 images/s,
and Keras 3's (JAX backend) from ~500 to ~830-950, with nothing else changed.

`tune_host_allocator` raises both thresholds with `mallopt`, so large buffers come from the
heap and stay there for the next step. It also caps glibc at one arena (`M_ARENA_MAX`, as
`MALLOC_ARENA_MAX=1` does): XLA's worker threads otherwise allocate from per-thread arenas,
whose memory kept being handed back and faulted in again despite the thresholds. With XLA's own
(Eigen) convolutions, which allocate their packing buffers on the worker threads, the BN CNN
train step took ~6,000-10,000 minor page faults per step and 12-21 ms of kernel time; with one
arena, ~50 faults and under 1 ms. The cost: memory freed by the process is kept (up to
`trim_threshold`) rather than given back to the OS, and threads share one malloc lock (XLA's
buffers are few and large, so it is not contended). It is a no-op off glibc (macOS, musl,
Windows) and when the environment sets `JAXSCALE_TUNE_ALLOCATOR=0`.

The `jaxscale` command and the benchmarks call it at start-up; library users opt in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

DEFAULT_MMAP_THRESHOLD = 256 << 20  # bytes: requests above this are still mmapped
DEFAULT_TRIM_THRESHOLD = 1 << 30    # bytes of free heap top kept before trimming
DEFAULT_ARENA_MAX = 1               # malloc arenas (glibc's default: 8 per core)
ENV_SWITCH = "JAXSCALE_TUNE_ALLOCATOR"


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
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"unchanged: {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
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
