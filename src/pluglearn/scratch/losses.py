"""Losses with a hand-written backward pass: the notebook's ``Mse``, and ``CrossEntropy``.

A loss is a :class:`~pluglearn.scratch.modules.Module` whose output is 0-d, so its
``backward()`` seeds ``out.g = 1`` (dL/dL) and the backward of a whole network is
``loss_fn.backward(); model.backward()``. Targets get no ``.g``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pluglearn.scratch.functional import cross_entropy, log_softmax, mse
from pluglearn.scratch.modules import GradTensor, Module

__all__ = ["CrossEntropy", "Mse"]


class Mse(Module):
    """Mean squared error loss: ``Mse()(pred, target)`` with pred (n, 1) or (n,), target (n,)."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return mse(pred, target)  # (n, 1), (n,) -> ()

    def bwd(self, out: GradTensor, pred: GradTensor, target: Tensor) -> None:
        diff = pred.reshape(target.shape) - target  # (n, 1) -> (n,)
        pred.g = (out.g * 2.0 * diff / target.numel()).reshape(pred.shape)  # dL/dp = 2(p - t)/n


class CrossEntropy(Module):
    """Cross-entropy loss of (n, c) logits against (n,) integer class indices."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(logits, target)  # (n, c), (n,) -> ()

    def bwd(self, out: GradTensor, logits: GradTensor, target: Tensor) -> None:
        n = logits.shape[0]
        g = log_softmax(logits).exp()  # softmax: (n, c)
        g[torch.arange(n, device=g.device), target] -= 1  # softmax - one_hot(target)
        logits.g = out.g * g / n  # dL/dz = (softmax(z) - one_hot) / n: (n, c)
