"""Images per second the streaming input (`jaxscale.data.streaming`) delivers to the device.

Issue 18's bars, at batch 256; a batch counts when its arrays are on the device
(`DeviceIterator`, 2 batches ahead, then `block_until_ready`):

- mnist/records: real MNIST (synthetic of the same shape without its files) streamed in the
  global shuffled order from raw-uint8 ArrayRecord files on disk. Bar: >= 150k images/s.
- cifar/records: CIFAR-10-shaped 32x32x3 records (synthetic). Bar: >= 80k images/s.
- jpeg/*: 256x256 JPEG files decoded and resized (bilinear) to 224x224, ours beside a plain
  Pillow loop and tf.data on the same files, in the same order.
- mnist/tfds-png: tfds' own ArrayRecord files (PNG in every record, `RecordSource`) through
  the data path's thread-backed `HostSource` and through the Grain stream with 2 worker
  processes (PNG decoding holds the GIL).
- train/*: the BN CNN (standardize, no augmentation, batch 256) trained by
  `jaxscale.training.train` on MNIST resident on the device, and streamed from the raw
  records on disk through `GrainSource`, each in a fresh child process (so its peak RSS is
  its own: the streamed one never holds the dataset). Timed on the second epoch (the first
  compiles); bar: the streamed epoch within 5 % of the resident one, and the same numbers
  (parameters and metrics bit for bit: without augmentation the two programs do the same
  arithmetic on the same batches).

Beside the records: the same Grain stream over a `.npy` file mapped with `np.memmap`
(`ArrayReader`; no per-record framing, hash or syscall: what ArrayRecord's per-record cost
is) and tf.data reading the same raw records from TFRecord files the way tf.data users do
(interleaved shards, a 10k shuffle buffer instead of a global shuffle).

Every row gives the median images/s of its repeats with the spread, the startup (worker
processes, first batches), images per CPU-second (this process and its workers together:
the per-core cost whatever the parallelism), and host memory: the peak resident set of the
process tree while streaming and its growth over the moment before the stream started (the
record files are never held in memory, so the growth stays at a few batches plus, for worker
processes, their own interpreters).

Run: `nice -n 10 python -m benchmarks.bench_streaming [--quick] [--json PATH]`; `make bench`
runs it as its `streaming` section. On a host shared with other jobs the spread says how far
to trust a row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from benchmarks.timing import Timing
from jaxscale.data import streaming
from jaxscale.data.image_files import ImageFileReader
from jaxscale.data.pipeline import ArrayReader, epoch_order

BATCH_SIZE = 256
SEED = 0
BARS = {"mnist/records": 150_000, "cifar/records": 80_000}
TRAIN_SLOWDOWN_BAR = 1.05  # streamed epoch seconds / resident epoch seconds
JPEG_SIZE, JPEG_TARGET = 256, (224, 224, 3)


def _tree():
    import psutil

    me = psutil.Process()
    return [me] + me.children(recursive=True)


def _tree_rss() -> int:
    total = 0
    for process in _tree():
        try:
            total += process.memory_info().rss
        except Exception:  # a worker that just exited
            pass
    return total


def _tree_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of this process and each live child, by pid."""
    seconds = {}
    for process in _tree():
        try:
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
        except Exception:  # a worker that just exited
            pass
    return seconds


