"""IDX and MNIST-format checks that mutation testing found unchecked (``benchmarks/mutation.py
--module data/idx.py --module data/mnist_format.py``): ``max_bytes`` at its exact edge, large
header dimensions, the exact messages, which sets may be asked for, a labels file with the images'
magic, image files of the wrong shape, the dtypes the splits come out in, and the byte limits of
:class:`BoundedReader` and :func:`read_at_most` read by read (``tell()`` says what was read).

Oracles: IDX files written here byte by byte from the published layout, and messages written out
in full.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from pluglearn.data.idx import check_sets, read_idx, read_idx_sets
from pluglearn.data.mnist_format import (
    BoundedReader,
    DataFormatError,
    make_splits,
    read_at_most,
)


def _idx(path: Path, magic: int, dims: tuple[int, ...], data: bytes) -> Path:
    """An IDX file: the magic, each dimension as 4 big-endian bytes, then ``data``."""
    path.write_bytes(magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + data)
    return path


def _set(folder: Path, n: int, image_dims=None, label_magic: int = 2049, labels=None) -> None:
    dims = image_dims or (n, 28, 28)
    _idx(folder / "t10k-images-idx3-ubyte", 0x0800 + len(dims), dims, bytes(int(np.prod(dims))))
    y = bytes(labels if labels is not None else [i % 10 for i in range(n)])
    ldims = (n,) if label_magic == 2049 else (n, 1, 1)
    _idx(folder / "t10k-labels-idx1-ubyte", label_magic, ldims, y)


# ----------------------------------------------------------------------------------- read_idx


def test_max_bytes_admits_exactly_the_promised_size_and_refuses_one_byte_less(tmp_path):
    path = _idx(tmp_path / "f", 0x0803, (10, 28, 28), bytes(range(256)) * 30 + bytes(160))
    assert read_idx(path, max_bytes=7840).shape == (10, 28, 28)
    with pytest.raises(DataFormatError) as info:
        read_idx(path, max_bytes=7839)
    assert str(info.value) == (
        f"{path}: header promises (10, 28, 28) = 7840 bytes, more than max_bytes=7839: the file "
        "is corrupt or crafted. Pass a larger max_bytes= to read_idx if it is genuine."
    )


def test_the_smallest_max_bytes_is_one(tmp_path):
    path = _idx(tmp_path / "one", 0x0801, (1,), b"\x07")
    assert read_idx(path, max_bytes=1).tolist() == [7]
    with pytest.raises(ValueError, match=r"max_bytes must be a positive int \(or None\), got 0"):
        read_idx(path, max_bytes=0)


def test_dimensions_use_all_four_bytes_of_the_header(tmp_path):
    """A dimension of 70,000 (above 2**16) is read whole, as is each of several dimensions."""
    data = bytes(i % 251 for i in range(70000))
    got = read_idx(_idx(tmp_path / "f", 0x0803, (1, 1, 70000), data))
    assert got.shape == (1, 1, 70000) and got.tobytes() == data
    got = read_idx(_idx(tmp_path / "g", 0x0802, (70000, 1), data))
    assert got.shape == (70000, 1)


def test_truncated_and_overlong_files_say_how_many_bytes_they_have(tmp_path):
    short = _idx(tmp_path / "short", 0x0801, (10,), bytes(5))
    with pytest.raises(DataFormatError) as info:
        read_idx(short)
    assert str(info.value) == (
        f"{short}: header promises (10,) = 10 bytes but the file has 5: truncated or corrupt; "
        "download it again"
    )
    long = _idx(tmp_path / "long", 0x0801, (10,), bytes(12))
    with pytest.raises(DataFormatError, match=r"= 10 bytes but the file has more: truncated"):
        read_idx(long)


@pytest.mark.parametrize(
    ("head", "magic", "expected"),
    [
        (b"", None, "IDX magic number is None, expected 0x08nn (unsigned bytes)"),
        (b"\x00\x00\x08", None, "IDX magic number is None, expected 0x08nn (unsigned bytes)"),
        ((0x0D03).to_bytes(4, "big"), None, "IDX magic number is 3331, expected 0x08nn (unsigned"),
        ((2051).to_bytes(4, "big"), 2049, "IDX magic number is 2051, expected 2049 (labels)"),
        ((2049).to_bytes(4, "big"), 2051, "IDX magic number is 2049, expected 2051 (images)"),
    ],
)
def test_a_wrong_magic_number_is_named_with_the_path(tmp_path, head, magic, expected):
    path = tmp_path / "f"
    path.write_bytes(head)
    with pytest.raises(DataFormatError) as info:
        read_idx(path, magic)
    assert str(info.value).startswith(f"{path}: {expected}")
    assert str(info.value).endswith("; is this the right file, and is it complete?")


# ------------------------------------------------------------------------------ read_idx_sets


@pytest.mark.parametrize("sets", [("train",), ("t10k", "valid"), "t10k", ()])
def test_only_t10k_or_train_and_t10k_may_be_asked_for(sets):
    with pytest.raises(ValueError, match=r"idx_sets must be \('t10k',\) or \('train', 't10k'\)"):
        check_sets(sets)


def test_sets_come_back_in_canonical_order():
    assert check_sets(["t10k", "train"]) == ("train", "t10k")
    assert check_sets(("t10k",)) == ("t10k",)


def test_a_labels_file_with_the_images_magic_is_refused(tmp_path):
    _set(tmp_path, 10, label_magic=2051)
    with pytest.raises(DataFormatError, match=r"magic number is 2051, expected 2049 \(labels\)"):
        read_idx_sets(tmp_path, ("t10k",), {})


@pytest.mark.parametrize("dims", [(10, 28, 27), (10, 4, 196)])  # (10, 784): magic refuses it
def test_images_that_are_not_n_28x28_are_refused(tmp_path, dims):
    _set(tmp_path, 10, image_dims=dims)
    with pytest.raises(DataFormatError) as info:
        read_idx_sets(tmp_path, ("t10k",), {})
    assert str(info.value) == (
        f"{tmp_path}: t10k images {dims} and labels (10,) do not make n 28x28 images with n labels"
    )


def test_a_bad_label_names_the_folder_and_the_split(tmp_path):
    _set(tmp_path, 10, labels=[0, 1, 2, 3, 4, 5, 6, 7, 8, 10])  # the last one is in "test"
    with pytest.raises(DataFormatError) as info:
        read_idx_sets(tmp_path, ("t10k",), {})
    assert str(info.value) == f"{tmp_path} test: labels must lie in 0..9"


# ---------------------------------------------------------------------------- make_splits


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


# ------------------------------------------------------------------------------- byte limits


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
