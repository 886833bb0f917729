"""The float64 data, model and checks the GradientAccumulation tests share."""

from __future__ import annotations

import torch
from torch import nn

from pluglearn import Learner
from tests.helpers import tiny_data

DT = torch.float64


def data(n: int, seed: int = 0):
    x, y = tiny_data(n, seed=seed)
    return x.to(DT), y


def split(x, y, sizes):
    out, at = [], 0
    for s in sizes:
        out.append((x[at : at + s], y[at : at + s]))
        at += s
    assert at == len(x)
    return out


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)


def sized_batches(sizes, seed=0):
    x, y = tiny_data(sum(sizes), seed=seed)
    x, out, at = x.to(DT), [], 0
    for s in sizes:
        out.append((x[at : at + s], y[at : at + s]))
        at += s
    return out


def assert_same_weights(a: Learner, b: Learner) -> None:
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-15)
