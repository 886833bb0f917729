"""TrainStep: the default predict / compute_loss / backward / step / zero_grad / count_items.

Registered last by every Learner, with ``trylast``, so that any plugin answering one of these
steps replaces it for that step only: ``GradientAccumulation`` answers ``step`` and
``zero_grad`` on the batches where gradients keep adding up, ``ManualBackward`` answers
``backward``.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batch_ops import count_items, targets_of
from ..diagnostics.input_checks import check_pair
from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


class TrainStep:
    """The default training step: ``model(xb)``, ``loss_func(preds, yb)``, autograd, ``opt``.

    ``predict`` takes ``(xb, yb)`` pairs; for a batch of another structure it raises an error
    saying what to use instead (``HFModel`` for Hugging Face style dict batches, or a plugin
    answering ``predict``). ``compute_loss`` reads ``learn.yb``: a pair's targets or a dict
    batch's ``labels``. ``count_items`` is :func:`pluglearn.data.batch_ops.count_items`.

    Once a fit, at its first batch, ``compute_loss`` refuses a loss that cannot train: cross
    entropy on one output column (:func:`check_one_class`)."""

    def __init__(self) -> None:
        self._loss_checked = False  # the loss function met the model's output this fit

    @hookimpl
    def before_fit(self) -> None:
        self._loss_checked = False

    @hookimpl(trylast=True)
    def predict(self, learn: Learner) -> Any:
        batch = learn.batch
        if type(batch) is not tuple or len(batch) != 2:
            check_pair(batch)  # any other structure: the error names the adapter and the hook
        model = learn.wrapped_model
        return (learn.model if model is None else model)(batch[0])

    @hookimpl(trylast=True)
    def compute_loss(self, learn: Learner) -> Any:
        preds, batch = learn.preds, learn.batch
        if not self._loss_checked:
            check_one_class(learn.loss_func, preds)
            self._loss_checked = True
        # a pair's yb, a dict's labels
        targets = batch[1] if type(batch) is tuple and len(batch) == 2 else targets_of(batch)
        if (
            type(preds) is torch.Tensor
            and type(targets) is torch.Tensor
            and targets.is_floating_point()  # first: class labels skip the shape objects
            and preds.shape != targets.shape
        ):
            check_broadcast(preds, targets)
        try:  # free when nothing fails; torch's own messages name neither shape nor the fix
            return learn.loss_func(preds, targets)
        except Exception as error:
            error.add_note(explain_loss_failure(learn.loss_func, learn.preds, targets))
            raise

    @hookimpl(trylast=True)
    def backward(self, learn: Learner) -> bool:
        assert learn.loss is not None  # backward runs after compute_loss
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

    @hookimpl(trylast=True)
    def count_items(self, batch: Any) -> int:
        return count_items(batch)  # the targets' count, else the first tensor's leading size


def check_one_class(loss_func: Any, preds: Any) -> None:
    """Refuse cross entropy on predictions with one column: the softmax of one number is 1, so
    the loss is 0 whatever the targets and nothing trains, with no warning from torch (a
    one-output model with float ``(n, 1)`` targets, meant as a binary classifier).

    Example: ``check_one_class(F.cross_entropy, torch.zeros(8, 1))`` raises a ValueError."""
    function = getattr(loss_func, "func", loss_func)  # functools.partial(F.cross_entropy, ...)
    if not (function is F.cross_entropy or isinstance(loss_func, nn.CrossEntropyLoss)):
        return
    if isinstance(preds, torch.Tensor) and preds.ndim >= 2 and preds.shape[1] == 1:
        n, shape = preds.shape[0], tuple(preds.shape)
        raise ValueError(
            f"cross entropy on predictions of shape {shape}: over one output column the "
            "softmax is 1, so the loss is always 0 and the model never trains. For a yes/no "
            "target keep the one output and use loss_func=F.binary_cross_entropy_with_logits "
            f"with float targets of shape {shape}; for classes give the model as many outputs "
            f"as classes (a last nn.Linear(..., n_classes)) and integer class labels of shape "
            f"({n},) (y.long())."
        )


def check_broadcast(preds: torch.Tensor, targets: torch.Tensor) -> None:
    """Refuse float targets that an element-wise loss would broadcast *with* the predictions
    into a larger shape: predictions (n, 1) against targets (n,) become an (n, n) comparison and
    train a useless model with only a warning from torch."""
    try:
        shape = torch.broadcast_shapes(preds.shape, targets.shape)
    except RuntimeError:
        return  # not broadcastable: the loss raises, and its note explains the shapes
    if shape != preds.shape:
        p, t = tuple(preds.shape), tuple(targets.shape)
        raise ValueError(
            f"predictions of shape {p} and float targets of shape {t} would broadcast to "
            f"{tuple(shape)} in an element-wise loss, comparing every prediction with every "
            f"target: give them one shape, e.g. a model that returns {t} (out.squeeze(-1)) or "
            f"targets of shape {p} (y.unsqueeze(-1) / y.view({', '.join(map(str, p))}))."
        )


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    return f"type {type(value).__name__}"


def _problems(preds: torch.Tensor, targets: torch.Tensor) -> list[str]:
    """What looks wrong with ``preds`` and ``targets`` for a loss, each with its fix."""
    if preds.ndim == 0 or targets.ndim == 0:
        return []
    n, m = preds.shape[0], targets.shape[0]
    if n != m:
        return [
            f"the predictions have {n} items and the targets {m}: every input needs one target. "
            "Check that the dataset returns (x, y) pairs of equal length, and that the model "
            "keeps the batch dimension first (e.g. x.flatten(1), not x.view(-1))."
        ]
    if targets.is_floating_point() or targets.dtype == torch.bool:
        if targets.shape != preds.shape and targets.ndim == preds.ndim:
            return [
                f"float targets {tuple(targets.shape)} are read as class probabilities, which "
                f"must have the predictions' shape {tuple(preds.shape)}: pass class labels of "
                f"shape ({n},) as int64 (y.long()), or targets of shape {tuple(preds.shape)}."
            ]
        if targets.ndim == preds.ndim - 1 and preds.ndim >= 2:
            return [
                f"the targets are float labels of shape {tuple(targets.shape)}: a classification "
                "loss wants int64 class labels, pass y.long()."
            ]
        return []
    if preds.ndim < 2:
        return [
            f"the predictions {tuple(preds.shape)} have no class dimension: a classification "
            f"loss wants ({n}, n_classes), e.g. a final nn.Linear(..., n_classes)."
        ]
    n_classes = preds.shape[1]
    if targets.shape == preds.shape:
        return [
            f"integer targets {tuple(targets.shape)} have the predictions' shape (one-hot?): "
            "pass class labels y.argmax(1), or probabilities y.float()."
        ]
    low, high = int(targets.min()), int(targets.max())  # only on failure: may sync a device
    if low < 0 or high >= n_classes:
        fix = (
            f"give the model's last layer {high + 1} outputs, or remap the labels"
            if high >= n_classes
            else "remap the labels (or mark the ones to skip with the loss's ignore_index)"
        )
        return [
            f"the targets hold class labels {low}..{high}, but the predictions have {n_classes} "
            f"classes, so labels must lie in 0..{n_classes - 1}: {fix}."
        ]
    if targets.dtype not in (torch.int64, torch.uint8):
        return [f"the targets are {targets.dtype}: class labels must be int64, pass y.long()."]
    return []


def explain_loss_failure(loss_func: Any, preds: Any, targets: Any) -> str:
    """A note for an error raised by ``loss_func(preds, targets)``: both shapes and dtypes, what
    looks wrong with them and how to fix it."""
    name = getattr(loss_func, "__name__", type(loss_func).__name__)
    head = (
        f"pluglearn: the loss {name}(preds, targets) failed on predictions of "
        f"{_describe(preds)} and targets of {_describe(targets)}"
    )
    try:
        found = (
            _problems(preds, targets)
            if isinstance(preds, torch.Tensor) and isinstance(targets, torch.Tensor)
            else []
        )
    except Exception:  # the diagnosis must never hide the original error (e.g. a dead device)
        found = []
    if not found:
        return f"{head}: check that the loss function accepts these."
    return f"{head}; " + " ".join(found)


def loss_reduction(loss_func: Any) -> str | None:
    """How ``loss_func`` reduces its items' losses (``"mean"``, ``"sum"``, ...), where it can be
    read: an ``nn.Module``'s ``reduction`` (``nn.CrossEntropyLoss(reduction="sum")``), a
    ``functools.partial``'s ``reduction=`` keyword, else the default of the function's
    ``reduction`` parameter (``F.cross_entropy``: ``"mean"``); None when it cannot be read.

    >>> import torch.nn.functional as F
    >>> loss_reduction(F.mse_loss), loss_reduction(functools.partial(F.mse_loss, reduction="sum"))
    ('mean', 'sum')
    """
    while isinstance(loss_func, functools.partial):
        if "reduction" in loss_func.keywords:
            return loss_func.keywords["reduction"]
        loss_func = loss_func.func
    if isinstance(loss_func, torch.nn.Module):
        reduction = getattr(loss_func, "reduction", None)
        return reduction if isinstance(reduction, str) else None
    try:
        parameter = inspect.signature(loss_func).parameters.get("reduction")
    except (TypeError, ValueError):
        return None
    default = getattr(parameter, "default", None)
    return default if isinstance(default, str) else None
