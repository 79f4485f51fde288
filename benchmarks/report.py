"""What a benchmark run leaves behind: a table on stdout, a JSON file and a PNG chart.

Rows are flat dicts with at least `bench` and `name`; the figures a row may carry are
`images_per_s`, `keras_images_per_s` or `peer_images_per_s`, `ratio`, `gb_per_s`,
`roofline_fraction` (with `bound`), `gflop_per_s`, `overhead_pct`, `spread`, and
`status`/`why` for rows that could not run.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHART_BENCHES = ("scaling", "augment", "train")


def _number(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _peer_rate(row: dict):
    return row.get("keras_images_per_s", row.get("peer_images_per_s"))


def _named_apart(rows: list[dict]) -> list[dict]:
    """Rows whose (bench, name) repeats (a batch-size sweep) get " @<batch>" on the name."""
    names = [(r.get("bench"), r.get("name")) for r in rows]
    return [{**r, "name": f"{r['name']} @{r['batch_size']}"}
            if names.count((r.get("bench"), r.get("name"))) > 1 and "batch_size" in r else r
            for r in rows]


def format_table(rows: Iterable[dict]) -> str:
    """One fixed-width line per row, grouped by bench, with a header."""
    header = (f"{'bench':<9} {'name':<26} {'images/s':>13} {'spread':>7} {'peer img/s':>12} "
              f"{'ratio':>8} {'GB/s':>8} {'roofline':>8} {'overhead':>9}")
    lines = [header, "-" * len(header)]
    rows = _named_apart(list(rows))
    for row in rows:
        if row.get("status") == "n/a":
            lines.append(f"{row['bench']:<9} {row['name']:<26} {'n/a':>13}  {row.get('why', '')}")
            continue
        if row.get("name") == "copy_roofline":
            lines.append(f"{row['bench']:<9} {row['name']:<26} {'':>13} "
                         f"{_number(row.get('spread'), '7.0%'):>7} {'':>12} {'':>8} "
                         f"{_number(row.get('gb_per_s'), '8.2f'):>8} {'100%':>8}")
            continue
        if row.get("name") == "compute_roofline":
            lines.append(f"{row['bench']:<9} {row['name']:<26} {'':>13} "
                         f"{_number(row.get('spread'), '7.0%'):>7} "
                         f"{_number(row.get('gflop_per_s'), ',.0f') + ' GFLOP/s':>21} "
                         f"{'':>8} {'100%':>8}")
            continue
        overhead = row.get("overhead_pct")
        compute_bound = "c" if row.get("bound") == "compute" else " "
        lines.append(
            f"{row['bench']:<9} {row['name']:<26} {_number(row.get('images_per_s'), '13,.0f')} "
            f"{_number(row.get('spread'), '7.0%'):>7} {_number(_peer_rate(row), '12,.0f')} "
            f"{_number(row.get('ratio'), '7.1f') + ('x' if row.get('ratio') else ''):>8} "
            f"{_number(row.get('gb_per_s'), '8.2f'):>8} "
            f"{_number(row.get('roofline_fraction'), '7.0%') + compute_bound:>8} "
            f"{_number(overhead, '+8.1f') + ('%' if overhead is not None else ''):>9}")
    if any(row.get("bound") == "compute" for row in rows):
        lines.append("roofline: fraction of the memory bandwidth roofline; c: of the compute "
                     "roofline (the bound that applies)")
    return "\n".join(lines)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()  # NumPy / JAX scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_json(path: str | Path, meta: dict, rows: list[dict]) -> Path:
    """Writes {"schema": 1, "meta": meta, "rows": rows} (NaN/inf as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"schema": SCHEMA_VERSION, "meta": _jsonable(meta), "rows": _jsonable(rows)}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def write_chart(path: str | Path, rows: list[dict], *, title: str = "",
                source: str | Path | None = None) -> Path | None:
    """A PNG bar chart (log scale) of images/s per row: ours and the Keras peer side by side.

    `source`: the results file the rows came from, recorded in the PNG (`save_figure`).
    Returns the path, or None when no row has a rate to draw or matplotlib (an optional
    extra) is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [r for r in _named_apart(list(rows)) if r.get("bench") in CHART_BENCHES
             and _positive(r.get("images_per_s")) and r.get("name") != "keras_train_on_batch"]
    if not drawn:
        return None
    labels = [f"{r['bench']}: {r['name']}" for r in drawn]
    ours = [r["images_per_s"] for r in drawn]
    peers = [_peer_rate(r) if _positive(_peer_rate(r)) else 0.0 for r in drawn]
    positions = range(len(drawn))
    height = 0.4
    figure, axes = plt.subplots(figsize=(9, 0.42 * len(drawn) + 1.6))
    axes.barh([p - height / 2 for p in positions], ours, height, label="jaxscale",
              color="#1f77b4")
    axes.barh([p + height / 2 for p in positions], [v if v > 0 else float("nan")
                                                   for v in peers],
              height, label="Keras ImageDataGenerator / model", color="#ff7f0e")
    for p, (rate, peer) in enumerate(zip(ours, peers)):
        if peer:
            axes.text(rate, p - height / 2, f" {rate / peer:.1f}x", va="center", fontsize=8)
    axes.set_yticks(list(positions), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("images per second (log scale, median of repeats)")
    axes.set_title("\n".join(textwrap.wrap(title, 100)), fontsize=9)
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(axis="x", which="both", alpha=0.3)
    figure.tight_layout()
    path = save_figure(figure, path, source=source)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------- provenance

def _git(*args: str) -> str | None:
    import subprocess

    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance() -> dict:
    """The code a run measured: {"commit": `git rev-parse HEAD`, "dirty": whether tracked
    files other than benchmarks/results/ differ from it}; None values outside a checkout."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  ":(exclude)benchmarks/results")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def cpu_model() -> str:
    """The host CPU's model name (Linux), else platform.processor()."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version_of(module: str) -> str | None:
    """`module.__version__` ("unknown" without one), or None when it is not installed."""
    import importlib

    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except ImportError:
        return None


def describe_run(meta: dict) -> str:
    """One line saying what ran where: date, commit, hardware, versions, quick or not."""
    commit = (meta.get("commit") or "unknown")[:8] + (" + uncommitted changes"
                                                     if meta.get("dirty") else "")
    hardware = meta.get("device", "?")
    if meta.get("backend") == "cpu":
        hardware = f"{meta.get('cpu_model', 'CPU')}, {meta.get('host_cpus', '?')} cores"
    elif meta.get("device_count"):
        hardware = f"{meta.get('device_count')}x {hardware}"
    versions = meta.get("versions") or {}
    pinned = ", ".join(f"{name} {versions[name]}" for name in ("jax", "keras")
                       if versions.get(name))
    quick = "; a quick run, not the full one" if meta.get("quick") else ""
    return (f"{str(meta.get('time_utc', '?'))[:10]}, commit {commit}, {hardware}"
            f"{', ' + pinned if pinned else ''}{quick}")


def chart_title(command: str, meta: dict) -> str:
    """`command`: `describe_run(meta)`, for a chart's title."""
    return f"{command}: {describe_run(meta)}"


