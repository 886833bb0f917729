"""IDX files, as MNIST is published: a reader, and the MNIST layout of the ``train``/``t10k`` sets.

The files are ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``: a big-endian header (magic
number, then one size per dimension) and unsigned bytes. :func:`read_idx` reads the header first
and then at most the bytes it promises (+1, to see excess), so a small gzip'd file that
decompresses to gigabytes is refused without reading it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .download import verify
from .mnist_format import (
    DataFormatError,
    MnistSplits,
    Source,
    byte_limit,
    make_splits,
    open_maybe_gzip,
    read_at_most,
)

__all__ = [
    "IDX_SETS",
    "IMAGES_MAGIC",
    "LABELS_MAGIC",
    "check_sets",
    "find_idx",
    "idx_names",
    "read_idx",
    "read_idx_sets",
]

IDX_SETS = ("train", "t10k")
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


def read_idx(path: Source, magic: int | None = None, max_bytes: int | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip'd or not) as a uint8 array shaped by its header.

    ``magic`` (2051 images, 2049 labels) is checked when given. ``max_bytes`` bounds the size a
    header may promise (None: :data:`~pluglearn.data.mnist_format.MAX_DECOMPRESSED_BYTES`);
    no more than the promised bytes + 1 are ever read.
    """
    path, limit = Path(path), byte_limit(max_bytes)
    try:
        with open_maybe_gzip(path) as f:
            found = _check_magic(path, read_at_most(f, 4), magic)
            ndim = found & 0xFF
            raw_dims = read_at_most(f, 4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataFormatError(f"{path}: truncated IDX header; download the file again")
            dims = tuple(int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            if (size := math.prod(dims)) > limit:
                raise DataFormatError(
                    f"{path}: header promises {dims} = {size} bytes, more than max_bytes="
                    f"{limit}: the file is corrupt or crafted. Pass a larger max_bytes= to "
                    "read_idx if it is genuine."
                )
            data = read_at_most(f, size + 1)
    except (EOFError, OSError, zlib.error) as error:
        raise DataFormatError(f"{path} could not be read or decompressed ({error!r})") from error
    if len(data) != size:
        got = f"{len(data)}" if len(data) < size else "more"
        raise DataFormatError(
            f"{path}: header promises {dims} = {size} bytes but the file has {got}: truncated "
            "or corrupt; download it again"
        )
    return np.frombuffer(data, np.uint8).reshape(dims)


def _check_magic(path: Path, head: bytes | bytearray, magic: int | None) -> int:
    """The magic number in ``head`` (the file's first 4 bytes), or an error naming it."""
    found = int.from_bytes(head, "big") if len(head) == 4 else None
    if found is None or (magic is not None and found != magic) or found >> 8 != 0x08:
        want = (
            f"{magic} ({'images' if magic == IMAGES_MAGIC else 'labels'})"
            if magic
            else "0x08nn (unsigned bytes)"
        )
        raise DataFormatError(
            f"{path}: IDX magic number is {found}, expected {want}; is this the"
            f" right file, and is it complete?"
        )
    return found


def find_idx(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or else ``folder/stem.gz``, whichever is a file; None if neither."""
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def idx_names(sets: Sequence[str]) -> list[str]:
    """The gzip'd file names of ``sets`` (images, then labels), as downloaded."""
    return [f"{s}-{k}-ubyte.gz" for s in sets for k in ("images-idx3", "labels-idx1")]


def check_sets(sets: Sequence[str]) -> tuple[str, ...]:
    """``sets`` in canonical order; it must be ``("t10k",)`` or ``("train", "t10k")``."""
    if isinstance(sets, str) or "t10k" not in sets or not set(sets) <= set(IDX_SETS):
        raise ValueError(f"idx_sets must be ('t10k',) or ('train', 't10k'), got {sets!r}")
    return tuple(s for s in IDX_SETS if s in sets)


def read_idx_sets(folder: Path, sets: Sequence[str], md5s: Mapping[str, str]) -> MnistSplits:
    """Read (md5-checking) the IDX files of ``sets`` in ``folder`` and split them as
    :func:`~pluglearn.data.mnist.load_mnist` describes."""
    pairs, used = {}, set()
    for s in sets:
        found = [find_idx(folder, f"{s}-{k}-ubyte") for k in ("images-idx3", "labels-idx1")]
        paths = [p for p in found if p is not None]
        if len(paths) != len(found):
            raise FileNotFoundError(
                f"{folder} lacks {s}-images-idx3-ubyte[.gz] or"
                f" {s}-labels-idx1-ubyte[.gz]; put both IDX files there"
            )
        for p in paths:
            verify(p, md5s.get(p.name))
            used.add(p.name)
        images, labels = read_idx(paths[0], IMAGES_MAGIC), read_idx(paths[1], LABELS_MAGIC)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise DataFormatError(
                f"{folder}: {s} images {images.shape} and labels {labels.shape}"
                f" do not make n 28x28 images with n labels"
            )
        pairs[s] = (images.reshape(len(images), 784).astype(np.float32) / 255, labels)
    if unknown := set(md5s) - used:
        raise ValueError(f"md5 names files that were not read: {sorted(unknown)}; check spelling")
    x, y = pairs["t10k"]
    if "train" in pairs:
        tx, ty = pairs["train"]
        cut = len(tx) - len(tx) // 6
        parts = [(tx[:cut], ty[:cut]), (tx[cut:], ty[cut:]), (x, y)]
    else:
        a, b = len(x) - 2 * (len(x) // 10), len(x) - len(x) // 10
        parts = [(x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:])]
    return make_splits(parts, folder)
