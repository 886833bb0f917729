"""``learn.lr_find()``: an exponential learning-rate sweep that leaves the Learner as it found it.

The sweep trains on up to ``num_it`` training batches (more than one pass over the loader
when it is shorter) with the lr of batch ``i`` set to
``start_lr * (end_lr / start_lr) ** (i / (num_it - 1))``, and records each batch's loss. It
stops early when the loss diverges: a non-finite loss, or (with ``stop_div``) a smoothed loss
above 4 times the best smoothed loss so far.

It runs through the normal loop, so the plugins' hooks fire as in a fit: ``after_create_opt``,
``before_fit``, then train passes (``before_train``, every batch hook, ``after_train``) and
``cleanup_fit``; there are no epochs, no validation and no ``report``, and ``learn.run.running``
is ``"lr_find"`` for a plugin that wants to tell. ``Checkpoint`` plugins are set aside during the
sweep (its checkpoints would be of a throwaway run that a later resume could pick up).

Afterwards everything the sweep changed is put back exactly: the weights and buffers, the
gradients, the optimizer (its state and lrs; one that the sweep created is dropped, as if no
sweep had run), the random states, the loaders' shuffling generator and state, the position,
every module's train/eval mode, ``learn.stop_reason``, and every plugin's own state through its
``state_dict`` / ``load_state_dict`` hooks (captured before the sweep, loaded after it: the
``Recorder`` forgets the sweep's batches, the metrics their sums). A fit after ``lr_find`` gives
the same weights, bit for bit, and leaves the plugins in the same state as the same fit without
it. A plugin without these hooks, or whose ``state_dict`` answered None before the sweep, keeps
what the sweep left in it.

The suggestion: the losses are smoothed with an exponential moving average (``beta=0.98``,
bias-corrected); the suggested lr is where the smoothed loss falls fastest against ``log(lr)``
(the steepest negative slope), looking only at the points before its minimum. When fewer than
three points come before the minimum, it is the lr of the minimum divided by 10.

Example::

    result = learn.lr_find()
    print(result.suggestion)
    result.plot("lr_find.png")
    learn.fit(3, lr=result.suggestion)
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exceptions import CancelFitException
from .plugins.markers import hookimpl
from .resume import rng_state, set_rng_state

if TYPE_CHECKING:
    from .learner import Learner

DIVERGE = 4.0  # the sweep stops when the smoothed loss exceeds DIVERGE x its best
BETA = 0.98


@dataclass
class LRFindResult:
    """The sweep: ``lrs[i]`` trained batch ``i``, whose loss was ``losses[i]`` (``smoothed[i]``
    after smoothing); ``suggestion`` is the suggested lr (see the module doc) and ``diverged``
    whether the sweep stopped early on a diverging loss."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    diverged: bool = False
    notes: list[str] = field(default_factory=list)

    def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
        """The smoothed loss against the lr (log scale), the suggestion marked. Returns the
        matplotlib ``Figure``; with ``path``, saves it there and returns the path."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        ax.plot(self.lrs, self.smoothed, label="smoothed loss")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        if self.suggestion is not None:
            ax.axvline(self.suggestion, color="red", ls="--", label=f"{self.suggestion:.2e}")
        ax.legend()
        if path is None:
            return fig
        fig.savefig(path)
        return Path(path)


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The suggested lr of a sweep (see the module doc); None for an empty sweep."""
    finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]
    if not finite:
        return None
    low = min(finite, key=lambda i: smoothed[i])
    if low < 2:
        return lrs[low] / 10
    logs = [math.log(lr) for lr in lrs]
    slopes = {
        i: (smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(1, low)
    }
    return lrs[min(slopes, key=lambda i: slopes[i])]


class _Sweep:
    """The sweep's own plugin: sets each batch's lr, records its loss, ends the sweep."""

    plugin_name = "lr_find"

    def __init__(self, start_lr: float, end_lr: float, num_it: int, stop_div: bool) -> None:
        ratio = end_lr / start_lr
        self.schedule = [start_lr * ratio ** (i / max(num_it - 1, 1)) for i in range(num_it)]
        self.stop_div = stop_div
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.average, self.best, self.diverged = 0.0, math.inf, False
        self.lr = start_lr

    @hookimpl(tryfirst=True)
    def before_batch(self, learn: Learner) -> None:
        self.lr = self.schedule[len(self.losses)]  # a batch cancelled before its loss: again
        for group in learn.opt.param_groups:
            group["lr"] = self.lr

    @hookimpl(trylast=True)  # the other plugins see every loss, the last one too
    def after_loss(self, learn: Learner) -> None:
        loss = float(learn.loss.detach())
        n = len(self.losses) + 1
        self.lrs.append(self.lr)
        self.losses.append(loss)
        self.average = BETA * self.average + (1 - BETA) * loss
        smooth = self.average / (1 - BETA**n)
        self.smoothed.append(smooth)
        if not math.isfinite(smooth) or (self.stop_div and smooth > DIVERGE * self.best):
            self.diverged = True
            raise CancelFitException("lr_find: the loss diverged")
        self.best = min(self.best, smooth)
        if n == len(self.schedule):
            raise CancelFitException("lr_find: the sweep is done")


def _check(start_lr: Any, end_lr: Any, num_it: Any) -> None:
    from .checks import check_lr

    start, end = check_lr(start_lr), check_lr(end_lr)
    if not 0 < start < end:
        raise ValueError(
            f"lr_find(start_lr={start_lr}, end_lr={end_lr}): the sweep goes up from start_lr > 0 "
            "to a larger end_lr, e.g. lr_find(start_lr=1e-7, end_lr=10)."
        )
    if isinstance(num_it, bool) or not isinstance(num_it, int) or num_it < 2:
        raise ValueError(f"lr_find(num_it={num_it!r}): give an int >= 2, e.g. num_it=100.")


def _set_aside(learn: Learner) -> list[tuple[int, object]]:
    """Unregister the Checkpoint plugins for the sweep; returns them with their places."""
    from .callbacks.checkpoint import Checkpoint

    aside = [(i, p) for i, p in enumerate(learn.plugins) if isinstance(p, Checkpoint)]
    for _, plugin in aside:
        learn._registry.remove(plugin)
    return aside


def _state(learn: Learner) -> dict[str, Any]:
    """Everything the sweep may change and the Learner owns (see the module doc)."""
    opt = learn.opt
    dls = learn.dls
    loader = dls.train
    return {
        "position": learn.run.snapshot(),
        "model": {k: v.clone() for k, v in learn.model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in learn.model.parameters()],
        "modes": [(m, m.training) for m in learn.model.modules()],
        "opt": opt,
        "opt_state": copy.deepcopy(opt.state_dict()) if hasattr(opt, "state_dict") else None,
        "rng": rng_state(),
        "generator": dls.generator.get_state(),
        "loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
        "learner": (learn.dl, learn._batches, learn.batch, learn.preds, learn.loss),
        "metrics": (learn.metrics, learn.run.metric_owner, learn.stop_reason),
        # copied: a plugin may answer with its live lists (Recorder), which the sweep extends
        "plugins": copy.deepcopy(dict(learn.hooks.call("state_dict", learn=learn))),
    }


def _put_back(learn: Learner, state: dict[str, Any]) -> None:
    learn.run.restore_position(state["position"])
    learn.model.load_state_dict(state["model"])
    for param, grad in zip(learn.model.parameters(), state["grads"], strict=True):
        param.grad = grad
    for module, mode in state["modes"]:
        module.training = mode
    if state["opt"] is None:
        learn.opt = None  # the sweep made it: the next fit makes a fresh one, as without a sweep
    elif state["opt_state"] is not None:
        learn.opt = state["opt"]
        learn.opt.load_state_dict(state["opt_state"])
    set_rng_state(state["rng"])
    learn.dls.generator.set_state(state["generator"])
    if state["loader"] is not None:
        learn.dls.train.load_state_dict(state["loader"])
    learn.dl, learn._batches, learn.batch, learn.preds, learn.loss = state["learner"]
    learn.metrics, learn.run.metric_owner, learn.stop_reason = state["metrics"]
    # last: a plugin's state may refer to the gradients and optimizer put back above
    learn.hooks.call("load_state_dict", learn=learn, state=state["plugins"])


def lr_find(
    learn: Learner, start_lr: float, end_lr: float, num_it: int, stop_div: bool
) -> LRFindResult:
    """The body of :meth:`Learner.lr_find`, run inside its entry point (see the module doc)."""
    _check(start_lr, end_lr, num_it)
    sweep = _Sweep(float(start_lr), float(end_lr), num_it, bool(stop_div))
    if learn.dls.train is None and learn.dls.train_ds is None:
        raise ValueError("lr_find needs training data: build DataLoaders with a train set.")
    aside = _set_aside(learn)
    learn.add_plugin(sweep)
    state = _state(learn)  # before the loaders are made: they may draw from the generator
    try:
        with learn._loaders():
            learn._make_opt()
            n_iter = len(learn.dls.train) if hasattr(learn.dls.train, "__len__") else 0
            learn.epoch, learn.stop_reason = 0, None
            learn.n_epochs = -(-num_it // n_iter) if n_iter else 1  # passes the sweep needs
            learn._run_entry(lambda: learn.hooks.after_create_opt(learn))

            def body() -> None:
                while len(sweep.losses) < num_it:
                    before = len(sweep.losses)
                    learn._pass(train=True)
                    learn.epoch += 1
                    if len(sweep.losses) == before:  # every batch cancelled: no loss to read
                        break

            learn._run_entry(lambda: learn._phase("fit", CancelFitException, body))
    finally:
        try:
            _put_back(learn, state)
        finally:
            learn._registry.remove(sweep)
            for index, plugin in aside:
                learn._registry.add(plugin, index=index)
    n = len(sweep.losses)
    result = LRFindResult(
        sweep.lrs, sweep.losses, sweep.smoothed, suggest(sweep.lrs, sweep.smoothed)
    )
    result.diverged = sweep.diverged
    if n < num_it and not sweep.diverged:
        result.notes.append(f"the sweep ran {n} of {num_it} batches (a plugin ended it)")
    return result
