"""Model weights on disk: ``learn.save(path)`` / ``learn.load(path)``.

Weights are written as safetensors (no code can run when a file is read) with a SHA-256
digest of every tensor in the header, to a temporary file that is fsync'ed and renamed, so a
kill during a write leaves the previous file intact and a damaged file is refused. Keys are
written without the prefixes that wrappers add (``_orig_mod.`` from ``torch.compile``,
``module.`` from DDP / ``DataParallel``), and a file whose keys carry them loads too, into a
plain, compiled or wrapped model alike.

Loading checks every key and shape before changing anything; a mismatch is an error naming the
missing and unexpected keys. Besides its own files, ``load`` reads a state dict saved with
``torch.save(model.state_dict(), path)`` (with ``weights_only=True``) and the model of a
pluglearn checkpoint.

Example::

    learn.fit(3)
    learn.save("model.safetensors")
    fresh = Learner(make_model(), dls)
    fresh.load("model.safetensors")
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .checkpoint import temporary_path
from .checks import state_dict_mismatch

FORMAT = "pluglearn-weights"
PREFIXES = ("_orig_mod.", "module.")


class WeightsError(ValueError):
    """A weights file cannot be used: corrupt, not weights, or of another model."""


def strip_prefixes(key: str) -> str:
    """``key`` without the wrapper prefixes (``_orig_mod.``, ``module.``) at its start."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _canonical(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = strip_prefixes(key)
        if name in out:
            raise WeightsError(
                f"{source}: keys {key!r} and another both become {name!r} without their "
                f"wrapper prefixes {PREFIXES}: save the unwrapped model's state dict."
            )
        out[name] = value
    return out


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s state dict to ``path`` atomically (see the module doc); returns it."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in _canonical(model.state_dict(), "the model").items():
        t = value.detach().cpu()
        where = (t.untyped_storage().data_ptr(), t.storage_offset())
        # safetensors refuses tensors sharing memory (tied weights) and non-contiguous ones
        t = t.contiguous().clone() if where in seen or not t.is_contiguous() else t
        seen.add(where)
        tensors[key] = t
    data = st_save(tensors, metadata={"format": FORMAT, "sha256": digest(tensors)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _corrupt(path: Path, why: str) -> WeightsError:
    return WeightsError(
        f"weights file {path} is corrupt or truncated ({why}): save it again, or load another copy."
    )


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, checked (see the module doc); keys as saved."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no weights file at {path}: pass the path learn.save() wrote "
            "(e.g. 'model.safetensors')."
        )
    data = path.read_bytes()
    if data[:2] == b"PK":  # a torch.save zip: a state dict, or a pluglearn checkpoint
        return _read_torch(path)
    if len(data) < 8:
        raise _corrupt(path, f"{len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError):
        raise _corrupt(path, "its header is not a safetensors header") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a safetensors header")
    try:
        tensors = st_load(data)
    except Exception as error:  # safetensors raises its own error type
        raise _corrupt(path, f"{type(error).__name__}: {str(error)[:200]}") from error
    meta = header.get("__metadata__") or {}
    expected = meta.get("sha256")
    if expected is not None and digest(tensors) != expected:
        raise _corrupt(path, "its tensors do not match the digest written with them")
    return tensors


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(
            f"{path} cannot be read safely ({type(error).__name__}: {str(error)[:200]}): it is "
            "corrupt, or holds objects other than tensors (weights_only=True refuses them)."
        ) from error
    if isinstance(state, dict) and state.get("format") == "pluglearn-checkpoint":
        state = state.get("model")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(
            f"{path} holds a {type(state).__name__}, not a state dict of tensors: save weights "
            "with learn.save(path) or torch.save(model.state_dict(), path)."
        )
    return state


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load the weights at ``path`` into ``model`` after checking every key and shape."""
    saved = _canonical(read_weights(path), str(path))
    own = {strip_prefixes(k): k for k in model.state_dict()}
    shapes = {strip_prefixes(k): tuple(v.shape) for k, v in model.state_dict().items()}
    mismatch = state_dict_mismatch(shapes, saved)
    if mismatch:
        raise WeightsError(
            f"weights file {path} does not fit this model; {mismatch}. Build the model the "
            "weights were saved from (same architecture and sizes)."
        )
    model.load_state_dict({own[k]: v for k, v in saved.items()})
