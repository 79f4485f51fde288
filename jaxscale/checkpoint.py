"""Checkpoints of a TrainState, with the fitted scaling saved beside the model.

A checkpoint directory holds one checkpoint per saved step, `step_00000100.orbax/` (an orbax
`StandardCheckpointHandler` checkpoint: orbax writes it under a temporary name and renames it
when complete, so a crash never leaves a half-written checkpoint under a real name), one JSON
sidecar per step (`step_00000100.json`: config, history) and `scaling.npz`
(`jaxscale.scaling.save_scaling`): everything needed to serve the model on raw uint8 images.

Without orbax (it comes with the `extras` extra), checkpoints are `step_00000100.msgpack`
files written by `flax.serialization` (to a temporary name, then renamed). Both restore
bit-exactly, and `restore_checkpoint` reads either kind, whatever `FORMAT` is now.

The state saved is the host copy of a replicated TrainState, written by one process (process 0
in a multi-process job): orbax is told that this process alone takes part, so saving waits on
no other host.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

try:
    import orbax.checkpoint as ocp
except ImportError:  # orbax is an optional extra
    ocp = None

_NAME = re.compile(r"^step_(\d{8})\.(orbax|msgpack)$")
SCALING_FILE = "scaling.npz"
FORMATS = ("orbax", "msgpack")
# What `save_checkpoint` writes: orbax when it is installed, else flax msgpack.
FORMAT = "orbax" if ocp is not None else "msgpack"


def checkpoint_path(directory: str | Path, step: int, fmt: str | None = None) -> Path:
    """Where the checkpoint of `step` lives (`fmt`: "orbax" or "msgpack"; None: `FORMAT`)."""
    fmt = fmt or FORMAT
    if fmt not in FORMATS:
        raise ValueError(f"checkpoint format must be one of {FORMATS}, got {fmt!r}")
    return Path(directory) / f"step_{int(step):08d}.{fmt}"


def _orbax_checkpointer():
    if ocp is None:
        raise ValueError("this checkpoint was written by orbax, which is not installed: "
                         "pip install orbax-checkpoint (or jaxscale[extras])")
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.Checkpointer(ocp.StandardCheckpointHandler(), multiprocessing_options=options)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def save_checkpoint(directory: str | Path, state: Any, *, meta: dict | None = None,
                    scaling: tuple | None = None, keep: int = 3) -> Path:
    """Writes `state` (a host TrainState, or any pytree with an int `step`) atomically.

    Args:
      directory: checkpoint folder (created).
      state: the TrainState; its `step` names the checkpoint.
      meta: JSON-serialisable extras (config, history) written to `step_*.json`.
      scaling: (ScalingConfig, ScalingParams) written once to `scaling.npz`.
      keep: how many newest checkpoints to keep (older ones are deleted; 0 keeps all).

    Returns:
      The checkpoint's path (a folder for orbax, a file for msgpack).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = jax.device_get(state)
    path = checkpoint_path(directory, int(np.asarray(state.step)))
    if FORMAT == "orbax":
        _orbax_checkpointer().save(path.absolute(), state, force=True)
    else:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(serialization.to_bytes(state))
        os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(meta or {}, indent=1))
    if scaling is not None and not (directory / SCALING_FILE).exists():
        from jaxscale.scaling import save_scaling
        save_scaling(directory / SCALING_FILE, *scaling)
    if keep:
        for old in list_checkpoints(directory)[:-keep]:
            _remove(old)
            old.with_suffix(".json").unlink(missing_ok=True)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints (orbax folders and msgpack files) in `directory`, oldest step first."""
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
    """Reads a checkpoint (orbax or msgpack) into the structure of `target` (a freshly built
    TrainState).

    Returns:
      (state with NumPy leaves, meta dict).

    Raises:
      ValueError: nothing is there, or it does not fit `target`'s structure.
    """
    path = Path(path)
    orbax = path.is_dir() and path.suffix == ".orbax"
    if not (orbax or path.is_file()):
        raise ValueError(f"no checkpoint at {path}")
    target = jax.device_get(target)
    try:
        if orbax:
            state = _orbax_checkpointer().restore(path.absolute(), target)
            state = jax.tree_util.tree_map(np.asarray, state)
        else:
            state = serialization.from_bytes(target, path.read_bytes())
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
