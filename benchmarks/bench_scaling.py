"""Row 2: scaling alone, per mode: images/s, achieved GB/s (and GFLOP/s) against the roofline
that bounds the mode.

Ours: `jaxscale.scale` jitted per mode on device-resident uint8 batches (several distinct
buffers, rotated), float32 out, as the training step receives them. Bytes moved per batch =
uint8 read + float32 written (+ the ZCA matrix read once per batch); FLOPs per batch from the
arithmetic of the mode (`flops_per_batch`). The rooflines are measured in the same run
(`benchmarks.roofline`): memory bandwidth over the same working set as the rows (the rotated
inputs and their outputs), and a large matmul's FLOP/s. `roofline_fraction` = the least time
the mode's bytes or FLOPs need at those peaks (whichever binds: `bound`) / the time it took.
Peer: Keras' `flow` of the same mode; its cost is a per-image Python loop, so its batch is
capped at `KERAS_MAX_BATCH` (and ZCA, ~1k images/s there, gets one batch per repeat) to keep
the run short. Our repeats and
Keras' alternate, so that both sides see the same load on a shared host.

The mode rows time `scale_jit(..., check=False)`, the scaling alone. `<mode>/checked` rows
time the default, `scale_jit`'s NaN/inf check (flags computed in the same compiled call and
read back after it), interleaved with the unchecked call on the same batches: `overhead_pct`
is the check's cost.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import jaxscale
from benchmarks import keras_peer, roofline as rooflines
from benchmarks.timing import Job, device_batches, measure, measure_interleaved

KERAS_MAX_BATCH = 1024
MODES = tuple(jaxscale.scaling.MODES)
CHECK_MODES = ("normalize", "standardize")


def bytes_per_batch(mode: str, batch_shape: tuple[int, ...], out_dtype=np.float32) -> int:
    """Bytes a scaling call must read and write: uint8 in, float out, ZCA matrix once."""
    elements = math.prod(batch_shape)
    moved = elements * (1 + np.dtype(out_dtype).itemsize)
    if mode == "zca":
        features = math.prod(batch_shape[1:])
        moved += features * features * 4
    return moved


# FLOPs per element of each mode on top of the (free) uint8 -> float32 conversion; ZCA adds
# its matmul (2 * features per element) in `flops_per_batch`.
FLOPS_PER_ELEMENT = {"none": 0, "normalize": 1, "center": 1, "standardize": 2,
                     "sample_center": 2, "sample_standardize": 6, "zca": 1}


def flops_per_batch(mode: str, batch_shape: tuple[int, ...]) -> int:
    """Arithmetic of one scaling call: elementwise work (+ the ZCA matmul)."""
    elements = math.prod(batch_shape)
    flops = FLOPS_PER_ELEMENT.get(mode, 0) * elements
    if mode == "zca":
        flops += 2 * elements * math.prod(batch_shape[1:])
    return flops


def working_set_bytes(batch_shape: tuple[int, ...], buffers: int, out_dtype=np.float32) -> int:
    """Bytes a scaling repeat touches: every rotated uint8 input and its float output."""
    return buffers * math.prod(batch_shape) * (1 + np.dtype(out_dtype).itemsize)


def run(images: np.ndarray, *, modes=MODES, batch_size: int = 4096, buffers: int = 8,
        repeats: int = 5, keras_batches: int = 4, keras: bool = True,
        roofline: dict | None = None, compute_roofline: dict | None = None,
        roofline_repeats: int = 30, check_modes=CHECK_MODES) -> list[dict]:
    """Times every mode on batches of `images` (uint8[N, H, W, C]).

    Args:
      images: the data; featurewise modes are fitted on all of it (not timed).
      batch_size: images per scaling call (Keras': at most KERAS_MAX_BATCH).
      buffers: distinct device-resident batches rotated through (fewer if N is small).
      repeats: timed repeats; each scales every buffer once, then runs Keras' repeat.
      keras_batches: Keras `flow` batches per repeat (ZCA: 1); keras=False skips Keras.
      roofline: a `roofline.memory_bandwidth` row (measured over this run's working set, with
        `roofline_repeats` repeats, when None).
      compute_roofline: a `roofline.compute_peak` row (measured when None and zca is run).
      check_modes: modes whose checked `scale_jit` is timed against the unchecked one.

    Returns:
      The rooflines' rows, then one row per mode with images_per_s, gb_per_s, gflop_per_s,
      bound ("memory" or "compute"), roofline_fraction, keras_images_per_s, ratio (ours /
      Keras), then one `<mode>/checked` row per check mode with images_per_s (checked),
      unchecked_images_per_s and overhead_pct.
    """
    batch_size = min(batch_size, len(images))
    batches = device_batches(images, batch_size, buffers)
    count = len(batches)
    roofline = roofline or rooflines.memory_bandwidth(
        working_set_bytes(batches[0].shape, count), repeats=roofline_repeats)
    if compute_roofline is None and "zca" in modes:
        compute_roofline = rooflines.compute_peak()
    rows = [roofline] + ([compute_roofline] if compute_roofline else [])
    for mode in modes:
        config = jaxscale.scaling_config(mode)
        params = jaxscale.fit_scaling(config, images)

        def ours(batch, config=config, params=params):
            return jaxscale.scale_jit(batch, config, params, check=False)

        keras_batch = min(batch_size, KERAS_MAX_BATCH)
        flow = (keras_peer.keras_flow_iterator(images, mode, batch_size=keras_batch)
                if keras else None)
        keras_calls = 1 if mode == "zca" else keras_batches
        # ours and Keras' repeats interleaved: on a shared host the load changes from second
        # to second, and interleaving exposes both sides to the same load
        jobs = {"ours": Job(ours, batches, batch_size, calls_per_repeat=count,
                            warmup=count + 2)}
        if flow is not None:
            jobs["keras"] = Job(lambda _: next(flow), [None], keras_batch,
                                calls_per_repeat=keras_calls)
        timings = measure_interleaved(jobs, repeats=repeats)
        timing = timings["ours"]
        moved = bytes_per_batch(mode, batches[0].shape) * count
        flops = flops_per_batch(mode, batches[0].shape) * count
        bound_s, bound = rooflines.bound_seconds(moved, flops, roofline, compute_roofline)
        row = {"bench": "scaling", "name": mode, "batch_size": batch_size, "buffers": count,
               **timing.summary(), "gb_per_s": moved / timing.median_s / 1e9,
               "gflop_per_s": flops / timing.median_s / 1e9, "bound": bound,
               "roofline_fraction": bound_s / timing.median_s,
               "keras_images_per_s": None, "ratio": None}
        if "keras" in timings:
            peer = timings["keras"]
            row["keras_images_per_s"] = peer.items_per_s
            row["keras_batch_size"] = keras_batch
            row["keras_spread"] = peer.spread
            row["ratio"] = timing.items_per_s / peer.items_per_s
        rows.append(row)
    for mode in check_modes:
        rows.append(check_cost(images, batches, mode, repeats=repeats))
    return rows


def check_cost(images: np.ndarray, batches: list, mode: str, *, repeats: int) -> dict:
    """`scale_jit` with and without its NaN/inf check on the same device batches,
    interleaved: the checked rate and the check's overhead in percent."""
    config = jaxscale.scaling_config(mode)
    params = jaxscale.fit_scaling(config, images)
    count = len(batches)
    jobs = {name: Job(lambda batch, check=check: jaxscale.scale_jit(batch, config, params,
                                                                     check=check),
                      batches, batches[0].shape[0], calls_per_repeat=count, warmup=count + 2)
            for name, check in (("checked", True), ("unchecked", False))}
    timings = measure_interleaved(jobs, repeats=repeats)
    checked, unchecked = timings["checked"], timings["unchecked"]
    return {"bench": "scaling", "name": f"{mode}/checked", "batch_size": batches[0].shape[0],
            "buffers": count, **checked.summary(),
            "unchecked_images_per_s": unchecked.items_per_s,
            "overhead_pct": 100.0 * (unchecked.items_per_s / checked.items_per_s - 1.0)}
