"""GradNorm: the gradient norm of every training batch, and its mean per epoch as a metric.

Published through the entry point ``grad_norm`` of the group ``pluglearn`` (see pyproject.toml),
so an installed copy joins every Learner. Used by hand::

    from pluglearn_gradnorm import GradNorm
    learn = Learner(model, dls, plugins=[GradNorm()])
    learn.fit(3)
    learn.metrics["grad_norm"], learn.plugin("GradNorm").norms
"""

from __future__ import annotations

import torch

from pluglearn import hookimpl

__all__ = ["GradNorm"]


class GradNorm:
    """Keeps ``norms`` (one float per training batch) and reports ``grad_norm`` per epoch."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self._epoch: list[torch.Tensor] = []

    @hookimpl
    def before_train(self) -> None:
        self._epoch = []

    @hookimpl
    def after_backward(self, learn) -> None:
        grads = [p.grad.detach() for p in learn.model.parameters() if p.grad is not None]
        if grads:  # one norm of all gradients, without a device sync per parameter
            self._epoch.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    @hookimpl
    def collect_metrics(self, phase: str) -> dict[str, float] | None:
        if phase != "train" or not self._epoch:
            return None
        norms = torch.stack(self._epoch).tolist()  # one sync per epoch
        self.norms.extend(norms)
        return {"grad_norm": sum(norms) / len(norms)}
