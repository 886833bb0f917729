"""Checkpoint files: name them, write them atomically, read them safely, find the newest run's.

A checkpoint holds the model, the optimizer, every plugin's state (the ``state_dict`` hook, keyed
by plugin name: schedulers, metrics' running sums, early stopping...), the random states (python,
numpy, torch, CUDA), the loop position (epoch, batch, optimizer steps, stop reason) and the
training loader's state (its permutation seed and cursor). Resuming continues mid-epoch without
replaying the batches before the cut, and on CPU gives bit-identical weights to a run that was
never interrupted. Files are written to a temporary name, fsync'ed and renamed, so a kill during
a write leaves the previous checkpoint intact; they are read with ``torch.load(weights_only=True)``,
so no code runs from a checkpoint file.

Each fit that saves checkpoints is a *run* with its own id (its start time, then a random
suffix): ``ckpt-20250102T030405123-9f3a1c-s000001250-e0010.pt``. Several runs can share a
directory; a run only ever deletes its own files, and :func:`load_latest` resumes the run written
most recently. Files named without a run id (pluglearn before runs had ids) count as one run.
"""

from __future__ import annotations

import os
import pickle
import re
import secrets
import socket
import time
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

import torch

from .atomic_write import RecordingWriter, ctrl_c_deferred, explain_write_error

FORMAT = "pluglearn-checkpoint"
VERSION = 1
SUFFIX = ".pt"
RUN_ID = re.compile(r"\d{8}T\d{9}-[0-9a-f]{6}")
_NAME = re.compile(
    rf"(?P<prefix>.*?)-(?:(?P<run>{RUN_ID.pattern})-)?s(?P<steps>\d+)-e(?P<epoch>\d+)"
)
_TEMPORARY = re.compile(r"\.(?P<target>.+\.pt)(?:\.(?P<host>[A-Za-z0-9-]+))?\.(?P<pid>\d+)\.tmp")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: corrupt, truncated, not ours, or of another model."""


class NoCheckpointError(CheckpointError):
    """There is no checkpoint to resume yet: the path does not exist, or holds no checkpoint."""


# ----------------------------------------------------------------------------- names and runs


def new_run_id() -> str:
    """A run id that sorts by start time (UTC, to the millisecond), with a random suffix."""
    now_ms = time.time_ns() // 1_000_000
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ms // 1000))
    return f"{stamp}{now_ms % 1000:03d}-{secrets.token_hex(3)}"


def checkpoint_name(state: dict[str, Any], prefix: str = "ckpt", run: str | None = None) -> str:
    """``ckpt-<run>-s000001250-e0010.pt``: the run id, then optimizer steps and epoch, so a run's
    names sort in its order (without ``run``: the name pluglearn used before runs had ids)."""
    loop = state["loop"]
    run_part = f"{run}-" if run is not None else ""
    return f"{prefix}-{run_part}s{loop['train_iter']:09d}-e{loop['epoch']:04d}{SUFFIX}"


class NameParts(NamedTuple):
    prefix: str
    run: str | None
    steps: int
    epoch: int


def parse_name(path: str | Path) -> NameParts | None:
    """The parts of a checkpoint's file name, or None for a name pluglearn did not make."""
    name = Path(path).name
    match = _NAME.fullmatch(name[: -len(SUFFIX)]) if name.endswith(SUFFIX) else None
    if match is None:
        return None
    return NameParts(match["prefix"], match["run"], int(match["steps"]), int(match["epoch"]))


class Run(NamedTuple):
    """One run's checkpoints in a directory: its id (None for files without one), oldest first."""

    id: str | None
    files: list[Path]


def _order_in_run(path: Path) -> tuple[int, int, str]:
    parts = parse_name(path)
    return (parts.steps, parts.epoch, path.name) if parts else (-1, -1, path.name)


def runs_in(directory: str | Path) -> list[Run]:
    """The runs whose checkpoints are in ``directory``, the one written most recently last."""
    by_run: dict[str | None, list[Path]] = {}
    for path in Path(directory).glob(f"*{SUFFIX}"):
        if not path.name.startswith("."):
            parts = parse_name(path)
            by_run.setdefault(parts.run if parts else None, []).append(path)
    runs, written = [], {}
    for run, files in by_run.items():
        try:
            written[run] = max(p.stat().st_mtime_ns for p in files)
        except FileNotFoundError:  # deleted meanwhile by the run that owns it
            written[run] = 0
        runs.append(Run(run, sorted(files, key=_order_in_run)))
    return sorted(runs, key=lambda r: (written[r.id], r.id or ""))


