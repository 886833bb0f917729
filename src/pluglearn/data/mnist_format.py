"""The MNIST format both readers produce: :class:`MnistSplits`, checked and made into tensors.

:mod:`pluglearn.data.safe_pickle` and :mod:`pluglearn.data.idx` decode their files to numpy
arrays; :func:`make_splits` checks the arrays (shapes, dtypes, ranges) and turns them into torch
tensors, raising :class:`DataFormatError` for anything that is not MNIST. Either file may be
gzip'd: :func:`open_maybe_gzip` opens both kinds.

A small gzip'd file can decompress to gigabytes (a decompression bomb), so readers never read a
stream whole: :func:`read_at_most` reads up to what an IDX header promises (+1 byte, to see
excess), and :class:`BoundedReader` stops a pickle at :data:`MAX_DECOMPRESSED_BYTES`.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch

__all__ = [
    "MAX_DECOMPRESSED_BYTES",
    "BoundedReader",
    "DataFormatError",
    "MnistSplits",
    "Pair",
    "Source",
    "make_splits",
    "open_maybe_gzip",
    "read_at_most",
]

Pair = tuple[torch.Tensor, torch.Tensor]
Source = str | os.PathLike[str]

#: The most bytes a file may decompress to (1 GiB; MNIST's pickle is about 220 MB, its largest
#: IDX file 47 MB). Readers take ``max_bytes=`` for a larger genuine file; None means this value,
#: read at call time, so it may also be raised here.
MAX_DECOMPRESSED_BYTES = 1 << 30
_CHUNK = 1 << 20


class DataFormatError(ValueError):
    """A file is not a valid MNIST pickle or IDX file (bad magic, truncated, wrong shapes)."""


class MnistSplits(NamedTuple):
    """Three ``(x, y)`` pairs: x float32 (n, 784) in [0, 1], y int64 in 0..9."""

    train: Pair
    valid: Pair
    test: Pair


def make_splits(parts: Sequence[object], where: Path) -> MnistSplits:
    """Check the three ``(x, y)`` array pairs read from ``where`` and make them tensors."""
    names = MnistSplits._fields
    return MnistSplits(*(_pair(p, f"{where} {n}") for p, n in zip(parts, names, strict=True)))


def _pair(split: object, what: str) -> Pair:
    if not (isinstance(split, tuple | list) and len(split) == 2):
        raise DataFormatError(f"{what}: expected an (x, y) pair")
    x, y = split
    if not (
        isinstance(x, np.ndarray)
        and x.ndim == 2
        and x.shape[1] == 784
        and np.issubdtype(x.dtype, np.floating)
    ):
        raise DataFormatError(
            f"{what}: x must be a float array shaped (n, 784), got "
            f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}"
        )
    if x.size and not (x.min() >= 0 and x.max() <= 1):
        raise DataFormatError(f"{what}: pixel values must lie in [0, 1]")
    return _tensor(x, np.float32), _labels(y, len(x), what)


def _labels(y: object, n: int, what: str) -> torch.Tensor:
    if not (isinstance(y, np.ndarray) and y.shape == (n,) and np.issubdtype(y.dtype, np.integer)):
        raise DataFormatError(
            f"{what}: y must be {n} integer labels, got "
            f"{getattr(y, 'dtype', type(y))} {getattr(y, 'shape', '')}"
        )
    if y.size and not (y.min() >= 0 and y.max() <= 9):
        raise DataFormatError(f"{what}: labels must lie in 0..9")
    return _tensor(y, np.int64)


def _tensor(a: np.ndarray, dtype: type[np.generic]) -> torch.Tensor:
    a = np.ascontiguousarray(a, dtype=dtype)
    # arrays over a pickle's or file's bytes are read-only; torch tensors must own writable memory
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def open_maybe_gzip(path: Path) -> BinaryIO:
    """Open a file, decompressing it when it starts with the gzip magic bytes."""
    with path.open("rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else path.open("rb")  # type: ignore[return-value]


def byte_limit(max_bytes: int | None) -> int:
    """``max_bytes``, or :data:`MAX_DECOMPRESSED_BYTES` for None; a positive int either way."""
    limit = MAX_DECOMPRESSED_BYTES if max_bytes is None else max_bytes
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_bytes must be a positive int (or None), got {max_bytes!r}.")
    return limit


def read_at_most(f: BinaryIO, n: int) -> bytearray:
    """Up to ``n`` bytes of ``f``, read in chunks: memory grows with what the stream really
    holds, never past ``n`` (a header's promise cannot allocate by itself)."""
    out = bytearray()
    while len(out) < n and (piece := f.read(min(_CHUNK, n - len(out)))):
        out += piece
    return out


class BoundedReader:
    """A read-only file over ``raw`` that refuses to hand out more than ``limit`` bytes: past
    it, a :class:`DataFormatError` that names ``path`` and the fix (after reading limit + 1)."""

    def __init__(self, raw: BinaryIO, limit: int, path: Path) -> None:
        self.raw, self.limit, self.path, self.count = raw, limit, path, 0

    def _room(self, size: int | None) -> int:
        room = self.limit + 1 - self.count  # one byte past the limit shows there is more
        return room if size is None or size < 0 else min(size, room)

    def _took(self, n: int) -> None:
        self.count += n
        if self.count > self.limit:
            raise DataFormatError(
                f"{self.path} decompresses to more than {self.limit} bytes (max_bytes), more "
                "than an MNIST file holds: it is corrupt or crafted (a decompression bomb), so "
                "it was not read further. Use a trusted file, or pass a larger max_bytes= if "
                "this one is genuine."
            )

    def read(self, size: int | None = -1) -> bytes:
        data = self.raw.read(self._room(size))
        self._took(len(data))
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data = self.raw.readline(self._room(size))
        self._took(len(data))
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        with memoryview(buffer) as view:
            n = self.raw.readinto(view[: self._room(len(view))])  # type: ignore[attr-defined]
        self._took(n)
        return n
