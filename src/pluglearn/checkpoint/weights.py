"""Model weights on disk: ``learn.save(path)`` / ``learn.load(path)``.

Weights are written as safetensors (no code can run when a file is read) with a SHA-256
digest of every tensor in the header, to a temporary file that is fsync'ed and renamed, so a
kill during a write leaves the previous file intact and a damaged file is refused. Keys are
written without the prefixes that wrappers add (``_orig_mod.`` from ``torch.compile``,
``module.`` from DDP / ``DataParallel``), and a file whose keys carry them loads too, into a
plain, compiled or wrapped model alike.

Loading checks every key, shape and dtype before changing anything; a mismatch is an error naming
the missing and unexpected keys. A tensor is only cast to the model's dtype when that keeps its
values exactly (:func:`is_exact_cast`: float16 or bfloat16 into float32 or float64, float32
into float64, a float8 into a float that holds each of its values, an integer into a wider
integer); any other dtype change (int <-> float, a wider float into a narrower one, complex,
bool) is refused, naming the key and both dtypes. Besides its own files, ``load`` reads a state
dict saved with ``torch.save(model.state_dict(), path)`` (with ``weights_only=True``) and the
model of a pluglearn checkpoint.

Example::

    learn.fit(3)
    learn.save("model.safetensors")
    fresh = Learner(make_model(), dls)
    fresh.load("model.safetensors")
"""

from __future__ import annotations

import functools
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

from ..diagnostics.input_checks import state_dict_mismatch
from .files import temporary_path

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


def canonical_state(
    state: Mapping[str, torch.Tensor], source: str, error: type[Exception] = WeightsError
) -> dict[str, torch.Tensor]:
    """``state`` keyed without wrapper prefixes (:func:`strip_prefixes`); two keys that become
    one raise ``error``. What files and checkpoints store.

    >>> list(canonical_state({"module._orig_mod.0.weight": torch.zeros(1)}, "a state"))
    ['0.weight']
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = strip_prefixes(key)
        if name in out:
            raise error(
                f"{source}: keys {key!r} and another both become {name!r} without their "
                f"wrapper prefixes {PREFIXES}: save the unwrapped model's state dict."
            )
        out[name] = value
    return out


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict keyed without wrapper prefixes: the same keys for a plain, a
    compiled (``_orig_mod.``) or a wrapped (``module.``) model.

    >>> list(model_state(torch.compile(nn.Linear(2, 1), backend="eager")))
    ['weight', 'bias']
    """
    return canonical_state(model.state_dict(), "the model")


