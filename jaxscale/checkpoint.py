"""Checkpoints of a TrainState, with the fitted scaling saved beside the model.

A checkpoint directory holds `step_00000100.msgpack` files (the TrainState serialised with
`flax.serialization`, written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint under a real name), one JSON sidecar per step (config, history) and
`scaling.npz` (`jaxscale.scaling.save_scaling`): everything needed to serve the model on raw
uint8 images. flax msgpack is used rather than orbax: one small host file per step is all a
single-host CNN needs, it has no background threads, and it restores bit-exactly.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

_NAME = re.compile(r"^step_(\d{8})\.msgpack$")
SCALING_FILE = "scaling.npz"


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` lives."""
    return Path(directory) / f"step_{int(step):08d}.msgpack"


def save_checkpoint(directory: str | Path, state: Any, *, meta: dict | None = None,
                    scaling: tuple | None = None, keep: int = 3) -> Path:
    """Writes `state` (a host TrainState, or any pytree with an int `step`) atomically.

    Args:
      directory: checkpoint folder (created).
      state: the TrainState; its `step` names the file.
      meta: JSON-serialisable extras (config, history) written to `step_*.json`.
      scaling: (ScalingConfig, ScalingParams) written once to `scaling.npz`.
      keep: how many newest checkpoints to keep (older ones are deleted; 0 keeps all).

    Returns:
      The checkpoint's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = jax.device_get(state)
    path = checkpoint_path(directory, int(np.asarray(state.step)))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(serialization.to_bytes(state))
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(meta or {}, indent=1))
    if scaling is not None and not (directory / SCALING_FILE).exists():
        from jaxscale.scaling import save_scaling
        save_scaling(directory / SCALING_FILE, *scaling)
    if keep:
        for old in list_checkpoints(directory)[:-keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in `directory`, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _NAME.match(p.name)),
                  key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint in `directory`, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def restore_checkpoint(path: str | Path, target: Any) -> tuple[Any, dict]:
    """Reads a checkpoint into the structure of `target` (a freshly built TrainState).

    Returns:
      (state with NumPy leaves, meta dict).

    Raises:
      ValueError: the file does not exist, or does not fit `target`'s structure.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        state = serialization.from_bytes(jax.device_get(target), path.read_bytes())
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"checkpoint {path} does not match the model/optimizer being "
                         f"restored: {error}") from error
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return state, meta


def load_scaling_for(directory: str | Path):
    """(ScalingConfig, ScalingParams) saved with the checkpoints in `directory`."""
    from jaxscale.scaling import load_scaling
    return load_scaling(Path(directory) / SCALING_FILE)
