"""TrainStep: the default predict / compute_loss / backward / step / zero_grad.

Registered last by every Learner, with ``trylast``, so that any plugin answering one of these
steps replaces it for that step only. Example: a plugin that accumulates gradients over two
batches answers ``step`` and ``zero_grad`` on odd batches and leaves the rest to TrainStep::

    class Accumulate2:
        @hookimpl
        def step(self, learn):
            return True if learn.iter % 2 == 0 else None   # skip the step on even batches

        @hookimpl
        def zero_grad(self, learn):
            return True if learn.iter % 2 == 0 else None
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..plugins.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


class TrainStep:
    """The default training step: ``model(xb)``, ``loss_func(preds, yb)``, autograd, ``opt``."""

    @hookimpl(trylast=True)
    def predict(self, learn: Learner) -> Any:
        return learn.model(learn.batch[0])

    @hookimpl(trylast=True)
    def compute_loss(self, learn: Learner) -> Any:
        return learn.loss_func(learn.preds, learn.batch[1])

    @hookimpl(trylast=True)
    def backward(self, learn: Learner) -> bool:
        learn.loss.backward()
        return True

    @hookimpl(trylast=True)
    def step(self, learn: Learner) -> bool:
        learn.opt.step()
        return True

    @hookimpl(trylast=True)
    def zero_grad(self, learn: Learner) -> bool:
        learn.opt.zero_grad()
        return True
