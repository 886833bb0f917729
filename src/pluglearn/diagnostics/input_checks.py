"""What the loop checks about its inputs, each failure an error that names the problem and the fix.

Kept out of the hot path where possible: the checks per batch are a type test or two.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch


class KeepLr:
    """The type of :data:`KEEP_LR`, ``fit``'s default ``lr``: train at ``learn.lr``. A
    sentinel, so that ``fit(lr=None)`` given explicitly (``lr_find``'s missing suggestion) is
    refused instead of training at ``learn.lr`` unnoticed.

    Example: ``learn.fit(3)`` trains at ``learn.lr``; ``learn.fit(3, lr=None)`` is an error."""

    def __repr__(self) -> str:
        return "<learn.lr>"


KEEP_LR = KeepLr()


def check_lr(lr: object) -> float:
    """``lr`` as a float, or a clear error: it must be a finite number >= 0."""
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        why = (
            " (lr_find's suggestion is None when its sweep found no lr to suggest: its warning "
            "says why)"
            if lr is None
            else " (for one learning rate per group, set them on learn.opt.param_groups)"
        )
        raise TypeError(
            f"lr must be a number, got {lr!r} ({type(lr).__name__}): pass e.g. lr=0.1{why}."
        )
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0, got {lr}: pass e.g. lr=0.1.")
    return float(lr)


def report_order(metrics: dict[str, Any]) -> dict[str, Any]:
    """epoch, the losses, the other metrics as collected, time: the order reports read best."""
    first = [k for k in ("epoch", "train_loss", "valid_loss") if k in metrics]
    rest = [k for k in metrics if k not in first and k != "time"]
    return {k: metrics[k] for k in [*first, *rest, *(["time"] if "time" in metrics else [])]}


def check_pair(batch: Any) -> None:
    """Refuse a batch that is not an ``(xb, yb)`` pair, for the default ``predict`` and
    ``compute_loss`` (the loop itself takes batches of any structure)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return
    kind = (
        f"{type(batch).__name__} of length {len(batch)}"
        if hasattr(batch, "__len__")
        else type(batch).__name__
    )
    adapter = (
        "for a dict batch with a 'labels' key and a model that returns .loss/.logits (Hugging "
        "Face style) add the adapter: Learner(model, dls, plugins=[HFModel()]); for any other "
        "structure answer 'predict' (and 'compute_loss') in a plugin, or"
    )
    raise TypeError(
        f"a batch must be an (xb, yb) pair, got a {kind}: make the dataset return (x, y) items "
        f"(the default step calls model(xb) and loss_func(preds, yb)); {adapter} convert the "
        "batch in a before_batch plugin."
    )


def check_done(hook: str, result: object) -> None:
    if result is not None and not isinstance(result, bool):
        raise TypeError(
            f"'{hook}' must return True when done (or None to let the next plugin answer), got "
            f"{type(result).__name__}."
        )


def check_should_step(answer: object) -> bool:
    """``should_step``'s answer: None (nobody answered) means step."""
    if answer is None:
        return True
    if not isinstance(answer, bool):
        raise TypeError(
            f"'should_step' must return True (step after this batch), False (keep adding up "
            f"gradients) or None (let the next plugin answer), got {type(answer).__name__}."
        )
    return answer


def check_loss(loss: object) -> torch.Tensor:
    """The loss a step answered, or an error naming what is wrong with it and the fix."""
    if not isinstance(loss, torch.Tensor):
        raise TypeError(
            f"'compute_loss' must return a tensor, got {type(loss).__name__}: return the loss "
            "tensor itself (not loss.item())."
        )
    if loss.ndim != 0:
        raise ValueError(
            f"the loss has shape {tuple(loss.shape)}, but a loss must be one number (a 0-dim "
            "tensor) to backpropagate and average: use a loss that reduces (reduction='mean', "
            "the default of torch's losses) or reduce it yourself (loss.mean()) in loss_func."
        )
    return loss


def state_dict_mismatch(shapes: dict[str, tuple[int, ...]], saved: dict[str, Any]) -> str:
    """What keeps the tensors ``saved`` from loading into a model whose state has ``shapes``
    (``"missing keys: a; unexpected keys: b; shape mismatches (saved != model): c (2,) != (3,)"``),
    or ``""`` when they fit. Checkpoints and weight files both say it this way."""
    missing = [k for k in shapes if k not in saved]
    unexpected = [k for k in saved if k not in shapes]
    reshaped = [
        f"{k} {tuple(saved[k].shape)} != {shape}"
        for k, shape in shapes.items()
        if k in saved and tuple(saved[k].shape) != shape
    ]
    return "; ".join(
        f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches (saved != model)", reshaped),
        )
        if keys
    )
