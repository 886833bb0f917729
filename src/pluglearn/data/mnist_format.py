"""The MNIST format both readers produce: :class:`MnistSplits`, checked and made into tensors.

:mod:`pluglearn.data.safe_pickle` and :mod:`pluglearn.data.idx` decode their files to numpy
arrays; :func:`make_splits` checks the arrays (shapes, dtypes, ranges) and turns them into torch
tensors, raising :class:`DataFormatError` for anything that is not MNIST. Either file may be
gzip'd: :func:`open_maybe_gzip` opens both kinds.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch

__all__ = ["DataFormatError", "MnistSplits", "Pair", "Source", "make_splits", "open_maybe_gzip"]

Pair = tuple[torch.Tensor, torch.Tensor]
Source = str | os.PathLike[str]


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
