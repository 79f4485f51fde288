"""Images per second of the Keras-facing flows at Keras' batch size, against Keras, same run.

Rows (issue 15's bars in `bar`, ratio = ours / Keras):

- flow/<mode>: `jaxscale.ImageDataGenerator(<mode's Keras keywords>).fit(x).flow(x,
  batch_size=64, shuffle=False)`, `next()` called in a loop, against Keras 3's legacy
  `ImageDataGenerator(...).flow(...)` of the same keywords on the same images
  (`keras_peer.keras_flow_iterator`). Bar: 20x Keras for every mode but zca, 5x for zca.
- flow_from_directory: a folder of PNG digits (the benchmark's images written once into a
  temporary folder, one subfolder per label), read grayscale at 28x28, rescale 1/255,
  class_mode "sparse", batch 64, unshuffled, ours against Keras' `flow_from_directory` of the
  same folder. Bar: 3x Keras.

Method: ours warms up over one whole epoch (every compiled variant, the epoch's last call
included, is built before timing); Keras over one batch. Ours and Keras' repeats alternate
(`measure_interleaved`), each repeat blocks on its last batch. Medians and spreads.

Run: `python -m benchmarks.bench_flow [--quick]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import warnings

import numpy as np

import jaxscale
from benchmarks import keras_peer
from benchmarks.timing import Job, measure_interleaved

MODES = tuple(jaxscale.scaling.MODES)
BATCH_SIZE = 64
BARS = {"zca": 5.0, "flow_from_directory": 3.0}
DEFAULT_BAR = 20.0


def _ratio_row(name: str, timings: dict, bar: float, **extra) -> dict:
    ours = timings["ours"]
    row = {"bench": "flow", "name": name, "batch_size": BATCH_SIZE, **ours.summary(),
           "keras_images_per_s": None, "ratio": None, "bar": bar, **extra}
    if "keras" in timings:
        peer = timings["keras"]
        row.update(keras_images_per_s=peer.items_per_s, keras_spread=peer.spread,
                   ratio=ours.items_per_s / peer.items_per_s)
        row["meets_bar"] = bool(row["ratio"] >= bar)
    return row


def _flow_jobs(flow, batches: int) -> Job:
    # warm-up: one whole epoch, so that the epoch's last (shorter) call is compiled too
    return Job(lambda _: next(flow), [None], BATCH_SIZE, calls_per_repeat=batches,
               warmup=len(flow))


def flow_rows(images: np.ndarray, *, modes=MODES, repeats: int = 5, batches: int = 320,
              keras_batches: int = 8, keras: bool = True) -> list[dict]:
    """One row per scaling mode: our public flow against Keras' flow."""
    rows = []
    for mode in modes:
        keywords = keras_peer.keras_mode_keywords(mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            generator = jaxscale.ImageDataGenerator(**keywords)
            if generator.config.needs_fit:
                generator.fit(images)
        flow = generator.flow(images, batch_size=BATCH_SIZE, shuffle=False, seed=0)
        jobs = {"ours": _flow_jobs(flow, batches)}
        peer = (keras_peer.keras_flow_iterator(images, mode, batch_size=BATCH_SIZE)
                if keras else None)
        if peer is not None:
            jobs["keras"] = Job(lambda _: next(peer), [None], BATCH_SIZE,
                                calls_per_repeat=1 if mode == "zca" else keras_batches)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            timings = measure_interleaved(jobs, repeats=repeats)
        rows.append(_ratio_row(f"flow/{mode}", timings, BARS.get(mode, DEFAULT_BAR),
                               batches_per_call=flow._batches_per_call))
    return rows


def write_png_folder(images: np.ndarray, labels: np.ndarray, folder: str) -> str:
    """images uint8[N, H, W, 1] as folder/<label>/<i>.png; returns the folder."""
    from PIL import Image
    for label in np.unique(labels):
        os.makedirs(os.path.join(folder, str(int(label))), exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image[..., 0], "L").save(os.path.join(folder, str(int(label)),
                                                              f"{i:06d}.png"))
    return folder


def directory_row(images: np.ndarray, labels: np.ndarray, *, files: int = 10000,
                  repeats: int = 5, batches: int = 40, keras_batches: int = 8,
                  keras: bool = True) -> dict:
    """flow_from_directory on a folder of `files` PNG digits, ours against Keras'."""
    folder = tempfile.mkdtemp(prefix="jaxscale-bench-png-")
    try:
        write_png_folder(images[:files], labels[:files], folder)
        options = dict(target_size=images.shape[1:3], color_mode="grayscale",
                       class_mode="sparse", batch_size=BATCH_SIZE, shuffle=False)
        ours = jaxscale.ImageDataGenerator(rescale=1 / 255).flow_from_directory(folder,
                                                                                **options)
        jobs = {"ours": _flow_jobs(ours, batches)}
        peer_generator = keras_peer.keras_generator("normalize") if keras else None
        if peer_generator is not None:
            peer = peer_generator.flow_from_directory(folder, **options)
            jobs["keras"] = Job(lambda _: next(peer), [None], BATCH_SIZE,
                                calls_per_repeat=keras_batches)
        timings = measure_interleaved(jobs, repeats=repeats)
        ours.close()
        return _ratio_row("flow_from_directory", timings, BARS["flow_from_directory"],
                          files=int(min(files, len(images))), workers=ours.reader.workers,
                          batches_per_call=ours._batches_per_call)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(images: np.ndarray, labels: np.ndarray, *, keras: bool = True, modes=MODES,
        repeats: int = 5, batches: int = 320, keras_batches: int = 8, files: int = 10000,
        file_batches: int = 40, keras_file_batches: int = 8) -> list[dict]:
    """The flow rows, then the flow_from_directory row."""
    rows = flow_rows(images, modes=modes, repeats=repeats, batches=batches,
                     keras_batches=keras_batches, keras=keras)
    rows.append(directory_row(images, labels, files=files, repeats=repeats,
                              batches=file_batches, keras_batches=keras_file_batches,
                              keras=keras))
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    from benchmarks import data, report
    bench = data.load_bench_data(args.data_dir)
    sizes = ({"repeats": 3, "batches": 64, "keras_batches": 2, "files": 2000,
              "file_batches": 16, "keras_file_batches": 2} if args.quick else {})
    rows = run(bench.images, bench.labels, keras=keras_peer.keras_version() is not None,
               **sizes)
    print(report.format_table(rows))
    return rows


if __name__ == "__main__":
    main()
