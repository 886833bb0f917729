"""Scratch models and a Learner on batches of the test's own, shared by the GradCheck tests."""

from __future__ import annotations

import torch

from pluglearn import DataLoaders, Learner
from pluglearn.scratch import Linear, Parameter
from tests.helpers import batches, tiny_data


# Not the shared make_learner: the model's data given by the test.
def learner_on(model, plugins, loss_func, x=None, y=None, bs: int = 4) -> Learner:
    if x is None:
        x, y = tiny_data(12)
    n = len(x) - bs
    dls = DataLoaders(batches(x[:n], y[:n], bs), batches(x[n:], y[n:], bs))
    return Learner(model, dls, loss_func=loss_func, lr=0.1, plugins=plugins, defaults=False)


def seeded_generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


class Spare(Linear):
    """A Linear with a parameter that the loss does not depend on (its gradient is zero)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spare = Parameter(torch.ones(2))

    def bwd(self, out, x):
        super().bwd(out, x)
        self.spare.g = torch.zeros_like(self.spare)