def own_keys(model: nn.Module, saved: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``saved`` (keys with or without wrapper prefixes, checked by :func:`canonical_state`)
    keyed as ``model``'s own state dict, for ``model.load_state_dict``; a key the model lacks is
    kept without its prefixes.

    >>> compiled = torch.compile(nn.Linear(2, 1), backend="eager")
    >>> sorted(own_keys(compiled, {"weight": torch.zeros(1, 2), "bias": torch.zeros(1)}))
    ['_orig_mod.bias', '_orig_mod.weight']
    """
    own = {strip_prefixes(k): k for k in model.state_dict()}
    return {
        own.get(name, name): v for name, v in ((strip_prefixes(k), v) for k, v in saved.items())
    }


def is_exact_cast(source: torch.dtype, target: torch.dtype) -> bool:
    """True when every value of dtype ``source`` is exactly a value of ``target``: the same
    dtype; a float of 8 or 16 bits into a float that holds each of its values (float16 or
    bfloat16 into float32 or float64; among the float8 formats, read off their values);
    float32 into float64; an integer into an integer with its range.

    >>> is_exact_cast(torch.bfloat16, torch.float32), is_exact_cast(torch.int64, torch.float32)
    (True, False)
    """
    if source == target:
        return True
    if source.is_complex or target.is_complex or torch.bool in (source, target):
        return False
    if source.is_floating_point and target.is_floating_point:
        if torch.finfo(source).bits <= 16:
            return _every_value_kept(source, target)
        return (source, target) == (torch.float32, torch.float64)  # the one wider IEEE float
    if source.is_floating_point or target.is_floating_point:
        return False
    src_i, dst_i = torch.iinfo(source), torch.iinfo(target)
    return dst_i.min <= src_i.min and dst_i.max >= src_i.max


@functools.cache
def _every_value_kept(source: torch.dtype, target: torch.dtype) -> bool:
    """Whether each of the 256 or 65536 values of a float dtype of 8 or 16 bits keeps its value
    cast to ``target`` (a NaN stays a NaN). Read off the values, since ``torch.finfo`` does not
    decide it for the float8 formats: it gives float8_e5m2fnuz the eps of a 3-bit mantissa (it
    has 2), and it says nothing of infinities, which the fnuz formats lack (inf becomes NaN)."""
    bits = torch.finfo(source).bits
    patterns = torch.arange(2**bits, dtype=torch.int32)
    values = patterns.to(torch.int16 if bits == 16 else torch.uint8).view(source)
    before, after = values.double(), values.to(target).double()
    return bool(((before == after) | (before.isnan() & after.isnan())).all())


def inexact_casts(model: Mapping[str, torch.Tensor], saved: Mapping[str, torch.Tensor]) -> str:
    """The keys whose saved tensor would change value when cast to the model's dtype
    (``"0.weight int64 -> float32"``), or ``""``: keys of both dicts without wrapper prefixes.

    >>> inexact_casts({"w": torch.zeros(2)}, {"w": torch.zeros(2, dtype=torch.int64)})
    'w int64 -> float32'
    """
    changes = [
        f"{key} {str(saved[key].dtype).removeprefix('torch.')} -> "
        f"{str(value.dtype).removeprefix('torch.')}"
        for key, value in model.items()
        if key in saved and not is_exact_cast(saved[key].dtype, value.dtype)
    ]
    return ", ".join(changes[:5]) + (f" (and {len(changes) - 5} more)" if len(changes) > 5 else "")


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
    return write_tensors(storable(model_state(model)), path)


def storable(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` on the CPU as safetensors takes it: contiguous, no two tensors sharing memory.

    >>> w = torch.zeros(2, 3)
    >>> stored = storable({"a": w, "b": w, "t": w.t()})  # shared and transposed: copied
    >>> stored["b"].data_ptr() != stored["a"].data_ptr(), stored["t"].is_contiguous()
    (True, True)
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in state.items():
        t = value.detach().cpu()
        where = (t.untyped_storage().data_ptr(), int(t.storage_offset()))
        # safetensors refuses tensors sharing memory (tied weights) and non-contiguous ones
        t = t.contiguous().clone() if where in seen or not t.is_contiguous() else t
        seen.add(where)
        tensors[key] = t
    return tensors


def write_tensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` (see :func:`storable`) as safetensors with their digest and
    ``metadata`` (strings; ``format`` defaults to weights), atomically; returns the path.
    Example: ``write_tensors({"w": torch.zeros(2)}, "w.safetensors", {"note": "mine"})``."""
    path = Path(path)
    meta = {"format": FORMAT, **(metadata or {}), "sha256": digest(tensors)}
    data = st_save(tensors, metadata=meta)
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
    return read_safetensors(path, data)[0]


def read_safetensors(
    path: Path, data: bytes | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of the safetensors file at ``path`` (its bytes ``data``
    when already read), its digest checked; never unpickles.
    Example: ``tensors, meta = read_safetensors(Path("w.safetensors"))``."""
    data = path.read_bytes() if data is None else data
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
    return tensors, meta


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
    """Load the weights at ``path`` into ``model`` after checking every key, shape and dtype
    (only exact casts, see the module doc)."""
    load_state_checked(model, read_weights(path), f"weights file {path}")


def load_state_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` (keys with or without wrapper prefixes) into ``model`` after checking every
    key, shape and dtype; a mismatch raises :class:`WeightsError` naming ``source``.
    Example: ``load_state_checked(model, {"_orig_mod.weight": w}, "my state")``."""
    saved = canonical_state(state, source)
    own = model_state(model)
    mismatch = state_dict_mismatch({k: tuple(v.shape) for k, v in own.items()}, saved)
    if mismatch:
        raise WeightsError(
            f"{source} does not fit this model; {mismatch}. Build the model the "
            "weights were saved from (same architecture and sizes)."
        )
    inexact = inexact_casts(own, saved)
    if inexact:
        raise WeightsError(
            f"{source} holds tensors whose values would change if cast to the model's dtypes: "
            f"{inexact} (file -> model). If that change is intended, convert the file yourself "
            "(read the tensors, .to() the model's dtype, save them again); else build the model "
            "in the file's dtypes (e.g. model.to(torch.float64) for a float64 file). A cast "
            "that keeps every value (float16 or bfloat16 into float32) loads as it is."
        )
    model.load_state_dict(own_keys(model, saved))