def _cpu_since(start: dict[int, float]) -> float:
    # per process: workers of an earlier row may exit meanwhile, new ones start from 0
    return sum(max(0.0, t - start.get(pid, 0.0)) for pid, t in _tree_cpu().items())


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def time_batches(make_batches: Callable[[], object], *, name: str, data: str,
                 num_examples: int, steps: int, repeats: int, warmup: int,
                 options: str = "", close: Callable[[object], None] | None = None) -> dict:
    """Times `steps` batches per repeat from one iterator of (images, labels) host or device
    batches, each put on the device and consumed there; the first `warmup` batches (worker
    start-up, compilation) are timed apart as the startup."""
    rss_before = _tree_rss()
    start = time.perf_counter()
    batches = make_batches()
    iterator = iter(batches)

    def step():  # a batch counts once its arrays are on the device (block_until_ready)
        images, labels = next(iterator)[:2]
        return jax.device_put(images), jax.device_put(labels)

    jax.block_until_ready([step() for _ in range(warmup)])
    startup = time.perf_counter() - start
    seconds, cpu, peak = [], [], _tree_rss()
    for _ in range(repeats):
        cpu_start, clock = _tree_cpu(), time.perf_counter()
        jax.block_until_ready([step() for _ in range(steps)])
        seconds.append(time.perf_counter() - clock)
        cpu.append(_cpu_since(cpu_start))
        peak = max(peak, _tree_rss())
    if close is not None:
        close(batches)
    timing = Timing(tuple(seconds), steps * BATCH_SIZE)
    cpu_per_repeat = float(np.median(cpu))
    return dict(bench="streaming", name=name, data=data, options=options,
                num_examples=num_examples, batch_size=BATCH_SIZE, steps=steps,
                **timing.summary(), startup_s=startup,
                images_per_cpu_s=timing.items / max(cpu_per_repeat, 1e-9),
                cores=_cores(), peak_rss_mb=peak / 2**20,
                rss_growth_mb=(peak - rss_before) / 2**20, bar=BARS.get(name.split(" ")[0]),
                device=f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}")


def _stream(reader, options: streaming.StreamOptions, epochs: int):
    def make():
        return streaming.DeviceIterator(streaming.stream(
            reader, BATCH_SIZE, seed=SEED, num_epochs=epochs, options=options), size=2)
    return make


def _describe(options: streaming.StreamOptions) -> str:
    return f"workers={options.worker_count} threads={options.read_threads}"


