"""scikit-learn's bundled 8x8 digits (1,797 images) as a seeded train / valid split of tensors.

The data ships inside scikit-learn, so this loader never touches the network: a small, real
data set for examples and tests. scikit-learn is imported only when it is called.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["DigitsSplits", "load_digits"]

Pair = tuple[torch.Tensor, torch.Tensor]


class DigitsSplits(NamedTuple):
    """Two ``(x, y)`` pairs: x float32 (n, 64) in [0, 1], y int64 in 0..9."""

    train: Pair
    valid: Pair


def load_digits(valid_fraction: float = 0.2, seed: int = 0) -> DigitsSplits:
    """Load the 8x8 digits, pixels scaled from 0..16 to [0, 1], split at random by ``seed``.

    Args:
        valid_fraction: share of the images in the validation split, in (0, 1); the count is
            rounded and at least one image lands in each split.
        seed: a non-negative int; the same seed always gives the same split.
    """
    is_number = isinstance(valid_fraction, int | float) and not isinstance(valid_fraction, bool)
    if not (is_number and 0 < valid_fraction < 1):
        raise ValueError(f"valid_fraction must be a number in (0, 1), got {valid_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as error:
        raise ImportError(
            "load_digits needs scikit-learn, which bundles the data: pip install scikit-learn"
        ) from error
    bunch = sklearn_load_digits()
    x = torch.from_numpy((bunch.data / 16).astype(np.float32))
    y = torch.from_numpy(bunch.target.astype(np.int64))
    n = len(y)
    n_valid = min(max(round(n * valid_fraction), 1), n - 1)
    # numpy's seeded Generator gives the same permutation on every platform and torch version.
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    train, valid = order[n_valid:], order[:n_valid]
    return DigitsSplits((x[train], y[train]), (x[valid], y[valid]))
