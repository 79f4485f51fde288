"""Where a run's numbers go: JSON lines (and TensorBoard scalars), written by process 0.

`MetricsWriter(path, resume_step=s)` continues the file of a resumed run: records written
after step `s` (the checkpoint it resumes from), and "partial_epoch" records (an epoch cut
short by `max_steps`, which the resumed run finishes), are dropped first, so the file reads as
if the run had never stopped, with no record twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsWriter:
    """Appends one JSON object per line to `path` (None: nowhere), and TensorBoard scalars to
    `tensorboard_dir` when TensorFlow imports.

    Args:
      path: the JSONL file (its folder is created).
      tensorboard_dir: TensorBoard log folder, or None.
      resume_step: drop records with a "step" greater than this first (a resumed run); None
        appends to the file as it is.

    Raises:
      ValueError: the file or folder cannot be written, naming it.
    """

    def __init__(self, path: str | Path | None, tensorboard_dir: str | Path | None = None, *,
                 resume_step: int | None = None):
        self._file = None
        self._tb = None
        if path is not None:
            path = Path(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if resume_step is not None and path.exists():
                    _truncate_after(path, resume_step)
                self._file = open(path, "a")
            except OSError as error:
                raise ValueError(f"cannot write metrics to {path}: {error}") from error
        if tensorboard_dir is not None:
            try:
                import tensorflow as tf
                self._tf = tf
                self._tb = tf.summary.create_file_writer(str(tensorboard_dir))
            except Exception:  # noqa: BLE001 - TensorBoard is optional
                self._tb = None

    def write(self, record: dict) -> None:
        """One record: a dict with "kind" and "step" and JSON-ready values."""
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            with self._tb.as_default():
                for name, value in record.items():
                    if isinstance(value, float):
                        self._tf.summary.scalar(f"{record['kind']}/{name}", value,
                                                step=record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.flush()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _truncate_after(path: Path, step: int) -> None:
    """Rewrites `path` keeping the records up to `step`, less "partial_epoch" ones (and lines
    that are not records, such as a half-written last line)."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (isinstance(record, dict) and record.get("step", 0) <= step
                and record.get("kind") != "partial_epoch"):
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def epoch_line(record: dict) -> str:
    """One human line for an epoch record."""
    line = (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f}")
    if record.get("test_accuracy") is not None:
        line += f" | test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f}"
    return line + f" | {record['seconds']:.1f} s, {record['images_per_s']:.0f} img/s"
