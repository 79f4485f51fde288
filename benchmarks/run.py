"""`make bench`: every scaling mode side by side with the Keras way, with a chart.

    python -m benchmarks.run [--quick] [--out DIR] [--data-dir DIR] [--only stats,scaling]

Sections (each a module of this package): stats (dataset statistics vs NumPy / Keras `fit`),
scaling (scaling alone vs Keras `flow`, as a fraction of the measured memory or compute
roofline, whichever bounds the mode), flow (the public `flow` / `flow_from_directory` at batch
64 vs Keras', with issue 15's bars), train (the BN CNN's step with each mode fused, vs Keras
`train_on_batch`), augment (the seed recipe vs Keras' `flow`, and its share of the train step),
pipeline (device-resident vs streaming input) and streaming (issue 18: images/s delivered to
the device from record files, JPEG decoding beside Pillow and tf.data, and a training run
streamed from disk vs resident, with peak RSS). A section that fails is reported as n/a with
why, and the others still run.

Writes `<out>/bench-<hardware>.json` (`bench-cpu.json`, `bench-h100.json`, ...: device,
versions, commit, every repeat) and its chart `<out>/bench-<hardware>.png`, and prints a table.
The files under benchmarks/results/ are committed: the docs' tables are generated from them
(`python -m benchmarks.report --docs`).
Method: warm-up excluded, `block_until_ready`, median and spread of repeats, rotated buffers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.sizes import settings  # noqa: E402

SECTIONS = ("stats", "scaling", "flow", "train", "augment", "pipeline", "streaming")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def run_metadata(source: str, quick: bool) -> dict:
    """Device, versions, the commit measured and the data source, for the JSON file."""
    import jax

    from benchmarks.report import cpu_model, provenance, version_of

    device = jax.devices()[0]
    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **provenance(),
        "quick": quick,
        "data_source": source,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "host_cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "host": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: version_of(name) for name in
                     ("jax", "jaxlib", "flax", "optax", "numpy", "keras", "jaxscale")},
        "method": "warm-up excluded; jax.block_until_ready before each clock read; median "
                  "and spread ((max-min)/median) over repeats; several input buffers rotated",
    }


def run_section(section: str, data, quick: bool, keras: bool) -> list[dict]:
    """Rows of one section; raises what the section raises."""
    sizes = settings(quick).get(section, {})
    if section == "stats":
        from benchmarks import bench_stats
        return bench_stats.run(data.images, keras=keras, **sizes)
    if section == "scaling":
        from benchmarks import bench_scaling
        return bench_scaling.run(data.images, keras=keras, **sizes)
    if section == "flow":
        from benchmarks import bench_flow
        return bench_flow.run(data.images, data.labels, keras=keras, **sizes)
    if section == "train":
        from benchmarks import bench_train
        return bench_train.run(data.images, data.labels, keras=keras, **sizes)
    if section == "augment":
        from benchmarks import bench_augment
        return bench_augment.run(data.images, data.labels, keras=keras, **sizes)
    if section == "pipeline":
        from benchmarks import bench_pipeline
        return bench_pipeline.run(data.images, data.labels, source=data.source,
                                  records=data.is_real, **sizes)
    if section == "streaming":
        from benchmarks import bench_streaming
        return bench_streaming.run(data.images, data.labels, source=data.source, **sizes)
    raise ValueError(f"unknown section {section!r}; known: {SECTIONS}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the under-2-minutes variant")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for bench-<hardware>.json and .png (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder with MNIST's four .gz files (default: $JAXSCALE_DATA_DIR "
                             "or ../shared/data/mnist; synthetic data when absent)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help="comma-separated sections to run (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first LIMIT training images (smoke tests)")
    parser.add_argument("--no-keras", action="store_true",
                        help="skip the Keras peer even when keras is installed")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    return args


def main(argv=None) -> dict:
    """Runs the benchmarks; returns {"meta", "rows", "json", "chart"}."""
    args = parse_args(argv)
    from tqdm.auto import tqdm

    from benchmarks import data as bench_data
    from benchmarks import keras_peer, report
    from jaxscale.cpu import tune_host_allocator

    started = time.perf_counter()
    size = args.limit or bench_data.MNIST_TRAIN_SIZE
    data = bench_data.load_bench_data(args.data_dir, num_examples=size)
    keras = not args.no_keras and keras_peer.keras_version() is not None
    meta = run_metadata(data.source, args.quick)
    meta["keras_peer"] = keras
    # Both sides of every ratio run in this process, so both get the same allocator.
    meta["host_allocator"] = tune_host_allocator()
    print(f"host allocator: {meta['host_allocator']}", flush=True)
    print(f"jaxscale bench{' --quick' if args.quick else ''}: {meta['device']} "
          f"({meta['backend']}, host {meta['cpu_model']} x{meta['host_cpus']}), "
          f"data: {data.source}, {len(data.images)} images "
          f"{data.images.shape[1:]}, keras peer: {'yes' if keras else 'no'}", flush=True)
    rows = []
    progress = tqdm(args.sections, desc="bench", unit="section", file=sys.stderr)
    for section in progress:
        progress.set_postfix_str(section)
        section_start = time.perf_counter()
        try:
            section_rows = run_section(section, data, args.quick, keras)
        except Exception as error:  # one broken section must not lose the others
            traceback.print_exc()
            section_rows = [{"bench": section, "name": section, "status": "n/a",
                             "why": f"{type(error).__name__}: {error}"}]
        meta.setdefault("section_seconds", {})[section] = time.perf_counter() - section_start
        rows.extend(section_rows)
    progress.close()
    meta["total_seconds"] = time.perf_counter() - started
    # a busy host (other jobs on the cores) inflates spreads: keep the load next to results
    meta["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    name = f"bench-{report.hardware_name(meta['backend'], meta['device'])}"
    json_path = report.write_json(args.out / f"{name}.json", meta, rows)
    chart = report.write_chart(args.out / f"{name}.png", rows, source=json_path,
                               title=report.chart_title("make bench", meta))
    print(report.format_table(rows))
    streamed = [r for r in rows if r.get("bench") == "streaming"]
    if streamed:  # its bars, CPU cost and memory do not fit the common table
        from benchmarks import bench_streaming
        print("\nstreaming (issue 18 bars):\n" + bench_streaming.format_table(streamed))
    print(f"\n{meta['total_seconds']:.0f} s; wrote {json_path}"
          + (f" and {chart}" if chart else
             " (no chart: no rates, or matplotlib, an optional extra, is missing)"), flush=True)
    return {"meta": meta, "rows": rows, "json": json_path, "chart": chart}


if __name__ == "__main__":
    main()
