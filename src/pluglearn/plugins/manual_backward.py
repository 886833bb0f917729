"""ManualBackward: train on the hand-written gradients of scratch modules instead of autograd.

It answers the ``backward`` step (so the default ``loss.backward()`` never runs): it calls the
scratch loss module's ``backward()`` (which seeds dL/dL = 1) and then the model's, and hands the
gradients to whichever optimizer is used:

* ``.g`` holds this batch's manual gradient: :class:`pluglearn.scratch.optim.SGD` (its default
  ``grad_attr="g"``) reads it;
* ``.grad`` receives it the way autograd would: set when it is ``None``, *added* otherwise, so
  ``torch.optim`` optimizers, scratch ``SGD(grad_attr="grad")``, gradient clipping in
  ``after_backward`` and gradient accumulation (skipping ``zero_grad``) behave as with autograd.

Autograd is not needed: parameters may keep ``requires_grad=False`` (no graph is built, which is
cheaper). Pair it with :class:`~pluglearn.plugins.gradcheck.GradCheck` (which does need
``model.requires_grad_(True)``) to check the gradients it trains on.

Example::

    model = Sequential(Linear(64, 50), Relu(), Linear(50, 10))  # from pluglearn.scratch
    learn = Learner(model, dls, loss_func=CrossEntropy(), plugins=[ManualBackward()])
    learn.fit(1)                             # torch.optim.SGD steps on the manual gradients
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..hooks.markers import hookimpl
from ..scratch.modules import Module

if TYPE_CHECKING:
    from ..learner import Learner

__all__ = ["ManualBackward"]


def _scratch_parts(learn: Learner) -> tuple[Module, Module]:
    """``learn.model`` and ``learn.loss_func``, each a scratch Module with a bwd, or an error."""
    parts = []
    for what, obj, example in (
        ("model", learn.model, "Sequential(Linear(64, 50), ReLU(), Linear(50, 10))"),
        ("loss_func", learn.loss_func, "CrossEntropy() or MSE()"),
    ):
        if not isinstance(obj, Module):
            raise TypeError(
                f"ManualBackward needs the {what} to be a pluglearn.scratch Module with a bwd, "
                f"got {type(obj).__name__}: use e.g. {example} from "
                "pluglearn.scratch.modules, or drop ManualBackward to train with autograd."
            )
        parts.append(obj)
    return parts[0], parts[1]


class ManualBackward:
    """Answers ``backward`` with ``loss_func.backward(); model.backward()``, then copies each
    parameter's ``.g`` into ``.grad`` (accumulating like autograd)."""

    @hookimpl
    def before_fit(self, learn: Learner) -> None:
        _scratch_parts(learn)

    @hookimpl
    def backward(self, learn: Learner) -> bool:
        model, loss_func = _scratch_parts(learn)
        # the chain only holds if learn.loss is the loss module's last output, fed by the model
        if loss_func.__dict__.get("out") is not learn.loss:
            raise RuntimeError(
                "ManualBackward: learn.loss is not the last output of learn.loss_func (a plugin "
                "replaced it?): the manual backward can only start from the scratch loss module."
            )
        if loss_func.args[0] is not model.__dict__.get("out"):
            raise RuntimeError(
                "ManualBackward: the loss was not computed on the model's output (a plugin "
                "replaced learn.preds?): the manual backward needs loss_func(model(xb), yb)."
            )
        params = list(model.named_parameters())
        for _, p in params:
            p.g = None  # a parameter its bwd forgets must not keep last batch's gradient
        loss_func.backward()
        model.backward()
        for name, p in params:
            g = getattr(p, "g", None)
            if g is None:
                raise RuntimeError(
                    f"ManualBackward: parameter {name!r} has no .g after model.backward(): the "
                    "bwd of the module that owns it must assign .g on each of its parameters."
                )
            if g.shape != p.shape:
                raise RuntimeError(
                    f"ManualBackward: parameter {name!r} has shape {tuple(p.shape)} but its .g has "
                    f"shape {tuple(g.shape)}: its module's bwd must give one gradient per entry."
                )
            if p.grad is None:
                p.grad = g.detach().clone()  # own memory: .g stays this batch's gradient
            else:
                p.grad += g  # autograd accumulates into .grad until zero_grad
        return True
