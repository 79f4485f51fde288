"""Row 2: scaling alone, per mode: images/s, achieved GB/s and the device's copy roofline.

Ours: `jaxscale.scale` jitted per mode on device-resident uint8 batches (several distinct
buffers, rotated), float32 out, as the training step receives them. Bytes moved per batch =
uint8 read + float32 written (+ the ZCA matrix read once per batch). The roofline is a large
elementwise copy measured in the same run (`copy_bandwidth`). Peer: Keras' `flow` of the same
mode; its cost is a per-image Python loop, so its batch is capped at `KERAS_MAX_BATCH` (and ZCA,
~1k images/s there, gets one batch per repeat) to keep the run short. Our repeats and
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
from benchmarks import keras_peer
from benchmarks.timing import Job, device_batches, measure, measure_interleaved

KERAS_MAX_BATCH = 1024
MODES = tuple(jaxscale.scaling.MODES)
CHECK_MODES = ("normalize", "standardize")


def copy_bandwidth(megabytes: int | None = None, *, buffers: int | None = None,
                   repeats: int = 5) -> dict:
    """Achieved read+write GB/s of an elementwise copy on the default device (the roofline).

    An xor with 1 over uint32 forces a real read and write (an identity could be forwarded).
    On CPU the buffers are 16 MiB, about a scaling batch's output: much larger ones are
    allocated fresh by mmap on every call and page faults, not memory, would set the figure;
    8 of them are rotated so the last-level cache does not hold them. Accelerators copy two
    256 MiB buffers.
    """
    cpu = jax.default_backend() == "cpu"
    megabytes = megabytes or (16 if cpu else 256)
    buffers = buffers or (8 if cpu else 2)
    words = megabytes * (1 << 20) // 4
    inputs = [jax.device_put(np.full(words, i, np.uint32)) for i in range(buffers)]
    copy = jax.jit(lambda x: x ^ jnp.uint32(1))
    timing = measure(copy, inputs, items=1, repeats=repeats, warmup=buffers,
                     calls_per_repeat=buffers)
    moved = 2 * words * 4 * buffers
    return {"bench": "scaling", "name": "copy_roofline", "megabytes": megabytes,
            "buffers": buffers, "gb_per_s": moved / timing.median_s / 1e9,
            "gb_per_s_max": moved / min(timing.seconds) / 1e9,
            "seconds_median": timing.median_s, "seconds_repeats": list(timing.seconds),
            "spread": timing.spread}


def bytes_per_batch(mode: str, batch_shape: tuple[int, ...], out_dtype=np.float32) -> int:
    """Bytes a scaling call must read and write: uint8 in, float out, ZCA matrix once."""
    elements = math.prod(batch_shape)
    moved = elements * (1 + np.dtype(out_dtype).itemsize)
    if mode == "zca":
        features = math.prod(batch_shape[1:])
        moved += features * features * 4
    return moved


def run(images: np.ndarray, *, modes=MODES, batch_size: int = 4096, buffers: int = 8,
        repeats: int = 5, keras_batches: int = 4, keras: bool = True,
        roofline: dict | None = None, check_modes=CHECK_MODES) -> list[dict]:
    """Times every mode on batches of `images` (uint8[N, H, W, C]).

    Args:
      images: the data; featurewise modes are fitted on all of it (not timed).
      batch_size: images per scaling call (Keras': at most KERAS_MAX_BATCH).
      buffers: distinct device-resident batches rotated through (fewer if N is small).
      repeats: timed repeats; each scales every buffer once, then runs Keras' repeat.
      keras_batches: Keras `flow` batches per repeat (ZCA: 1); keras=False skips Keras.
      roofline: a `copy_bandwidth()` row to compare with (measured when None).
      check_modes: modes whose checked `scale_jit` is timed against the unchecked one.

    Returns:
      The roofline row, then one row per mode with images_per_s, gb_per_s, roofline_fraction,
      keras_images_per_s, ratio (ours / Keras), then one `<mode>/checked` row per check mode
      with images_per_s (checked), unchecked_images_per_s and overhead_pct.
    """
    batch_size = min(batch_size, len(images))
    batches = device_batches(images, batch_size, buffers)
    count = len(batches)
    roofline = roofline or copy_bandwidth()
    rows = [roofline]
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
        gb_per_s = moved / timing.median_s / 1e9
        row = {"bench": "scaling", "name": mode, "batch_size": batch_size, "buffers": count,
               **timing.summary(), "gb_per_s": gb_per_s,
               "roofline_fraction": gb_per_s / roofline["gb_per_s"],
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