def stream_rows(reader, name: str, data: str, option_sets, *, steps: int, repeats: int,
                warmup: int) -> list[dict]:
    """One row per StreamOptions: the Grain stream of `reader` onto the device."""
    rows = []
    per_epoch = len(reader) // BATCH_SIZE
    epochs = -(-(warmup + steps * repeats) // per_epoch)
    epoch_order(SEED, 0, len(reader))  # compiled once, outside startup and RSS
    for options in option_sets:
        rows.append(time_batches(_stream(reader, options, epochs),
                                 name=f"{name} ({_describe(options)})", data=data,
                                 num_examples=len(reader), steps=steps, repeats=repeats,
                                 warmup=warmup, options=_describe(options),
                                 close=lambda it: it.close()))
    return rows


RECORD_OPTIONS = (streaming.StreamOptions(worker_count=0, read_threads=2),
                  streaming.StreamOptions(worker_count=0, read_threads=1),
                  streaming.StreamOptions(worker_count=2, read_threads=1))


def _tf_records(images: np.ndarray, labels: np.ndarray, stem: Path, shards: int = 4):
    """tf.data's usual way with the same raw records in TFRecord files: shards interleaved,
    a 10k-example shuffle buffer (not a global shuffle), batch, decode_raw, prefetch."""
    import tensorflow as tf

    image_bytes = int(np.prod(images.shape[1:]))
    files = [f"{stem}-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
    for i, path in enumerate(files):
        start, stop = i * len(images) // shards, (i + 1) * len(images) // shards
        with tf.io.TFRecordWriter(path) as writer:
            for image, label in zip(images[start:stop], labels[start:stop]):
                writer.write(image.tobytes() + np.int32(label).tobytes())

    def decode(records):
        raw = tf.io.decode_raw(records, tf.uint8)
        batch_images = tf.reshape(raw[:, :image_bytes], (-1, *images.shape[1:]))
        batch_labels = tf.bitcast(tf.reshape(raw[:, image_bytes:], (-1, 4)), tf.int32)
        return batch_images, batch_labels

    dataset = (tf.data.Dataset.from_tensor_slices(files)
               .interleave(tf.data.TFRecordDataset, cycle_length=shards,
                           num_parallel_calls=tf.data.AUTOTUNE)
               .shuffle(10_000, seed=SEED).repeat()
               .batch(BATCH_SIZE, drop_remainder=True)
               .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
               .prefetch(tf.data.AUTOTUNE))
    return lambda: streaming.DeviceIterator(dataset.as_numpy_iterator(), size=2)


def record_rows(images: np.ndarray, labels: np.ndarray, name: str, data: str, folder: Path,
                *, repeats: int, option_sets=RECORD_OPTIONS, memmap: bool = True,
                peers: bool = False) -> list[dict]:
    """Writes `images` as raw records (once) and streams them with each option set; with
    `memmap`, also from a `.npy` file through `ArrayReader(np.load(..., mmap_mode="r"))`
    (the same Grain stream over a flat file: where ArrayRecord's per-record cost shows)."""
    stem = folder / name.replace("/", "-")
    paths = streaming.write_records(stem, (images, labels), num_shards=4, batch_size=8192)
    reader = streaming.RecordReader(paths)
    steps = len(reader) // BATCH_SIZE  # one epoch per repeat
    rows = stream_rows(reader, name, data, option_sets, steps=steps, repeats=repeats,
                       warmup=20)
    if memmap:
        np.save(f"{stem}-images.npy", images)
        mapped = ArrayReader(np.load(f"{stem}-images.npy", mmap_mode="r"),
                                       np.asarray(labels, np.int32))
        rows += stream_rows(mapped, f"{name.split('/')[0]}/memmap", data + ", .npy memmap",
                            option_sets[:1], steps=steps, repeats=repeats, warmup=20)
    if peers:
        try:
            make = _tf_records(images, labels, stem)
        except ImportError as error:
            rows.append(dict(bench="streaming", name=f"{name.split('/')[0]}/tf.data",
                             status="n/a", why=f"{type(error).__name__}: {error}"))
        else:
            rows.append(time_batches(
                make, name=f"{name.split('/')[0]}/tf.data-tfrecord", options="AUTOTUNE",
                data=data + ", same raw records as TFRecord, 10k shuffle buffer",
                num_examples=len(images), steps=steps, repeats=repeats, warmup=20))
    return rows


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` 256x256 RGB JPEG files of smooth random images (quality 90, ~20-30 KB each)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((JPEG_SIZE, JPEG_SIZE), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, np.int16) + rng.integers(-12, 13, (JPEG_SIZE, JPEG_SIZE, 3))
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _pillow_loop(paths: list[Path], labels: np.ndarray, order: np.ndarray):
    """The plain loop a user writes: open, convert, resize, stack, batch after batch."""
    from PIL import Image

    def batches():
        for start in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE):
            rows = order[start:start + BATCH_SIZE]
            images = np.stack([np.asarray(Image.open(paths[r]).convert("RGB").resize(
                JPEG_TARGET[1::-1], Image.Resampling.BILINEAR)) for r in rows])
            yield images, labels[rows]

    def forever():
        while True:
            yield from batches()
    return lambda: streaming.DeviceIterator(forever(), size=2)


def _tf_data(paths: list[Path], labels: np.ndarray, order: np.ndarray):
    """tf.data on the same files in the same order: parallel read + decode_jpeg + resize
    (bilinear, antialiased as Pillow's), batch, prefetch (AUTOTUNE everywhere)."""
    import tensorflow as tf

    files = tf.constant([str(paths[r]) for r in order])
    ordered_labels = tf.constant(labels[order])

    def load(path, label):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        image = tf.image.resize(image, JPEG_TARGET[:2], method="bilinear", antialias=True)
        return tf.cast(tf.round(image), tf.uint8), label

    dataset = (tf.data.Dataset.from_tensor_slices((files, ordered_labels))
               .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(BATCH_SIZE, drop_remainder=True).repeat()
               .prefetch(tf.data.AUTOTUNE))
    return lambda: streaming.DeviceIterator(dataset.as_numpy_iterator(), size=2)


def jpeg_rows(folder: Path, *, count: int, repeats: int, peers: bool = True) -> list[dict]:
    """Our ImageFileReader stream beside a Pillow loop and tf.data on the same JPEG files."""
    paths = write_jpegs(folder / "jpeg", count)
    labels = (np.arange(count) % 10).astype(np.int32)
    reader = ImageFileReader(paths, labels, target_size=JPEG_TARGET[:2],
                             interpolation="bilinear", num_classes=10)
    data = f"{count} synthetic {JPEG_SIZE}x{JPEG_SIZE} JPEG files -> {JPEG_TARGET}"
    steps = max(1, count // BATCH_SIZE // 2)
    rows = stream_rows(reader, "jpeg/grain", data,
                       (streaming.StreamOptions(worker_count=0, read_threads=2),
                        streaming.StreamOptions(worker_count=2, read_threads=1)),
                       steps=steps, repeats=repeats, warmup=2)
    order = epoch_order(SEED, 0, count)
    common = dict(data=data, num_examples=count, steps=steps, repeats=repeats, warmup=2)
    if peers:
        rows.append(time_batches(_pillow_loop(paths, labels, order), name="jpeg/pillow-loop",
                                 options="1 thread", **common))
        try:
            rows.append(time_batches(_tf_data(paths, labels, order), name="jpeg/tf.data",
                                     options="AUTOTUNE", **common))
        except ImportError as error:
            rows.append(dict(bench="streaming", name="jpeg/tf.data", status="n/a",
                             why=f"{type(error).__name__}: {error}"))
    return rows


def tfds_png_rows(*, repeats: int) -> list[dict]:
    """tfds' MNIST ArrayRecord files (a PNG per record): the data path's HostSource, and the
    Grain stream decoding in 2 worker processes. Empty without tfds or real MNIST."""
    from benchmarks.data import candidate_dirs
    from jaxscale.data.datasets import load_data_source
    from jaxscale.data.pipeline import HostSource

    folder = next((d for d in candidate_dirs(None)
                   if (d / "train-images-idx3-ubyte.gz").exists()), None)
    if folder is None:
        return []
    try:
        reader = load_data_source("mnist", "train", data_dir=folder)
    except ImportError:
        return []
    data = "mnist (real, tfds ArrayRecord files, PNG records)"
    steps = 40

    def host_source():
        def pairs():
            for epoch in range(1000):
                for batch in HostSource(reader).batches(SEED, epoch, BATCH_SIZE):
                    yield batch.images, batch.labels
        return pairs()

    rows = [time_batches(host_source, name="mnist/tfds-png (HostSource)", data=data,
                         num_examples=len(reader), steps=steps, repeats=repeats, warmup=3,
                         options="1 thread")]
    rows += stream_rows(reader, "mnist/tfds-png", data,
                        (streaming.StreamOptions(worker_count=2, read_threads=1),),
                        steps=steps, repeats=repeats, warmup=3)
    return rows


def _digest(state) -> str:
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(state):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def train_child(input: str, records: str, *, epochs: int, batch_size: int) -> dict:
    """One training run in this (fresh) process: `input` "resident" (the records read into
    host memory, then onto the device) or "streaming" (the records through GrainSource).
    Returns its per-epoch seconds, numbers, a digest of the final state and its peak RSS."""
    from jaxscale.data.datasets import Dataset
    from jaxscale.training.config import TrainConfig
    from jaxscale.training.loop import train

    reader = streaming.RecordReader(records)
    data = reader
    if input == "resident":
        images, labels = reader.read(np.arange(len(reader)))
        data = Dataset(images, labels, "records", "train", reader.num_classes)
    config = TrainConfig(model="bn_cnn", scaling="standardize", epochs=epochs,
                         batch_size=batch_size, seed=SEED)
    start = time.perf_counter()
    result = train(config, data, input=input)
    total = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(
        resource.RUSAGE_CHILDREN).ru_maxrss
    return dict(input=result.input, total_s=total, digest=_digest(result.state),
                epoch_seconds=[h["seconds"] for h in result.history],
                numbers=[[h["train_loss"], h["train_accuracy"]] for h in result.history],
                peak_rss_mb=peak_kb / 1024, steps=int(result.state.step))


def train_rows(images: np.ndarray, labels: np.ndarray, data: str, folder: Path, *,
               epochs: int = 2, batch_size: int = BATCH_SIZE, rounds: int = 3) -> list[dict]:
    """The BN CNN trained resident vs streamed from raw records on disk, each run in a child
    process (`train_child`), the two alternating for `rounds` rounds so both see the same
    load; each row's rate is the median of its runs' last epochs (compiled before it). The
    streamed row carries the slowdown (median against median) and whether every run agrees
    bit for bit."""
    stem = folder / "train-records"
    streaming.write_records(stem, (images, labels), num_shards=4, batch_size=8192)
    pattern = f"{stem}-*.array_record"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    runs = {"resident": [], "streaming": []}
    for round_ in range(rounds):
        for input, done in runs.items():
            out = folder / f"train-{input}-{round_}.json"
            subprocess.run([sys.executable, "-m", "benchmarks.bench_streaming", "--train-child",
                            input, "--records", pattern, "--epochs", str(epochs),
                            "--batch-size", str(batch_size), "--json", str(out)],
                           check=True, env=env, cwd=Path(__file__).resolve().parents[1])
            done.append(json.loads(out.read_text()))
    steps = len(images) // batch_size
    last = {input: Timing(tuple(run["epoch_seconds"][-1] for run in done), steps * batch_size)
            for input, done in runs.items()}
    reference = runs["resident"][0]
    rows = []
    for input, done in runs.items():
        row = dict(bench="streaming", name=f"train/{input}", data=data,
                   options=f"bn_cnn standardize, no augmentation, {rounds} runs alternating",
                   num_examples=len(images), batch_size=batch_size, steps=steps,
                   epoch_seconds=[run["epoch_seconds"] for run in done],
                   **last[input].summary(),
                   total_s=statistics.median(run["total_s"] for run in done),
                   peak_rss_mb=max(run["peak_rss_mb"] for run in done),
                   device=f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}")
        if input == "streaming":
            row.update(slowdown=last[input].median_s / last["resident"].median_s,
                       bar_slowdown=TRAIN_SLOWDOWN_BAR,
                       same_numbers=all(run["digest"] == reference["digest"]
                                        and run["numbers"] == reference["numbers"]
                                        for run in done + runs["resident"]))
        rows.append(row)
    return rows


CASES = ("mnist", "cifar", "jpeg", "tfds", "train")


def run(images: np.ndarray, labels: np.ndarray, *, source: str = "given", repeats: int = 5,
        quick: bool = False, folder: Path | None = None, peers: bool = True,
        cases: tuple[str, ...] = CASES, train_examples: int | None = None,
        train_rounds: int | None = None) -> list[dict]:
    """Rows of `cases`: MNIST-shaped `images` (uint8[N, 28, 28, 1]) and `labels` as
    records ("mnist"), CIFAR-shaped synthetic records ("cifar"), JPEG files with their peers
    ("jpeg"), tfds' PNG records ("tfds"), and the BN CNN trained resident vs streamed from
    records ("train", on the first `train_examples` images).

    Files go to `folder` (default a temporary folder, removed afterwards)."""
    from jaxscale.data.datasets import synthetic_dataset

    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise ValueError(f"unknown cases {unknown}; known: {CASES}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_streaming_", dir=folder) as tmp:
        tmp = Path(tmp)
        if "mnist" in cases:
            rows += record_rows(images, labels, "mnist/records", source, tmp, repeats=repeats,
                                peers=peers)
        if "cifar" in cases:
            cifar = synthetic_dataset(10240 if quick else 50000, (32, 32, 3), 10, seed=1)
            rows += record_rows(cifar.images, cifar.labels, "cifar/records",
                                f"synthetic {len(cifar)} x 32x32x3", tmp, repeats=repeats,
                                peers=peers)
            del cifar
        if "jpeg" in cases:
            rows += jpeg_rows(tmp, count=1024 if quick else 2048,
                              repeats=max(2, repeats - 2), peers=peers)
        if "tfds" in cases:
            rows += tfds_png_rows(repeats=max(2, repeats - 2))
        if "train" in cases:
            count = min(len(images), train_examples or (10240 if quick else len(images)))
            rows += train_rows(images[:count], labels[:count],
                               f"{source}, first {count} images", tmp,
                               rounds=train_rounds or (1 if quick else 3))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'path':<52}{'images/s':>11}{'spread':>8}{'img/cpu-s':>11}{'start s':>9}"
             f"{'RSS MB':>8}{'+MB':>7}  bar"]
    for r in rows:
        if r.get("status") == "n/a":
            lines.append(f"{r['name']:<52}{'n/a':>11}  {r['why']}")
            continue
        if r["name"].startswith("train/"):
            verdict = "" if "slowdown" not in r else (
                f"x{r['slowdown']:.3f} of resident, bar {r['bar_slowdown']} "
                f"{'met' if r['slowdown'] <= r['bar_slowdown'] else 'MISSED'}; numbers "
                f"{'bit-identical' if r['same_numbers'] else 'DIFFER'}")
            lines.append(f"{r['name']:<52}{r['images_per_s']:>11,.0f}{'-':>8}{'-':>11}"
                         f"{'-':>9}{r['peak_rss_mb']:>8.0f}{'-':>7}  {verdict}")
            continue
        bar = r.get("bar")
        verdict = "" if not bar else (
            f"{bar:,} {'met' if r['images_per_s'] >= bar else 'MISSED'}")
        lines.append(f"{r['name']:<52}{r['images_per_s']:>11,.0f}{r['spread']:>8.2f}"
                     f"{r['images_per_cpu_s']:>11,.0f}{r['startup_s']:>9.1f}"
                     f"{r['peak_rss_mb']:>8.0f}{r['rss_growth_mb']:>7.0f}  {verdict}")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    from benchmarks import data as bench_data
    from jaxscale.cpu import tune_host_allocator

    allocator = tune_host_allocator()  # as `make bench` does, before any JAX work

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="10240 MNIST/CIFAR images, 1024 JPEGs, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--no-peers", action="store_true", help="skip Pillow and tf.data")
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated subset of %(default)s")
    parser.add_argument("--train-child", choices=("resident", "streaming"), default=None,
                        help=argparse.SUPPRESS)  # one run of train_rows, in a fresh process
    parser.add_argument("--records", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_child:
        result = train_child(args.train_child, args.records, epochs=args.epochs,
                             batch_size=args.batch_size)
        args.json.write_text(json.dumps(result))
        return [result]
    repeats = args.repeats or (2 if args.quick else 5)
    data = bench_data.load_bench_data(num_examples=10240 if args.quick else 60000)
    meta = dict(load_average=os.getloadavg(), cores=_cores(), quick=args.quick,
                data_source=data.source, host_allocator=allocator)
    rows = run(data.images, data.labels, source=data.source, repeats=repeats,
               quick=args.quick, peers=not args.no_peers,
               cases=tuple(c.strip() for c in args.cases.split(",") if c.strip()))
    meta["load_average_after"] = os.getloadavg()
    print(format_table(rows))
    print(f"load average before {meta['load_average']}, after {meta['load_average_after']} "
          f"on {meta['cores']} cores")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1, default=str))
    return rows


if __name__ == "__main__":
    main()
