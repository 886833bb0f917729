"""The export file: safetensors whose header holds a JSON record, both digest-checked.

``write_export(tensors, record, path)`` writes the tensors as :mod:`pluglearn.checkpoint.weights`
writes weights (atomically, with a SHA-256 digest of every tensor) and adds to the header's metadata
the record (``pluglearn_export``: JSON) and its own digest, so a damaged header is refused as a
damaged tensor is. ``read_export(path)`` gives both back after checking them, without unpickling
anything; a torch.save file, a weights file or another format is a clear error.

A pickled export (``learn.export(path, pickle=True)``) stores its pickle as one uint8 tensor
(:func:`pickled`); :func:`unpickle` reads it, and only ``load_learner(path, unsafe=True)``
calls it.

Example::

    write_export({"0.weight": w}, {"format": FORMAT, "version": VERSION, ...}, "m.export")
    tensors, record = read_export("m.export")
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoint.weights import WeightsError, read_safetensors, write_tensors
from .export_spec import ExportError

FORMAT = "pluglearn-export"
VERSION = 1
RECORD = "pluglearn_export"  # the header metadata key holding the JSON record
RECORD_DIGEST = "record_sha256"
PICKLE = "pickle"  # the one tensor of a pickled export: the pickle's bytes


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_export(
    tensors: dict[str, torch.Tensor], record: dict[str, Any], path: str | os.PathLike[str]
) -> Path:
    """Write ``tensors`` and ``record`` (JSON-able) to ``path`` atomically; returns the path.

    Example::

        write_export({"weight": w}, {"format": FORMAT, "version": VERSION, ...}, "m.export")
    """
    text = json.dumps(record)
    meta = {"format": FORMAT, RECORD: text, RECORD_DIGEST: _digest(text)}
    return write_tensors(tensors, path, meta)


def read_export(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and record of the export at ``path``, checked (see the module doc).

    Example::

        tensors, record = read_export(Path("m.export"))   # record["model"], record["plugins"]
    """
    if not path.is_file():
        raise FileNotFoundError(f"no export at {path}: pass the path learn.export() wrote.")
    with open(path, "rb") as file:
        head = file.read(2)
    if head == b"PK":
        raise ExportError(
            f"{path} is a torch.save file (weights or a checkpoint), not an export: load weights "
            "with learn.load(path) into a Learner you build, or export with learn.export(path)."
        )
    try:
        tensors, meta = read_safetensors(path)
    except WeightsError as error:
        raise ExportError(str(error).replace("weights file", "export", 1)) from error
    text = meta.get(RECORD)
    if meta.get("format") != FORMAT or text is None:
        raise ExportError(
            f"{path} is a safetensors file of format {meta.get('format')!r}, not an export: "
            "load weights with learn.load(path), or export with learn.export(path)."
        )
    if meta.get(RECORD_DIGEST) != _digest(text):
        raise ExportError(
            f"export {path} is damaged: its record does not match the digest written with it. "
            "Export the model again, or load another copy."
        )
    record = json.loads(text)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ExportError(f"export {path} is damaged: its record is not an export's.")
    if record.get("version") != VERSION:
        raise ExportError(
            f"export {path} has version {record.get('version')!r}; this pluglearn reads version "
            f"{VERSION}: load it with the pluglearn that wrote it, or export again."
        )
    lacking = [k for k in ("model", "plugins", "loss_func") if k not in record]
    dtypes = [record.get("dtype"), record.get("default_dtype")]
    if not record.get("pickled") and (
        lacking or not all(d is None or dtype_named(d) is not None for d in dtypes)
    ):
        raise ExportError(f"export {path} is damaged: its record lacks {lacking or 'its dtypes'}.")
    return tensors, record


def dtype_named(name: Any) -> torch.dtype | None:
    """The torch dtype called ``name`` (``"float32"``), or None.

    >>> dtype_named("bfloat16"), dtype_named("save")
    (torch.bfloat16, None)
    """
    found = getattr(torch, name, None) if isinstance(name, str) else None
    return found if isinstance(found, torch.dtype) else None


def pickled(parts: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``parts`` pickled (``torch.save``) into the one tensor of a pickled export.

    Example::

        write_export(pickled({"model": model, "plugins": [], "loss_func": None}), record, path)
    """
    buffer = io.BytesIO()
    try:
        torch.save(parts, buffer)
    except Exception as error:
        raise ExportError(
            f"cannot pickle the model, its predict plugins or its loss function ({error}): "
            "define them in a module (not in a function or as a lambda)."
        ) from error
    return {PICKLE: torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)}


def unpickle(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The parts a pickled export holds. Runs code the file names: only with ``unsafe=True``.

    Example::

        parts = unpickle(path, tensors)    # {"model": ..., "plugins": [...], "loss_func": ...}
    """
    if set(tensors) != {PICKLE}:
        raise ExportError(f"export {path} is damaged (a pickled export without its pickle).")
    data = tensors[PICKLE].numpy().tobytes()
    try:
        parts = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as error:
        raise ExportError(
            f"export {path} was pickled with a class this process cannot find ({error}): import "
            "or define the model's classes as they were when it was exported, then load again."
        ) from error
    if not isinstance(parts, dict) or not {"model", "plugins", "loss_func"} <= parts.keys():
        raise ExportError(f"export {path} is damaged (its pickle is not a pluglearn export).")
    return parts
