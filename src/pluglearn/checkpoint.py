"""A whole run as one file: capture it, write it atomically, read it safely, resume from it.

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
import random
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .learner import Learner

FORMAT = "pluglearn-checkpoint"
VERSION = 1
SUFFIX = ".pt"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: corrupt, truncated, not ours, or of another model."""


# ----------------------------------------------------------------------------- random state


def rng_state() -> dict[str, Any]:
    """The global random states of python, numpy (when installed), torch and CUDA."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, gauss_next = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- capture


def capture(learn: Learner, epoch_end: bool = False) -> dict[str, Any]:
    """The run's state now: after a training batch (mid-epoch), or with ``epoch_end`` after a
    finished epoch (the resume then starts the next epoch)."""
    loader = learn.dls.train
    loader_state = loader.state_dict() if hasattr(loader, "state_dict") else None
    plugins = {}
    for impl, result in learn.hooks.call_each("state_dict", learn=learn):
        if result is not None:
            check_safe_state(result, f"plugin {impl.plugin!r}: state")
            plugins[impl.plugin] = result
    opt_state = learn.opt.state_dict() if hasattr(learn.opt, "state_dict") else None
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": learn.model.state_dict(),
        "opt": opt_state,
        "plugins": plugins,
        "rng": rng_state(),
        "loader": loader_state,
        "loop": {
            "epoch": learn.epoch + 1 if epoch_end else learn.epoch,
            "position": 0 if epoch_end else learn.iter + 1,  # training batches done
            "train_iter": learn.train_iter,
            "n_epochs": learn.n_epochs,
            "stop_reason": learn.stop_reason,
        },
    }


SAFE_TYPES = (torch.Tensor, int, float, bool, str, bytes, type(None))


def check_safe_state(value: Any, path: str) -> None:
    """Refuse, when saving, what ``torch.load(weights_only=True)`` would refuse at resume time."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{path} has a key {key!r} of type {type(key).__name__}: use str.")
            check_safe_state(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_safe_state(item, f"{path}[{i}]")
    elif not isinstance(value, SAFE_TYPES):
        raise TypeError(
            f"{path} is a {type(value).__module__}.{type(value).__name__}, which a safe load "
            "(weights_only=True) refuses: a state_dict hook must return tensors, numbers, "
            "strings, lists and dicts (e.g. torch.from_numpy(array), or array.tolist())."
        )


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


# ----------------------------------------------------------------------------- restore


def _check_model(learn: Learner, saved: dict[str, torch.Tensor], source: Path) -> None:
    own = learn.model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    reshaped = [
        f"{k} {tuple(saved[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or reshaped:
        parts = [
            f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches (saved != model)", reshaped),
            )
            if keys
        ]
        raise CheckpointError(
            f"checkpoint {source} is of a different model; " + "; ".join(parts) + ". Build the "
            "model the checkpoint was saved from, or start without resume_from."
        )


def restore(learn: Learner, source: str | Path) -> bool:
    """Load a checkpoint (a file, or the newest in a directory) into ``learn``, inside ``fit``
    once the optimizer and loaders exist. Returns False when the saved run had already stopped
    (``learn.stop_reason`` is then restored and nothing is left to train)."""
    source = Path(source)
    path, state = load_latest(source) if source.is_dir() else (source, load_checkpoint(source))
    _check_model(learn, state["model"], path)
    learn.model.load_state_dict(state["model"])
    if state["opt"] is not None:
        learn.opt.load_state_dict(state["opt"])
    loop = state["loop"]
    learn.epoch, learn.train_iter = int(loop["epoch"]), int(loop["train_iter"])
    learn.stop_reason = loop["stop_reason"]
    loader, position = learn.dls.train, int(loop["position"])
    stateful = hasattr(loader, "load_state_dict")
    if state["loader"] is not None and stateful:
        loader.load_state_dict(state["loader"])
    elif position and position < (len(loader) if hasattr(loader, "__len__") else position + 1):
        warnings.warn(
            f"the training loader ({type(loader).__name__}) has no state_dict, so the resume "
            f"replays {position} batches to reach the cut; use DataLoaders.from_datasets for "
            "an O(1) resume.",
            stacklevel=3,
        )
    learn._resume_position, learn._resume_replays = position, not stateful
    plugin_states = state["plugins"]
    for impl in learn.hooks.impls["load_state_dict"]:
        if impl.plugin in plugin_states:
            impl.call({"learn": learn, "state": plugin_states[impl.plugin]})
    set_rng_state(state["rng"])
    if learn.stop_reason is not None:
        warnings.warn(
            f"checkpoint {path} is of a run that had stopped ({learn.stop_reason}): nothing to "
            "resume. Call fit() without resume_from to train further.",
            stacklevel=3,
        )
        return False
    return True
