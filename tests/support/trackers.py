"""Plugins and a Learner shared by the experiment-tracker tests (MLflow, W&B)."""

from __future__ import annotations

import torch
from torch import nn

from pluglearn import DataLoaders, Learner, hookimpl


class Keep:
    def __init__(self) -> None:
        self.epochs: list[dict] = []

    @hookimpl
    def report(self, metrics):
        self.epochs.append(dict(metrics))


class Decay:
    """Halves the lr after every optimizer step, so each batch trains with its own lr."""

    @hookimpl
    def after_step(self, learn):
        for group in learn.opt.param_groups:
            group["lr"] /= 2


class FailIn:
    """Raises ``error`` at the end of the validation pass of ``epoch``."""

    def __init__(self, epoch: int, error: BaseException) -> None:
        self.epoch, self.error = epoch, error

    @hookimpl
    def after_validate(self, learn):
        if learn.epoch == self.epoch:
            raise self.error


# Not the shared make_learner: 3-feature data, and jobs import it too.
def make_learner(plugins) -> Learner:
    """16 training items in 4 shuffled batches of 4, one validation batch."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, generator=g), torch.randint(0, 3, (20,), generator=g)
    dls = DataLoaders.from_datasets((x[:16], y[:16]), (x[16:], y[16:]), batch_size=4, seed=0)
    torch.manual_seed(0)
    return Learner(nn.Linear(3, 3), dls, lr=0.4, plugins=plugins, defaults=False)
