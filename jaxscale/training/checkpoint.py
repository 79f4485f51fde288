"""Checkpoints of a training run: state, run metadata and the fitted scaling, verified on
restore.

A checkpoint directory holds, per saved step N:

- `step_0000000N.orbax/`: one orbax checkpoint (`CompositeCheckpointHandler`) with two items,
  `state` (the TrainState) and `meta` (JSON: the config, the training data's fingerprint, the
  epoch history, the running sums of the current epoch and the data iterator's position), so
  the train state and the input pipeline's state are saved and restored together. Orbax
  writes under a temporary name and renames when complete. Without orbax (it comes with the
  `extras` extra) the same two items go into one `step_0000000N.msgpack` file (flax
  serialization, written to a temporary name, then renamed).
- `step_0000000N.json`: the manifest, written last (atomically): the SHA-256 of every file of
  the checkpoint and of `scaling.npz`. A checkpoint without its manifest is incomplete.

and `scaling.npz` (`jaxscale.scaling.save_scaling`): what serving the model on raw uint8 images
needs; rewritten atomically with every checkpoint, so a damaged copy does not outlive the next
save.

`restore_latest` verifies the newest checkpoint against its manifest; a damaged or incomplete
one is reported (by path and file) and the previous one is tried, so one bad write never
loses the run. The state saved is the host copy of a replicated TrainState, written by one
process (process 0 in a multi-process job): orbax is told that this process alone takes part,
so saving waits on no other host.
"""

from __future__ import annotations

import hashlib
import json
import logging
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

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{8})\.(orbax|msgpack)$")
SCALING_FILE = "scaling.npz"
FORMATS = ("orbax", "msgpack")
# What `save_checkpoint` writes: orbax when it is installed, else flax msgpack.
FORMAT = "orbax" if ocp is not None else "msgpack"
MANIFEST_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, damaged, or does not fit what is restored."""


def checkpoint_path(directory: str | Path, step: int, fmt: str | None = None) -> Path:
    """Where the checkpoint of `step` lives (`fmt`: "orbax" or "msgpack"; None: `FORMAT`)."""
    fmt = fmt or FORMAT
    if fmt not in FORMATS:
        raise ValueError(f"checkpoint format must be one of {FORMATS}, got {fmt!r}")
    return Path(directory) / f"step_{int(step):08d}.{fmt}"


def manifest_path(path: str | Path) -> Path:
    """The manifest (`step_N.json`) of the checkpoint at `path`."""
    return Path(path).with_suffix(".json")


def _orbax_checkpointer(handler=None):
    """An orbax Checkpointer in which this process alone takes part."""
    if ocp is None:
        raise CheckpointError("this checkpoint was written by orbax, which is not installed: "
                              "pip install orbax-checkpoint (or jaxscale[extras])")
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    if handler is None:  # its item handlers must wait on no other process either
        handler = ocp.CompositeCheckpointHandler(
            composite_options=ocp.CompositeOptions(multiprocessing_options=options))
    return ocp.Checkpointer(handler, multiprocessing_options=options)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(path: Path) -> dict[str, str]:
    """SHA-256 of every file of a checkpoint (a folder or one file), by relative path."""
    if path.is_file():
        return {path.name: _sha256(path)}
    return {str(p.relative_to(path)): _sha256(p) for p in sorted(path.rglob("*"))
            if p.is_file()}


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _host(state: Any) -> Any:
    return jax.tree_util.tree_map(np.asarray, jax.device_get(state))


def _save_scaling(directory: Path, scaling: tuple) -> str:
    """Writes scaling.npz atomically; returns its SHA-256."""
    from jaxscale.scaling import save_scaling

    fresh = directory / f".{SCALING_FILE}.tmp.npz"
    save_scaling(fresh, *scaling)
    digest = _sha256(fresh)
    os.replace(fresh, directory / SCALING_FILE)
    return digest


def save_checkpoint(directory: str | Path, state: Any, *, meta: dict | None = None,
                    scaling: tuple | None = None, keep: int = 3) -> Path:
    """Writes `state` (a TrainState, or any pytree with an int `step`) and `meta` atomically.

    Args:
      directory: checkpoint folder (created).
      state: the TrainState; its `step` names the checkpoint.
      meta: JSON-serialisable run metadata, saved inside the checkpoint.
      scaling: (ScalingConfig, ScalingParams), written to `scaling.npz`.
      keep: how many newest checkpoints to keep (older ones are deleted; 0 keeps all).

    Returns:
      The checkpoint's path (a folder for orbax, a file for msgpack).

    Raises:
      CheckpointError: the folder cannot be written (permissions, disk full), naming it.
    """
    directory = Path(directory)
    state = _host(state)
    meta = dict(meta or {})
    path = checkpoint_path(directory, int(np.asarray(state.step)))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        manifest_path(path).unlink(missing_ok=True)  # the old manifest no longer holds
        if FORMAT == "orbax":
            _orbax_checkpointer().save(
                path.absolute(), ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=True)
        else:
            payload = {"state": serialization.to_state_dict(state), "meta": json.dumps(meta)}
            _write_atomically(path, serialization.msgpack_serialize(payload))
        manifest = {"version": MANIFEST_VERSION, "step": int(np.asarray(state.step)),
                    "format": FORMAT, "files": _files(path)}
        if scaling is not None:
            manifest[SCALING_FILE] = _save_scaling(directory, scaling)
        _write_atomically(manifest_path(path), json.dumps(manifest, indent=1).encode())
    except OSError as error:
        raise CheckpointError(f"cannot write checkpoint {path}: {error}") from error
    if keep:
        for old in list_checkpoints(directory)[:-keep]:
            _remove(old)
            manifest_path(old).unlink(missing_ok=True)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints (orbax folders and msgpack files) in `directory`, oldest step first,
    complete or not (see `verify_checkpoint`)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _NAME.match(p.name)),
                  key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint in `directory`, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def read_manifest(path: str | Path) -> dict:
    """The manifest of the checkpoint at `path`.

    Raises:
      CheckpointError: it is missing (an incomplete checkpoint) or not a manifest, naming it.
    """
    file = manifest_path(path)
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is incomplete: its manifest {file} is "
                              "missing (the run stopped while saving?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} is damaged: its manifest {file} is "
                              f"unreadable ({error})") from error
    if not isinstance(manifest, dict):
        raise CheckpointError(f"checkpoint {path} is damaged: its manifest {file} holds a "
                              f"{type(manifest).__name__}, not a manifest")
    return manifest


def verify_checkpoint(path: str | Path) -> dict:
    """Checks every file of the checkpoint at `path` against its manifest.

    Returns:
      The manifest.

    Raises:
      CheckpointError: incomplete, or a file missing, added or changed, naming it.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.get("version") != MANIFEST_VERSION:
        return manifest  # written by the first release, which kept no checksums
    expected = manifest.get("files")
    if not isinstance(expected, dict):
        raise CheckpointError(f"checkpoint manifest {manifest_path(path)} lists no files")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} is missing")
    found = _files(path)
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            raise CheckpointError(f"checkpoint {path} is damaged: {name} is missing")
        if name not in expected:
            raise CheckpointError(f"checkpoint {path} is damaged: {name} is not part of it")
        if found[name] != expected[name]:
            raise CheckpointError(f"checkpoint {path} is damaged: {name} does not match its "
                                  "checksum")
    return manifest


