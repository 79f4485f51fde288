"""Rooflines: the most bytes per second and FLOP per second this device can do, measured so
that nothing a benchmark runs can exceed them.

Memory: the best of many repeats of a STREAM-style in-place update, `x ^= 1` over one uint32
buffer, the buffer donated to the jitted call so its output is its input: every byte is read
once and written once, and no allocation or first-touch page fault is timed (the old
`copy_roofline` wrote a fresh 16 MiB buffer per call; on this project's 2-core VM it measured
page faults: 2.68 GB/s with a 124 % spread, below what the scaling rows then achieved).
Bandwidth depends on where the data lives, so the measurement takes the working-set size of
the row it bounds: a row whose buffers fit the last-level cache is bounded by the cache's
bandwidth, a larger one by DRAM's. The best repeat, not the median, is the bound: load on a
shared host only lowers a repeat.

Compute: the best of many repeats of a large float32 matmul (2 * n^3 FLOP), the peak for
compute-bound rows such as ZCA whitening.

A row is then reported as a fraction of its roofline: the time its bytes need at the
bandwidth, or its FLOPs at the peak, whichever is longer, over the time it took
(`roofline_fraction`).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

MIN_BUFFER_BYTES = 1 << 20


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache's size in bytes from Linux sysfs, or None when unknown."""
    from pathlib import Path

    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        try:
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
            sizes.append(int(text.rstrip("KMG")) * scale)
        except (ValueError, IndexError):
            continue
    return max(sizes) if sizes else None


def _best_of(fn, state, repeats: int) -> tuple[list[float], object]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        state = jax.block_until_ready(fn(state))
        seconds.append(time.perf_counter() - start)
    return seconds, state


def memory_bandwidth(footprint_bytes: int, *, repeats: int = 30, warmup: int = 3) -> dict:
    """Read+write GB/s of an in-place update of `footprint_bytes` on the default device.

    Args:
      footprint_bytes: the working set to stream over (the bound depends on it: cache or
        DRAM); at least 1 MiB is used.
      repeats: timed calls; the best one is the roofline.
      warmup: untimed calls first (compile, first touch).

    Returns:
      A row: name "copy_roofline", megabytes, gb_per_s (best repeat: the bound),
      gb_per_s_median, spread ((max - min) / median of the repeats' seconds), seconds_repeats.
    """
    words = max(footprint_bytes, MIN_BUFFER_BYTES) // 4
    update = jax.jit(lambda x: x ^ jnp.uint32(1), donate_argnums=0)
    buffer = jax.device_put(np.zeros(words, np.uint32))
    _, buffer = _best_of(update, buffer, warmup)
    seconds, buffer = _best_of(update, buffer, repeats)
    moved = 2 * words * 4
    median = float(np.median(seconds))
    return {"bench": "scaling", "name": "copy_roofline", "megabytes": words * 4 / (1 << 20),
            "method": "best of repeats of an in-place x ^= 1 (donated buffer)",
            "gb_per_s": moved / min(seconds) / 1e9, "gb_per_s_median": moved / median / 1e9,
            "seconds_median": median, "seconds_repeats": seconds,
            "spread": (max(seconds) - min(seconds)) / median}


def compute_peak(n: int = 2048, *, repeats: int = 10, warmup: int = 2) -> dict:
    """float32 FLOP/s of an n x n x n matmul on the default device (best repeat).

    Returns:
      A row: name "compute_roofline", n, gflop_per_s (best: the bound), gflop_per_s_median,
      spread, seconds_repeats.
    """
    rng = np.random.default_rng(0)
    a = jax.device_put(rng.standard_normal((n, n), np.float32))
    b = jax.device_put(rng.standard_normal((n, n), np.float32))
    matmul = jax.jit(lambda a: a @ b)
    for _ in range(warmup):
        jax.block_until_ready(matmul(a))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        seconds.append(time.perf_counter() - start)
    flops = 2 * n ** 3
    median = float(np.median(seconds))
    return {"bench": "scaling", "name": "compute_roofline", "n": n,
            "method": "best of repeats of an n x n float32 matmul",
            "gflop_per_s": flops / min(seconds) / 1e9, "gflop_per_s_median": flops / median / 1e9,
            "seconds_median": median, "seconds_repeats": seconds,
            "spread": (max(seconds) - min(seconds)) / median}


def bound_seconds(bytes_moved: float, flops: float, memory: dict, compute: dict | None
                  ) -> tuple[float, str]:
    """(least seconds the work can take, "memory" or "compute": which roofline binds)."""
    memory_s = bytes_moved / (memory["gb_per_s"] * 1e9)
    compute_s = flops / (compute["gflop_per_s"] * 1e9) if compute else 0.0
    return (compute_s, "compute") if compute_s > memory_s else (memory_s, "memory")