def hardware_name(backend: str, device_kind: str) -> str:
    """The short hardware name of a results file: "cpu", "h100" (a GPU's model), "tpu-v5-lite"."""
    if backend == "cpu":
        return "cpu"
    model = re.search(r"\b([A-Z]{1,2}\d{2,4})\b", device_kind or "")
    if backend == "gpu" and model:
        return model.group(1).lower()
    return re.sub(r"[^a-z0-9]+", "-", (device_kind or backend).lower()).strip("-") or backend


def sha256_of(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def chart_source(path: str | Path) -> str | None:
    """The "Source" text of a PNG chart (`<results file> sha256:<digest>`), or None."""
    data = Path(path).read_bytes()
    position = 8  # past the PNG signature; then chunks of length, type, data, CRC
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        if kind == b"tEXt":
            key, _, value = data[position + 8:position + 8 + length].partition(b"\0")
            if key == b"Source":
                return value.decode("latin-1")
        position += 12 + length
    return None


def save_figure(figure, path: str | Path, *, source: str | Path | None = None,
                dpi: int = 110) -> Path:
    """Writes a matplotlib figure as PNG; `source` (a results file) is recorded in the PNG
    as "Source: <name> sha256:<digest>", so a chart can be checked against its data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Software": None}
    if source is not None:
        metadata["Source"] = _source_tag(Path(source))
    figure.savefig(path, dpi=dpi, metadata=metadata)
    return path


def _source_tag(json_path: Path) -> str:
    return f"{json_path.name} sha256:{sha256_of(json_path)}"


# ------------------------------------------------------- the docs' tables, from results files
#
# A table in README.md or docs/*.md sits between two marker comments:
#
#     <!-- generated: KIND [ARGS] -->
#     ...the table, rewritten by `python -m benchmarks.report --docs`...
#     <!-- end generated -->
#
# KIND is a key of `TABLES`; ARGS name a results file under benchmarks/results/ (and, for
# `bench`, a section). tests/test_docs.py checks that the committed pages equal what this
# produces from the committed results, and that every chart was drawn from its file as it is.

DOC_PAGES = ("README.md", "docs/*.md")
_MARKER = re.compile(r"(?P<head><!-- generated: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)"
                     r"(?P<tail><!-- end generated -->)", re.S)


def load_results(name: str) -> dict:
    """A committed results file by name (`bench-cpu.json`), parsed.

    Raises:
      FileNotFoundError: naming the file and the command that writes it.
    """
    path = RESULTS / name
    if not path.is_file():
        command = {"bench": "make bench", "reproduce": "make reproduce",
                   "speedrun": "make speedrun",
                   "ablations": "python -m benchmarks.speedrun_ablations"}.get(
                       name.split("-")[0], "its benchmark")
        raise FileNotFoundError(f"{path} does not exist: run `{command}` to write it")
    return json.loads(path.read_text())


def _rate(value) -> str:
    """Images/s for humans: 4.23M, 991k, 706."""
    if not _positive(value):
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            digits = 3 - len(str(int(value // scale)))
            return f"{value / scale:.{max(digits, 0)}f}{suffix}"
    return f"{value:.0f}"


def _ratio(value) -> str:
    return f"{value:.1f}x" if _positive(value) else "-"


def _percent(value, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.1f} %" if signed else f"{value * 100:.0f} %"


def _find(rows: list[dict], bench: str, name: str, batch_size: int | None = None):
    for row in rows:
        if row.get("bench") == bench and row.get("name") == name and row.get("status") != "n/a" \
                and (batch_size is None or row.get("batch_size") == batch_size):
            return row
    return None


def _data_words(source: str) -> str:
    """A run's data source without the local paths: "real MNIST", "synthetic ..."."""
    if source.startswith("mnist"):
        return "real MNIST"
    return source.split(" (")[0]


def _caption(document: dict, command: str) -> str:
    meta = document.get("meta", {})
    data = f", {_data_words(meta['data_source'])}" if meta.get("data_source") else ""
    return f"`{command}`: {describe_run(meta)}{data}."


# What the README's table shows: (bench, name, batch or None, label).
SUMMARY_ROWS = (
    ("stats", "compute_stats", None, "dataset mean/std (`compute_stats`; peer: NumPy, as "
                                     "Keras' `fit`)"),
    ("scaling", "standardize", None, "scaling `standardize` (peer: Keras' `flow`)"),
    ("scaling", "zca", None, "scaling `zca`"),
    ("flow", "flow/normalize", None, "`ImageDataGenerator.flow` at batch 64, `normalize`"),
    ("flow", "flow_from_directory", None, "`flow_from_directory`, PNG digits, batch 64"),
    ("augment", "augment_jit/order1", 1024, "augmentation, seed recipe (peer: Keras' `flow`)"),
    ("train", "standardize", None, "BN CNN train step, batch 64 (peer: Keras "
                                   "`train_on_batch`)"),
)


def summary_table(name: str) -> str:
    """The README's table: a few headline rows of a `make bench` file."""
    document = load_results(name)
    rows = document["rows"]
    lines = ["| what | jaxscale, images/s | peer, images/s | ratio |", "|---|---|---|---|"]
    for bench, row_name, batch, label in SUMMARY_ROWS:
        row = _find(rows, bench, row_name, batch)
        if row is None:
            continue
        lines.append(f"| {label} | {_rate(row.get('images_per_s'))} | "
                     f"{_rate(_peer_rate(row))} | {_ratio(row.get('ratio'))} |")
    return "\n".join(lines) + "\n\n" + _caption(document, "make bench") + "\n"


# Per section of `make bench`: the columns after name, batch, images/s, spread, peer, ratio.
_SECTION_COLUMNS = {
    "stats": (("peer", "peer", lambda v: v or "NumPy"),),
    "scaling": (("gb_per_s", "GB/s", lambda v: _number(v, ".2f")),
                ("roofline_fraction", "of roofline", _percent)),
    "flow": (("bar", "bar", _ratio),
             ("meets_bar", "meets bar", lambda v: "-" if v is None else
              ("yes" if v else "**no**"))),
    "train": (("overhead_pct", "vs `none`", lambda v: _percent(v, signed=True)),),
    "augment": (("augment_share", "share of the step",
                 lambda v: "-" if v is None else f"{v * 100:.1f} %"),),
    "pipeline": (("batches_per_s", "batches/s", lambda v: _number(v, ",.0f")),),
    "streaming": (("images_per_cpu_s", "images/s per core-second", _rate),
                  ("peak_rss_mb", "peak RSS", lambda v: "-" if v is None else f"{v:,.0f} MB"),
                  (None, "issue 18 bar", lambda row: _streaming_bar(row))),
}


def _streaming_bar(row: dict) -> str:
    """A streaming row against its bar: images/s delivered, or the streamed training run's
    time relative to the resident one (and whether its numbers are the same bits)."""
    if "slowdown" in row:
        met = row["slowdown"] <= row["bar_slowdown"]
        same = "same bits" if row.get("same_numbers") else "**numbers differ**"
        return (f"x{row['slowdown']:.3f} of resident, bar x{row['bar_slowdown']}: "
                f"{'met' if met else '**missed**'}; {same}")
    if not row.get("bar"):
        return "-"
    met = row.get("images_per_s", 0) >= row["bar"]
    return f">= {_rate(row['bar'])}: {'met' if met else '**missed**'}"


def section_table(section: str, name: str) -> str:
    """Every row of one `make bench` section, from a results file."""
    document = load_results(name)
    extra = _SECTION_COLUMNS.get(section, ())
    header = ["name", "batch", "jaxscale, images/s", "spread", "peer, images/s", "ratio",
              *(title for _, title, _ in extra)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in document["rows"]:
        if row.get("bench") != section:
            continue
        if row.get("status") == "n/a":
            lines.append(f"| {row['name']} | n/a: {row.get('why', '')} |" + " |" * (
                len(header) - 2))
            continue
        if row.get("name") == "copy_roofline":
            lines.append(f"| copy roofline | | | {_percent(row.get('spread'))} | | | "
                         f"{_number(row.get('gb_per_s'), '.2f')} | 100 % |")
            continue
        if row.get("name") == "compute_roofline":  # its peak is GFLOP/s, not GB/s
            lines.append(f"| compute roofline | | | {_percent(row.get('spread'))} | | | "
                         f"{_number(row.get('gflop_per_s'), ',.0f')} GFLOP/s | 100 % |")
            continue
        spread = row.get("spread")
        if spread is None and row.get("step_ms_median"):  # the train rows time steps
            spread = row.get("step_ms_spread", math.nan) / row["step_ms_median"]
        cells = [row["name"], str(row.get("batch_size", "")), _rate(row.get("images_per_s")),
                 _percent(spread),
                 _rate(_peer_rate(row)), _ratio(row.get("ratio")),
                 *(format_(row if key is None else row.get(key)) for key, _, format_ in extra)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _caption(document, "make bench") + "\n"


def reproduce_table(name: str) -> str:
    """The tutorials' accuracy table of a `make reproduce` file."""
    document = load_results(name)
    keras = any(row.get("keras") for row in document["rows"].values())
    header = ["row", "model", "scaling", "augment", "schedule", "tutorial", "bar",
              "jaxscale, mean ± std", "per seed"] + (["Keras here, mean", "per seed"]
                                                      if keras else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row_name, row in document["rows"].items():
        finals = [run["test_accuracy"][-1] for run in row["runs"]]
        cells = [f"`{row_name}`", row["model"], row["scaling"], row["augment"] or "-",
                 row.get("schedule", "constant"), f"{row['tutorial']:.2f}",
                 f"{row.get('bar', row['tutorial']):.2f}",
                 f"{row['mean']:.2f} ± {row['std']:.2f}",
                 ", ".join(f"{a:.2f}" for a in finals)]
        if keras:
            runs = row.get("keras") or []
            cells += [f"{sum(runs) / len(runs):.2f}" if runs else "-",
                      ", ".join(f"{a:.2f}" for a in runs) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    length = (f"{document['max_steps']} steps" if document.get("max_steps")
              else f"{document['epochs']} epoch(s)")
    caption = (f"Test accuracy in percent after {length}, batch {document['batch_size']}, "
               f"{document['seeds']} seed(s). "
               + _caption(document, "make reproduce"))
    return "\n".join(lines) + "\n\n" + caption + "\n"


def _keras_value(value) -> str:
    if isinstance(value, float) and value and abs(1 / value - round(1 / value)) < 1e-9:
        return f"1/{round(1 / value)}"
    return repr(value)


def describe_scaling(config) -> str:
    """What a ScalingConfig does to pixels, in Keras' order of steps."""
    steps = []
    if config.preprocessing_function is not None:
        steps.append("`preprocessing_function`")
    if config.rescale:
        steps.append(f"multiply by {_keras_value(config.rescale)}")
    if config.samplewise_center:
        steps.append("subtract each image's mean")
    if config.samplewise_std_normalization:
        steps.append("divide each image by its std + 1e-6")
    scope = {"channel": "per channel", "pixel": "per pixel", "global": "over all pixels"}[
        config.statistics_scope]
    if config.featurewise_center:
        steps.append(f"subtract the dataset mean ({scope})")
    if config.featurewise_std_normalization:
        steps.append("divide by the dataset std + 1e-6")
    if config.zca_whitening:
        epsilon = f"{config.zca_epsilon:g}".replace("e-0", "e-")
        steps.append(f"ZCA-whiten (`zca_epsilon` {epsilon})")
    return ", then ".join(steps) if steps else "float32 conversion only"


def modes_table() -> str:
    """The mode table: every `jaxscale.scaling.MODES` entry, its Keras keywords
    (`scaling.keras_keywords`) and what it does."""
    from jaxscale import scaling

    lines = ["| mode | Keras keywords | what it does |", "|---|---|---|"]
    for mode, config in scaling.MODES.items():
        keywords = ", ".join(f"{k}={_keras_value(v)}"
                             for k, v in scaling.keras_keywords(config).items())
        lines.append(f"| `{mode}` | {f'`{keywords}`' if keywords else '(none)'} | "
                     f"{describe_scaling(config)} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ the speedrun's table and chart

def _not_yet(name: str, command: str) -> str:
    return (f"No results committed yet: `{command}` writes `benchmarks/results/{name}`,\n"
            f"then `make docs-tables` fills this in from it.\n")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def speedrun_table(name: str) -> str:
    """The results table of a `make speedrun` file (`speedrun-cpu.json`): per recipe and
    system, test accuracy, wall time from process start to the last evaluation, compile time
    (cold and warm persistent cache), train images/s, and time relative to ours; then its chart.
    A placeholder while no such file is committed."""
    if not (RESULTS / name).is_file():
        return _not_yet(name, "make speedrun")
    document = load_results(name)
    meta, rows = document.get("meta", {}), document["rows"]
    runs = [row["run"] for row in rows if "run" in row]
    lines = ["| recipe | system | seeds | test accuracy: mean (min) | wall time to the end: "
             "mean (max) | compile | train img/s | time vs ours |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "run" in row:
            continue
        if row.get("status") == "n/a":
            lines.append(f"| {row['recipe']} | {row['system']} | - | n/a: {row['why']} |"
                         " | | | |")
            continue
        per_seed = [r for r in runs if r.get("recipe") == row["recipe"]
                    and r.get("system") == row["system"] and r.get("status") != "failed"]
        cold = _mean(r["compile_s"] for r in per_seed if r.get("cache") == "cold")
        warm = _mean(r["compile_s"] for r in per_seed if r.get("cache") == "warm")
        cache = f" (cold {cold:.1f} s, warm {warm:.1f} s)" if cold and warm else ""
        lines.append(
            f"| {row['recipe']} | {row['system']} | {row['seeds']} | "
            f"{100 * row['accuracy_mean']:.2f} % ({100 * row['accuracy_min']:.2f} %) | "
            f"{row['time_mean_s']:.1f} s ({row['time_max_s']:.1f} s) | "
            + ("-" if row.get("compile_mean_s") is None else f"{row['compile_mean_s']:.1f} s")
            + f"{cache} | {_rate(row.get('images_per_s_mean'))} | "
            f"{_ratio(row.get('ours_speedup', 1.0))} |")
    load = meta.get("load_average_after")
    extra = [f"torch {meta['torch']}" if meta.get("torch") else "no torch",
             f"{meta.get('split', 'test')} split",
             f"{meta.get('total_seconds', 0):.0f} s in all"]
    if load:
        extra.append(f"load average after {load[0]:.1f}")
    caption = _caption(document, "make speedrun").rstrip(".") + "; " + ", ".join(extra) + "."
    chart = Path(name).with_suffix(".png").name
    return ("\n".join(lines) + "\n\n" + caption + "\n\n"
            f"![make speedrun: test accuracy against seconds since process start]"
            f"(../benchmarks/results/{chart})\n")


def ablations_table(name: str) -> str:
    """The table of a `python -m benchmarks.speedrun_ablations` file: the recipe's train step
    against variants that undo one choice each. A placeholder while none is committed."""
    if not (RESULTS / name).is_file():
        return _not_yet(name, "python -m benchmarks.speedrun_ablations")
    document = load_results(name)
    lines = ["| variant | images/s, median | images/s, best | spread | vs the recipe |",
             "|---|---|---|---|---|"]
    compile_s = None
    for row in document["rows"]:
        if row.get("name") == "init_compile_s":
            compile_s = row
            continue
        lines.append(f"| `{row['name']}` | {_rate(row.get('images_per_s'))} | "
                     f"{_rate(row.get('images_per_s_max'))} | {_percent(row.get('spread'))} | "
                     f"{row['vs_recipe']:.2f}x |")
    text = "\n".join(lines) + "\n"
    if compile_s and compile_s.get("threefry2x32") and compile_s.get("rbg"):
        text += (f"\nCompile of the initial state: {compile_s['threefry2x32']:.2f} s with "
                 f"threefry keys, {compile_s['rbg']:.2f} s with `rbg`.\n")
    return text + "\n" + _caption(document, "python -m benchmarks.speedrun_ablations") + "\n"


def write_speedrun_chart(document: dict, path: str | Path, *,
                         source: str | Path | None = None) -> Path | None:
    """The chart of a `make speedrun` file: test accuracy after each epoch against seconds
    since process start, one line per run, a panel per recipe, its target dashed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = document.get("meta", {})
    recipes = meta.get("recipes", {})
    runs = [row["run"] for row in document["rows"] if "run" in row]
    colors = {"jaxscale": "#1f77b4", "jaxscale_train": "#9467bd", "torch": "#d62728",
              "torch_compile": "#ff7f0e", "keras": "#2ca02c"}
    figure, panels = plt.subplots(1, max(len(recipes), 1), figsize=(6 * max(len(recipes), 1),
                                                                     4.2), squeeze=False)
    for panel, (recipe, config) in zip(panels[0], recipes.items()):
        target = config["target"]
        labelled = set()
        for run in runs:
            if run["recipe"] != recipe or run.get("status") == "failed":
                continue
            label = None if run["system"] in labelled else run["system"]
            labelled.add(run["system"])
            panel.plot([p["seconds"] for p in run["curve"]],
                       [100 * p["accuracy"] for p in run["curve"]], marker="o", ms=3, lw=1,
                       color=colors.get(run["system"], "gray"), label=label, alpha=0.8)
        panel.axhline(100 * target, color="black", lw=0.8, ls="--")
        panel.set_title(f"{recipe} (target {100 * target:.1f} %)", fontsize=9)
        panel.set_xlabel("seconds since process start (incl. imports, data, compile)")
        panel.set_ylabel("test accuracy after each epoch (%)")
        panel.set_ylim(max(95.0, 100 * target - 2.5), 100.0)
        panel.grid(alpha=0.3)
        if labelled:
            panel.legend(fontsize=8, loc="lower right")
    figure.suptitle("\n".join(textwrap.wrap(chart_title("make speedrun", meta), 110)),
                    fontsize=9)
    figure.tight_layout()
    path = save_figure(figure, path, source=source)
    plt.close(figure)
    return path


def _speedrun_chart(source: Path, chart: Path) -> None:
    write_speedrun_chart(json.loads(source.read_text()), chart, source=source)


TABLES = {
    "modes": modes_table,                 # <!-- generated: modes -->
    "bench-summary": summary_table,       # <!-- generated: bench-summary bench-cpu.json -->
    "bench": section_table,               # <!-- generated: bench scaling bench-cpu.json -->
    "reproduce": reproduce_table,         # <!-- generated: reproduce reproduce-cpu.json -->
    "speedrun": speedrun_table,           # <!-- generated: speedrun speedrun-cpu.json -->
    "speedrun-ablations": ablations_table,  # <!-- generated: speedrun-ablations ablations-cpu.json -->
}


def render(text: str) -> str:
    """`text` with every generated table rewritten."""
    def replace(match):
        kind, *args = match["spec"].split()
        if kind not in TABLES:
            raise ValueError(f"unknown generated table {kind!r}; known: {sorted(TABLES)}")
        return match["head"] + TABLES[kind](*args) + match["tail"]

    return _MARKER.sub(replace, text)


def doc_pages(root: Path = ROOT) -> list[Path]:
    """README.md and docs/*.md."""
    pages = []
    for pattern in DOC_PAGES:
        pages.extend(sorted(root.glob(pattern)))
    return pages


def stale_charts(results: Path = RESULTS) -> list[tuple[Path, Path]]:
    """(results file, chart) pairs whose chart is missing or was drawn from other data."""
    stale = []
    for source in sorted(results.glob("*.json")):
        chart = source.with_suffix(".png")
        if source.name.split("-")[0] in CHARTS and (
                not chart.exists() or chart_source(chart) != _source_tag(source)):
            stale.append((source, chart))
    return stale


def _bench_chart(source: Path, chart: Path) -> None:
    document = json.loads(source.read_text())
    write_chart(chart, document["rows"], source=source,
                title=chart_title("make bench", document.get("meta", {})))


def write_accuracy_chart(results: dict, path: str | Path, *,
                         source: str | Path | None = None) -> Path:
    """The chart of a `make reproduce` file: test accuracy per epoch, mean over seeds, one
    line per row, each row's bar dotted; `source` is recorded in the PNG (`save_figure`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(figsize=(6, 4))
    for name, row in results["rows"].items():
        curves = [run["test_accuracy"] for run in row["runs"]]
        mean = [sum(values) / len(values) for values in zip(*curves)]
        line, = axes.plot(range(1, len(mean) + 1), mean, marker="o", label=f"{name} (ours)")
        axes.axhline(row.get("bar", row["tutorial"]), color=line.get_color(), linestyle=":",
                     linewidth=1)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_ylabel("test accuracy (%)")
    title = "MNIST test accuracy (dotted: the row's bar)"
    if "meta" in results:
        title = "\n".join(textwrap.wrap(chart_title("make reproduce", results["meta"]), 80)
                           + [title])
    axes.set_title(title, fontsize=8)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = save_figure(figure, path, source=source, dpi=120)
    plt.close(figure)
    return path


def _reproduce_chart(source: Path, chart: Path) -> None:
    write_accuracy_chart(json.loads(source.read_text()), chart, source=source)


CHARTS = {"bench": _bench_chart, "reproduce": _reproduce_chart,
          "speedrun": _speedrun_chart}


def update_docs(root: Path = ROOT, *, check: bool = False) -> list[Path]:
    """Rewrites the generated tables of the pages and redraws stale charts.

    Args:
      check: write nothing; only report.

    Returns:
      The pages and charts that were (with `check`: would be) rewritten.
    """
    changed = []
    for page in doc_pages(root):
        text = page.read_text()
        fresh = render(text)
        if fresh != text:
            changed.append(page)
            if not check:
                page.write_text(fresh)
    for source, chart in stale_charts(root / "benchmarks" / "results"):
        changed.append(chart)
        if not check:
            CHARTS[source.name.split("-")[0]](source, chart)
    return changed


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Rewrite the tables of README.md and docs/*.md (and the charts) from the "
                    "committed results under benchmarks/results/.")
    parser.add_argument("--docs", action="store_true", help="rewrite the pages and charts")
    parser.add_argument("--check", action="store_true",
                        help="only say what is out of date (exit 1 if anything is)")
    args = parser.parse_args(argv)
    if not (args.docs or args.check):
        parser.error("nothing to do: pass --docs or --check")
    changed = update_docs(check=args.check)
    for path in changed:
        print(f"{'out of date' if args.check else 'rewrote'}: {path.relative_to(ROOT)}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
