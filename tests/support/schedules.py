"""The small MLP and ready batches the scheduler and one-cycle tests train."""

from __future__ import annotations

import torch
from torch import nn

from tests.helpers import tiny_data


def mlp() -> nn.Module:
    """A 4-16-3 MLP, the same weights every call."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def train_batches(n_batches: int = 7, bs: int = 8) -> list:
    """``n_batches`` ready batches of ``bs`` items of ``tiny_data`` (seed 7)."""
    x, y = tiny_data(n_batches * bs, seed=7)
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]
