"""Timing with the method every benchmark here shares.

Warm-up calls first (compilation excluded), `jax.block_until_ready` on each result before the
clock is read, several repeats summarised by their median and spread, and a rotation over
several input buffers so that a cache holding the last input does not flatter the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from typing import Any, Callable, Sequence

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of each timed repeat of one piece of work (warm-up excluded).

    Attributes:
      seconds: per-repeat wall-clock seconds, in the order they ran.
      items: how many items (images) one repeat processes.
    """

    seconds: tuple[float, ...]
    items: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeats: 0.1 means the repeats span 10 percent."""
        return (max(self.seconds) - min(self.seconds)) / self.median_s

    @property
    def items_per_s(self) -> float:
        """Items per second at the median repeat."""
        return self.items / self.median_s

    @property
    def items_per_s_range(self) -> tuple[float, float]:
        """(slowest, fastest) items per second over the repeats."""
        return self.items / max(self.seconds), self.items / min(self.seconds)

    def summary(self, prefix: str = "") -> dict[str, Any]:
        """Flat JSON-ready figures: median, spread and every repeat."""
        low, high = self.items_per_s_range
        return {f"{prefix}seconds_median": self.median_s,
                f"{prefix}seconds_repeats": list(self.seconds),
                f"{prefix}spread": self.spread,
                f"{prefix}images_per_s": self.items_per_s,
                f"{prefix}images_per_s_min": low,
                f"{prefix}images_per_s_max": high}


def measure(fn: Callable[[Any], Any], inputs: Sequence[Any], *, items: int,
            repeats: int = 5, warmup: int = 2, calls_per_repeat: int = 1) -> Timing:
    """Times `fn` over a rotation of `inputs`.

    Args:
      fn: the work; its result is passed to `jax.block_until_ready` (host values pass through).
      inputs: distinct input buffers; call k uses inputs[k % len(inputs)].
      items: items processed by ONE call (images in the batch).
      repeats: timed repeats; each runs `calls_per_repeat` calls and blocks once at its end
        (so dispatch overlaps compute, as in a real loop).
      warmup: untimed calls first (compilation, first-touch of memory).
      calls_per_repeat: calls per timed repeat.

    Returns:
      Timing whose `items` is items * calls_per_repeat.
    """
    if not inputs:
        raise ValueError("measure needs at least one input buffer")
    if repeats < 1 or calls_per_repeat < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1, calls_per_repeat >= 1, warmup >= 0; got "
                         f"{repeats}, {calls_per_repeat}, {warmup}")
    call = 0
    for _ in range(warmup):
        jax.block_until_ready(fn(inputs[call % len(inputs)]))
        call += 1
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        results = []
        for _ in range(calls_per_repeat):
            results.append(fn(inputs[call % len(inputs)]))
            call += 1
        jax.block_until_ready(results)
        seconds.append(time.perf_counter() - start)
        del results
    return Timing(tuple(seconds), items * calls_per_repeat)


@dataclasses.dataclass(frozen=True)
class Job:
    """One piece of work for `measure_interleaved` (fields as in `measure`).

    `repeats`: how many of the rounds this job takes part in (None: all); a slow peer can sit
    out the later rounds.
    """

    fn: Callable[[Any], Any]
    inputs: Sequence[Any]
    items: int
    calls_per_repeat: int = 1
    warmup: int = 1
    repeats: int | None = None


def measure_interleaved(jobs: dict[str, Job], *, repeats: int) -> dict[str, Timing]:
    """Times several jobs round-robin: round r runs one repeat of every job in turn.

    On a shared host the load changes from second to second; interleaving exposes every job
    (ours and the peer of a ratio) to the same load, where timing them one after the other
    would not. Warm-ups of every job run first.

    Returns:
      {name: Timing} in the order of `jobs`.
    """
    if repeats < 1:
        raise ValueError(f"need repeats >= 1, got {repeats}")
    for job in jobs.values():
        for call in range(job.warmup):
            jax.block_until_ready(job.fn(job.inputs[call % len(job.inputs)]))
    seconds = {name: [] for name in jobs}
    for round_ in range(repeats):
        for name, job in jobs.items():
            if job.repeats is not None and round_ >= job.repeats:
                continue
            seconds[name] += measure(job.fn, job.inputs, items=job.items, repeats=1, warmup=0,
                                     calls_per_repeat=job.calls_per_repeat).seconds
    return {name: Timing(tuple(seconds[name]), job.items * job.calls_per_repeat)
            for name, job in jobs.items()}


def device_batches(images, batch_size: int, buffers: int) -> list:
    """Up to `buffers` distinct consecutive batches of `images`, put on the default device,
    for `measure` to rotate through (fewer when the data holds fewer whole batches)."""
    count = max(1, min(buffers, len(images) // batch_size))
    return [jax.device_put(images[i * batch_size:(i + 1) * batch_size]) for i in range(count)]


# ---------------------------------------------------------------------------- compile counter

# JAX lowers every program it builds to an XLA module before it compiles it or loads it from
# the persistent compilation cache: counting lowerings counts the programs built, which a warm
# cache (the tests keep one) does not hide the way it hides backend compilations.
_COMPILE_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_compile_counters: list[list[int]] = []
_listener_registered = False


def _on_event(event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == _COMPILE_EVENT:
        for counter in _compile_counters:
            counter[0] += 1


@contextlib.contextmanager
def count_compiles():
    """Counts the programs JAX builds inside the block (each traced, lowered, then compiled or
    loaded from the persistent compilation cache): `with count_compiles() as n: ...; n[0]`.
    A program already built in this process (JAX's in-memory caches) does not count."""
    global _listener_registered
    if not _listener_registered:
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _listener_registered = True
    counter = [0]
    _compile_counters.append(counter)
    try:
        yield counter
    finally:
        _compile_counters.remove(counter)
