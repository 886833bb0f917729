"""Tests for pluglearn.data.digits: shapes, ranges, split sizes, determinism, true labels."""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest
import torch

from pluglearn.data.digits import DigitsSplits, load_digits
from tests.helpers import needs

pytestmark = needs("sklearn", "scikit-learn (load_digits reads its copy)")


def test_shapes_dtypes_ranges_and_sizes():
    splits = load_digits()
    assert isinstance(splits, DigitsSplits)
    (tx, ty), (vx, vy) = splits
    assert tx.shape == (1438, 64) and vx.shape == (359, 64)  # 1797 images, 20% rounded
    assert ty.shape == (1438,) and vy.shape == (359,)
    assert tx.dtype == vx.dtype == torch.float32 and ty.dtype == vy.dtype == torch.int64
    x = torch.cat([tx, vx])
    assert x.min() == 0 and x.max() == 1
    assert set(torch.cat([ty, vy]).tolist()) == set(range(10))


def test_split_is_deterministic_per_seed():
    a, b, c = load_digits(seed=3), load_digits(seed=3), load_digits(seed=4)
    for (ax, ay), (bx, by) in zip(a, b, strict=True):
        assert torch.equal(ax, bx) and torch.equal(ay, by)
    assert not torch.equal(a.train[0], c.train[0])


@pytest.mark.parametrize(("fraction", "n_valid"), [(0.5, 898), (0.0001, 1), (0.9999, 1796)])
def test_valid_fraction_sets_the_split_size(fraction, n_valid):
    splits = load_digits(valid_fraction=fraction)
    assert len(splits.valid[1]) == n_valid and len(splits.train[1]) == 1797 - n_valid


def test_images_and_labels_are_sklearns():
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()

    def pairs(x: np.ndarray, y: np.ndarray) -> Counter:
        return Counter((row.tobytes(), int(label)) for row, label in zip(x, y, strict=True))

    splits = load_digits(seed=1)
    x = torch.cat([splits.train[0], splits.valid[0]]).numpy() * 16
    y = torch.cat([splits.train[1], splits.valid[1]]).numpy()
    assert pairs(np.rint(x).astype(np.uint8), y) == pairs(bunch.data.astype(np.uint8), bunch.target)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"valid_fraction": 0}, "valid_fraction must be a number in \\(0, 1\\)"),
        ({"valid_fraction": 1.5}, "valid_fraction"),
        ({"valid_fraction": "0.2"}, "valid_fraction"),
        ({"seed": -1}, "seed must be a non-negative int"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_digits(**kwargs)


def test_missing_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()
