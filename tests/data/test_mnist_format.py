"""MNIST's in-memory format and its byte limits: make_splits (exactly three pairs, float32 and
int64 out, read-only arrays copied, bad x and labels described by dtype and shape), and the
bounded readers (short reads gathered, a decompression bomb stopped one byte past the limit).

Oracles: hand-made arrays and streams, and the messages as documented, in full."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from pluglearn.data.mnist_format import (
    BoundedReader,
    DataFormatError,
    make_splits,
    read_at_most,
)


def _pair(n: int, dtype=np.float32, ydtype=np.int64):
    x = (np.arange(n * 784) % 256 / 255).reshape(n, 784).astype(dtype)
    return x, (np.arange(n) % 10).astype(ydtype)


def test_make_splits_needs_exactly_three_pairs():
    with pytest.raises(ValueError):
        make_splits([_pair(2)] * 4, Path("here"))
    with pytest.raises(ValueError):
        make_splits([_pair(2)] * 2, Path("here"))


def test_splits_come_out_float32_and_int64_whatever_went_in():
    parts = [_pair(3, np.float64, np.uint8), _pair(2, np.float16, np.int32), _pair(1)]
    splits = make_splits(parts, Path("here"))
    for (x, y), (px, py) in zip(splits, parts, strict=True):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, torch.from_numpy(px.astype(np.float32)))
        assert torch.equal(y, torch.from_numpy(py.astype(np.int64)))


def test_read_only_arrays_are_copied_into_memory_the_tensor_owns():
    x, y = _pair(3)
    x, y = (np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape) for a in (x, y))
    assert not x.flags.writeable
    (tx, ty), *_ = make_splits([(x, y), _pair(1), _pair(1)], Path("here"))
    assert tx.untyped_storage().data_ptr() != x.ctypes.data
    assert ty.untyped_storage().data_ptr() != y.ctypes.data
    tx += 1  # writable memory of its own
    assert float(x.max()) <= 1.0


X_MUST = "x must be a float array shaped (n, 784), got"


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (np.zeros((2, 784), np.uint8), f"{X_MUST} uint8 (2, 784)"),
        (np.zeros((2, 783), np.float32), f"{X_MUST} float32 (2, 783)"),
        ([[0.0] * 784], f"{X_MUST} <class 'list'> "),
    ],
)
def test_a_bad_x_is_described_by_its_dtype_and_shape(x, expected):
    with pytest.raises(DataFormatError) as info:
        make_splits([(x, np.zeros(2, np.int64)), _pair(1), _pair(1)], Path("here"))
    assert str(info.value) == f"here train: {expected}"


@pytest.mark.parametrize(
    ("y", "expected"),
    [
        (np.zeros(2, np.float32), "y must be 2 integer labels, got float32 (2,)"),
        (np.zeros(3, np.int64), "y must be 2 integer labels, got int64 (3,)"),
        ([0, 1], "y must be 2 integer labels, got <class 'list'> "),
    ],
)
def test_bad_labels_are_described_by_their_dtype_and_shape(y, expected):
    x, _ = _pair(2)
    with pytest.raises(DataFormatError) as info:
        make_splits([_pair(1), (x, y), _pair(1)], Path("here"))
    assert str(info.value) == f"here valid: {expected}"


class Dribble(io.RawIOBase):
    """A stream that hands out at most 3 bytes per read, as a pipe or socket may."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(3, len(buffer), len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_read_at_most_gathers_short_reads_and_never_passes_n():
    data = bytes(range(100))
    assert read_at_most(Dribble(data), 10) == data[:10]
    assert read_at_most(Dribble(data[:7]), 10) == data[:7]
    assert read_at_most(io.BytesIO(data), 0) == b""


def _bounded(n: int = 100, limit: int = 10) -> tuple[io.BytesIO, BoundedReader]:
    raw = io.BytesIO(bytes(range(n)))
    return raw, BoundedReader(raw, limit, Path("bomb.pkl"))


BOMB = (
    "bomb.pkl decompresses to more than 10 bytes (max_bytes), more than an MNIST file holds: it "
    "is corrupt or crafted (a decompression bomb), so it was not read further. Use a trusted "
    "file, or pass a larger max_bytes= if this one is genuine."
)


@pytest.mark.parametrize("size", [-1, None])
def test_read_all_stops_one_byte_past_the_limit(size):
    raw, reader = _bounded()
    assert reader.read(4) == bytes(range(4))
    with pytest.raises(DataFormatError) as info:
        reader.read(size)
    assert str(info.value) == BOMB
    assert raw.tell() == 11  # limit + 1: enough to know there is more, no further


def test_read_gives_what_is_asked_up_to_the_limit():
    raw, reader = _bounded()
    assert reader.read(0) == b""
    assert reader.read(4) == bytes(range(4))
    assert reader.read(6) == bytes(range(4, 10))  # exactly the limit: still fine
    assert raw.tell() == 10
    with pytest.raises(DataFormatError):
        reader.read(1)


def test_readline_is_bounded_by_its_size_and_by_the_limit():
    raw = io.BytesIO(b"ab\n" + b"x" * 100)
    reader = BoundedReader(raw, 10, Path("bomb.pkl"))
    assert reader.readline(2) == b"ab"
    assert reader.readline() == b"\n"
    with pytest.raises(DataFormatError, match="decompresses to more than 10 bytes"):
        reader.readline()  # one long line: read to limit + 1, not to its end
    assert raw.tell() == 11


def test_readinto_fills_the_buffer_up_to_the_limit():
    raw, reader = _bounded()
    buffer = bytearray(4)
    assert reader.readinto(buffer) == 4 and buffer == bytes(range(4))
    big = bytearray(50)
    with pytest.raises(DataFormatError):
        reader.readinto(big)
    assert raw.tell() == 11
