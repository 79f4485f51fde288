"""What a benchmark run leaves behind: a table on stdout, a JSON file and a PNG chart.

Rows are flat dicts with at least `bench` and `name`; the figures a row may carry are
`images_per_s`, `keras_images_per_s` or `peer_images_per_s`, `ratio`, `gb_per_s`,
`roofline_fraction` (with `bound`), `gflop_per_s`, `overhead_pct`, `spread`, and `status`/`why` for rows that could not run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1
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
        lines.append(
            f"{row['bench']:<9} {row['name']:<26} {_number(row.get('images_per_s'), '13,.0f')} "
            f"{_number(row.get('spread'), '7.0%'):>7} {_number(_peer_rate(row), '12,.0f')} "
            f"{_number(row.get('ratio'), '7.1f') + ('x' if row.get('ratio') else ''):>8} "
            f"{_number(row.get('gb_per_s'), '8.2f'):>8} "
            f"{_number(row.get('roofline_fraction'), '7.0%') + ('c' if row.get('bound') == 'compute' else ' '):>8} "
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


def write_chart(path: str | Path, rows: list[dict], *, title: str = "") -> Path | None:
    """A PNG bar chart (log scale) of images/s per row: ours and the Keras peer side by side.

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
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(axis="x", which="both", alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
