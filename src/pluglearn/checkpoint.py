"""Checkpoint files: name them, write them atomically, read them safely, find the newest.

A checkpoint holds the model, the optimizer, every plugin's state (the ``state_dict`` hook, keyed
by plugin name: schedulers, metrics' running sums, early stopping...), the random states (python,
numpy, torch, CUDA), the loop position (epoch, batch, optimizer steps, stop reason) and the
training loader's state (its permutation seed and cursor). Resuming continues mid-epoch without
replaying the batches before the cut, and on CPU gives bit-identical weights to a run that was
never interrupted. Files are written to a temporary name, flushed, fsync'ed and renamed, so a
kill during a write leaves the previous checkpoint intact; they are read with
``torch.load(weights_only=True)``, so no code runs from a checkpoint file.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    pass

FORMAT = "pluglearn-checkpoint"
VERSION = 1
SUFFIX = ".pt"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: corrupt, truncated, not ours, or of another model."""


def checkpoint_name(state: dict[str, Any], prefix: str = "ckpt") -> str:
    """``ckpt-s000001250-e0010.pt``: optimizer steps then epoch, so names sort in run order."""
    loop = state["loop"]
    return f"{prefix}-s{loop['train_iter']:09d}-e{loop['epoch']:04d}{SUFFIX}"


# ----------------------------------------------------------------------------- files


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: temporary file, flush, fsync, rename, fsync dir."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file (``weights_only=True``), or raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}: pass a file or a directory of them.")
    try:
        with zipfile.ZipFile(path) as archive:  # torch.load does not check the records' CRCs
            damaged = archive.testzip()
        if damaged is not None:
            raise CheckpointError(
                f"checkpoint {path} is corrupt or truncated: its record {damaged!r} fails its CRC "
                "check (the file changed after it was written): resume from an earlier checkpoint, "
                "or pass its directory to use the newest readable one."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise _unreadable(path, error) from error
        raise CheckpointError(
            f"checkpoint {path} holds an object that a safe load (weights_only=True) refuses, so "
            "it is not resumed: it was not written by pluglearn's Checkpoint, or a plugin's "
            f"state held such an object ({str(error).splitlines()[-1][:200]})."
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise _unreadable(path, error) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a pluglearn checkpoint (no '{FORMAT}' marker): for bare weights use "
            "model.load_state_dict(torch.load(path, weights_only=True))."
        )
    if state.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer pluglearn (format {state['version']} > {VERSION}): "
            "upgrade pluglearn to resume it."
        )
    return state


def _unreadable(path: Path, error: BaseException) -> CheckpointError:
    first_line = str(error).splitlines()[0] if str(error) else ""
    return CheckpointError(
        f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {first_line}): "
        "resume from an earlier checkpoint, or pass its directory to use the newest readable one."
    )


def checkpoints_in(directory: str | Path) -> list[Path]:
    """The checkpoint files in ``directory``, oldest first (by steps, then epoch)."""
    return sorted(p for p in Path(directory).glob(f"*{SUFFIX}") if not p.name.startswith("."))


def load_latest(directory: str | Path) -> tuple[Path, dict[str, Any]]:
    """The newest readable checkpoint of ``directory`` (a corrupt newer one is skipped, with a
    warning naming it)."""
    files = checkpoints_in(directory)
    if not files:
        raise CheckpointError(
            f"no checkpoint (*{SUFFIX}) in {directory}: was the Checkpoint plugin saving there?"
        )
    for path in reversed(files):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:
            warnings.warn(f"skipping an unreadable checkpoint: {error}", stacklevel=3)
    raise CheckpointError(f"every checkpoint in {directory} is unreadable (see the warnings).")
