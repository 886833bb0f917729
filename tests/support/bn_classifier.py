"""A small classifier with BatchNorm and Dropout (so train and eval modes differ) on 5-feature,
2-class data: the Learner the weights and predict tests save, load and query."""

from __future__ import annotations

import torch
from torch import nn

from pluglearn import DataLoaders, Learner

X = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))


Y = (X[:, 0] > 0).long()


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))


# Not the shared make_learner: 5-feature, 2-class data of its own.
def learner(seed: int = 0, **kw) -> Learner:
    dls = DataLoaders.from_datasets((X[:32], Y[:32]), (X[32:], Y[32:]), batch_size=8)
    return Learner(make_model(seed), dls, defaults=False, **kw)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