def restore_checkpoint(path: str | Path, target: Any) -> tuple[Any, dict]:
    """Verifies the checkpoint at `path` and reads it into the structure of `target` (a
    freshly built TrainState).

    Returns:
      (state with NumPy leaves, meta dict).

    Raises:
      CheckpointError: nothing there, incomplete or damaged (see `verify_checkpoint`), or it
        holds another model or optimizer than `target` (the message says which).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    manifest = verify_checkpoint(path)
    target = _host(target)
    legacy = manifest.get("version") != MANIFEST_VERSION
    try:
        if path.is_dir():
            state, meta = _restore_orbax(path, target, legacy)
        else:
            state, meta = _restore_msgpack(path, target, legacy)
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"checkpoint {path} (intact) holds a different model or optimizer state than the "
            f"one being restored: {error}") from error
    if legacy:
        meta = manifest
    return jax.tree_util.tree_map(np.asarray, state), meta


def _restore_orbax(path: Path, target: Any, legacy: bool):
    if legacy:  # the first release saved the state alone with StandardCheckpointHandler
        return _orbax_checkpointer(ocp.StandardCheckpointHandler()).restore(
            path.absolute(), target), {}
    restored = _orbax_checkpointer().restore(
        path.absolute(), ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                            meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"] or {})


def _restore_msgpack(path: Path, target: Any, legacy: bool):
    if legacy:
        return serialization.from_bytes(target, path.read_bytes()), {}
    payload = serialization.msgpack_restore(path.read_bytes())
    state = serialization.from_state_dict(target, payload["state"])
    return state, json.loads(payload["meta"])


def restore_latest(directory: str | Path, target: Any) -> tuple[Path, Any, dict] | None:
    """The newest intact checkpoint in `directory`: (path, state, meta), or None when there is
    no checkpoint at all. Damaged or incomplete ones are skipped with a warning naming them and
    the checkpoint used instead.

    Raises:
      CheckpointError: checkpoints exist but none is intact (every problem listed), or one
        holds a different model or optimizer than `target`.
    """
    problems = []
    for path in reversed(list_checkpoints(directory)):
        try:
            state, meta = restore_checkpoint(path, target)
        except CheckpointError as error:
            if "different model" in str(error):
                raise
            problems.append(str(error))
            logger.warning("%s; trying the previous checkpoint", error)
            continue
        if problems:
            logger.warning("resuming from %s instead", path)
        return path, state, meta
    if problems:
        raise CheckpointError("no intact checkpoint in " + str(directory) + ": "
                              + "; ".join(problems))
    return None


def load_scaling_for(directory: str | Path, *, verify: bool = True):
    """(ScalingConfig, ScalingParams) saved with the checkpoints in `directory`.

    Args:
      verify: check `scaling.npz` against the newest manifest that records it.

    Raises:
      CheckpointError: the file is missing or damaged, naming it.
    """
    from jaxscale.scaling import load_scaling

    file = Path(directory) / SCALING_FILE
    if not file.is_file():
        raise CheckpointError(f"{file} is missing")
    if verify:
        for path in reversed(list_checkpoints(directory)):
            try:
                expected = read_manifest(path).get(SCALING_FILE)
            except CheckpointError:
                continue
            if expected is not None:
                if _sha256(file) != expected:
                    raise CheckpointError(f"{file} is damaged: it does not match the checksum "
                                          f"in {manifest_path(path)}")
                break
    try:
        return load_scaling(file)
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"{file} is damaged: {error}") from error