def checkpoints_in(directory: str | Path) -> list[Path]:
    """The checkpoint files in ``directory``, run by run (the most recently written run last),
    each run's oldest first: the last one is the newest checkpoint of the newest run."""
    return [path for run in runs_in(directory) for path in run.files]


# ----------------------------------------------------------------------------- writing


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before its rename: hidden, and naming the host and process."""
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}.tmp")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: temporary file, fsync, rename, fsync directory.
    On any failure (a Ctrl-C, a full disk) the temporary file is removed and the exception is
    raised as itself, never as torch's ``RuntimeError``; the file at ``path`` is unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb", buffering=0) as file, ctrl_c_deferred() as deliver:
            writer = RecordingWriter(file, deliver)
            try:
                # torch.save takes any object with write() and flush() (its doc); the
                # annotation names only files and paths
                torch.save(state, cast(IO[bytes], writer))
            except RuntimeError:
                if writer.error is None:
                    raise
                raise writer.error from None
            if deliver is not None:
                deliver()  # a Ctrl-C after the last write: before the file replaces any other
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        explained = explain_write_error(error, path.parent)
        if explained is not None:
            raise explained from error
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_temporaries(directory: str | Path, run: str | None = None) -> list[Path]:
    """Remove the temporary files that killed writes left in ``directory``: those of run ``run``
    (call this before the run writes) and those of processes of this host that no longer exist.
    Returns the removed paths."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        match = _TEMPORARY.fullmatch(tmp.name)
        if match is None:
            continue
        parts = parse_name(match["target"])
        here = match["host"] in (None, _host())
        ours = run is not None and parts is not None and parts.run == run
        if ours or (here and _process_gone(int(match["pid"]))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


# ----------------------------------------------------------------------------- reading


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file (``weights_only=True``), or raise :class:`CheckpointError`
    (:class:`NoCheckpointError` when nothing exists at ``path``)."""
    path = Path(path)
    if not path.is_file():
        error = NoCheckpointError if not path.exists() else CheckpointError
        raise error(
            f"no checkpoint file at {path}: pass a file or a directory of them (or "
            "fit(..., missing_ok=True) to start fresh when no checkpoint was written yet)."
        )
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


def _run_label(run: str | None) -> str:
    return f"run {run}" if run is not None else "the run of files without a run id"


def load_latest(directory: str | Path) -> tuple[Path, dict[str, Any]]:
    """The newest readable checkpoint of the run written most recently in ``directory`` (a
    corrupt newer one is skipped, with a warning naming it; with several runs, a warning names
    the one chosen). Raises :class:`NoCheckpointError` when there is no checkpoint yet."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NoCheckpointError(
            f"no checkpoint to resume: {directory} does not exist. Check the path, or pass "
            "fit(..., missing_ok=True) to start fresh when no checkpoint was written yet."
        )
    runs = runs_in(directory)
    if not runs:
        raise NoCheckpointError(
            f"no checkpoint (*{SUFFIX}) in {directory}: was the Checkpoint plugin saving there? "
            "Pass fit(..., missing_ok=True) to start fresh when no checkpoint was written yet."
        )
    newest = runs[-1]
    if len(runs) > 1:
        others = ", ".join(_run_label(run.id) for run in runs[:-1])
        warnings.warn(
            f"{directory} holds checkpoints of {len(runs)} runs: resuming the one written most "
            f"recently, {_run_label(newest.id)} (not {others}). Pass a checkpoint file to resume "
            "another run, or give each run its own directory.",
            stacklevel=3,
        )
    for path in reversed(newest.files):
        try:
            return path, load_checkpoint(path)
        except NoCheckpointError:  # deleted by keep_last since it was listed
            continue
        except CheckpointError as error:
            warnings.warn(f"skipping an unreadable checkpoint: {error}", stacklevel=3)
    raise CheckpointError(
        f"every checkpoint of {_run_label(newest.id)} in {directory} is unreadable (see the "
        "warnings), so no other run is resumed in its place: pass a checkpoint file to resume "
        "one explicitly."
    )
