"""The IDX reader: ``max_bytes`` at its exact edge, large header dimensions, truncated and
overlong files, wrong magic numbers; the sets that may be asked for, in canonical order, a labels
file with the images' magic, image files of another shape, bad labels named with their folder.

Oracles: IDX files written byte by byte here, and the messages as documented, in full."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pluglearn.data.idx import check_sets, read_idx, read_idx_sets
from pluglearn.data.mnist_format import (
    DataFormatError,
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
