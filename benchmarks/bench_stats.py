"""Row 1: dataset statistics in one device pass vs NumPy (what Keras' `fit` does).

Ours: `jaxscale.compute_stats(images)` (channel scope: Keras' featurewise mean and std) on
device-resident uint8 images, and `jaxscale.fit_scaling` for every mode that needs a fit (ZCA
includes its host float64 eigendecomposition). Peer: `numpy_fit_stats` (float32 copy, np.mean,
np.std over N, H, W) and, when keras is installed, Keras' own `ImageDataGenerator.fit` of the
same mode.
"""

from __future__ import annotations

import jax
import numpy as np

import jaxscale
from benchmarks import keras_peer
from benchmarks.timing import Job, measure_interleaved

FIT_MODES = tuple(name for name, config in jaxscale.scaling.MODES.items()
                  if config.needs_fit)


def run(images: np.ndarray, *, repeats: int = 5, modes=FIT_MODES,
        keras: bool = True) -> list[dict]:
    """Times statistics on `images` (uint8[N, H, W, C]); returns one row per measurement.

    Ours and the peer of each row run interleaved (`measure_interleaved`), so both see the
    same machine load. keras=False skips Keras' own fit (the NumPy peer always runs).

    Row keys: bench ("stats"), name, images_per_s (+ _min/_max), seconds_median, spread,
    seconds_repeats, peer, peer_images_per_s, ratio (ours / peer).
    """
    n = len(images)
    device_images = jax.device_put(images)
    timings = measure_interleaved({
        "ours": Job(lambda x: jaxscale.compute_stats(x).m2_hi, [device_images], n),
        "peer": Job(keras_peer.numpy_fit_stats, [images], n),
    }, repeats=repeats)
    rows = [_row("compute_stats", timings["ours"], "numpy mean+std", timings["peer"])]
    for mode in modes:
        config = jaxscale.scaling_config(mode)
        jobs = {"ours": Job(lambda x, config=config: jaxscale.fit_scaling(config, x),
                            [device_images], n)}
        peer = keras_peer.keras_fit_fn(mode) if keras else None
        if peer is not None:
            # Keras 3 takes the SVD of the whole [N, D] data for ZCA (about a minute for
            # MNIST on 2 cores): one run, no warm-up, is all the budget allows.
            jobs["peer"] = (Job(peer, [images], n, warmup=0, repeats=1) if mode == "zca"
                            else Job(peer, [images], n))
        timings = measure_interleaved(jobs, repeats=max(1, repeats // 2) if mode == "zca"
                                      else repeats)
        rows.append(_row(f"fit_scaling[{mode}]", timings["ours"],
                         "keras fit" if peer is not None else None, timings.get("peer")))
    return rows


def _row(name, ours, peer_name, peer) -> dict:
    row = {"bench": "stats", "name": name, **ours.summary(), "peer": peer_name,
           "peer_images_per_s": None, "ratio": None}
    if peer is not None:
        row["peer_images_per_s"] = peer.items_per_s
        row["peer_seconds_median"] = peer.median_s
        row["ratio"] = ours.items_per_s / peer.items_per_s
    return row
