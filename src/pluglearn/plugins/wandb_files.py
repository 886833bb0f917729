"""Reading a W&B run from its files on this machine: the ``.wandb`` transaction log.

Every W&B run, online or offline, writes what it logs to ``run-<id>.wandb`` in its run directory
(``<dir>/wandb/offline-run-<time>-<id>/`` offline). ``WandbLogger`` reads the logs of a run's
earlier attempts when it resumes the run, to log no step twice; tests read them back. Example::

    for path in run_logs("runs/wandb", "1a2b3c4d"):     # the attempts of run 1a2b3c4d, oldest first
        for row in history(path):
            row["_step"], row.get("train/loss")

The file: a 7-byte header (``:W&B``, the magic 0xBEE1 little-endian, version 0), then LevelDB's
log format: 32 KiB blocks of chunks, each a CRC-32 (zlib's, of the chunk's type byte and data),
a 2-byte length, a type byte (1 full, 2 first, 3 middle, 4 last) and the data; a block's last
bytes that cannot hold a chunk header are zeros. A record is one ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """A ``.wandb`` file that is not a W&B transaction log, or is damaged."""


def records(path: str | Path) -> Iterator[Any]:
    """Every record of the transaction log at ``path`` (``wandb_internal_pb2.Record``), in order.
    A chunk cut off by a killed process ends the log quietly; a bad checksum is an error."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[: len(HEADER)] != HEADER:
        raise WandbFileError(f"{path} is not a W&B transaction log (its header is {data[:7]!r}).")
    pos, parts = len(HEADER), b""
    while pos + CHUNK_HEADER.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER.size:  # the block's zero padding
            pos += left
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        if (crc, length, kind) == (0, 0, 0):  # zeros to the block's end
            pos += left
            continue
        start = pos + CHUNK_HEADER.size
        chunk = data[start : start + length]
        if len(chunk) < length:
            return  # the writer was killed mid-chunk
        if zlib.crc32(bytes([kind]) + chunk) != crc:
            raise WandbFileError(f"{path}: bad checksum in the chunk at byte {pos}.")
        pos = start + length
        parts = chunk if kind in (FULL, FIRST) else parts + chunk
        if kind in (FULL, LAST):
            # the ignore: wandb_internal_pb2 re-exports its protobuf-version's module with a
            # star import chosen at run time, so a type checker sees none of its names
            record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
            record.ParseFromString(parts)
            yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def history(path: str | Path) -> list[dict[str, Any]]:
    """The history rows of the log at ``path``: one dict per row, ``_step`` included."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({_key(i): json.loads(i.value_json) for i in record.history.item})
    return rows


def summary(path: str | Path) -> dict[str, Any]:
    """The run summary as the log at ``path`` leaves it (later updates win)."""
    out: dict[str, Any] = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                out[_key(item)] = json.loads(item.value_json)
            for item in record.summary.remove:
                out.pop(_key(item), None)
    return out


def config(path: str | Path) -> dict[str, Any]:
    """The run config the log at ``path`` records (at the run's start and later updates)."""
    out: dict[str, Any] = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else ()
        if kind == "config":
            updates = record.config.update
        for item in updates:
            out[_key(item)] = json.loads(item.value_json)
    return out


def exit_code(path: str | Path) -> int | None:
    """The exit code the run was finished with (``run.finish(exit_code=...)``), or None."""
    code = None
    for record in records(path):
        if record.WhichOneof("record_type") == "exit":
            code = record.exit.exit_code
    return code


def run_logs(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """The transaction logs of run ``run_id`` under ``wandb_dir`` (the folder holding the run
    directories, or the one above it), oldest first: a resumed offline run writes one per
    attempt."""
    root = Path(wandb_dir)
    if (root / "wandb").is_dir():
        root = root / "wandb"
    if not root.is_dir():
        return []
    # latest-run is a link to one of them
    found = [d / f"run-{run_id}.wandb" for d in root.iterdir() if d.is_dir() and not d.is_symlink()]
    return sorted((p for p in found if p.is_file()), key=lambda p: (p.stat().st_mtime_ns, p))
