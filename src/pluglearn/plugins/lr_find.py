"""``learn.lr_find()``: an exponential learning-rate sweep, run as a plugin through ``fit``.

:class:`LRFinder` is a plugin (miniai's ``LRFinderCB`` is the model): ``lr_find`` captures the
whole run (:data:`~pluglearn.run.state.SWEEP`), runs a throwaway fit with the finder, and puts
the run back, so a fit after ``lr_find`` gives the same weights, bit for bit, and leaves the
plugins as the same fit without it would: the weights and buffers, the gradients, the optimizer
(one the sweep created is dropped), the random states and every loader's ``torch.Generator``,
the loader's state, the position, the modes, ``learn.stop_reason`` and every plugin's own state
(its ``state_dict`` / ``load_state_dict`` hooks: the ``Recorder`` forgets the sweep's batches).
``Checkpoint`` plugins are set aside during the sweep (their checkpoints would be of a throwaway
run that a later resume could pick up); loggers see ``learn.run.running == "lr_find"``.

The sweep trains on up to ``num_it`` training batches (more than one pass over the loader when
it is shorter; no validation and no report) with the lr of batch ``i`` set to
``start_lr * (end_lr / start_lr) ** (i / (num_it - 1))``, and records each batch's loss. It
stops early when the loss diverges: a non-finite loss, or (with ``stop_div``) a smoothed loss
above 4 times the best smoothed loss so far.

The suggestion, fastai's "steep" rule: the losses are smoothed with an exponential moving
average (``beta=0.98``, bias-corrected); the first tenth of the sweep (``num_it // 10`` points)
is left out, since its smoothed loss averages only a few batches and its noise looks like a
steep descent (on a partly trained model the old rule without the skip suggested the sweep's
second lr, 1.2e-7); of the rest, the suggested lr is where the smoothed loss falls fastest
against ``log(lr)`` (the most negative slope to the next point), looking only at the points
before its minimum. When no point comes before the minimum, it is the lr of the minimum divided
by 10; when no loss is finite there is no suggestion (``None``), and ``lr_find`` warns why.

Example::

    result = learn.lr_find()
    print(result.suggestion)
    result.plot("lr_find.png")
    learn.fit(3, lr=result.suggestion)
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.loaders import length_of
from ..exceptions import CancelEpochException, CancelFitException
from ..hooks.markers import hookimpl
from .notebook import show_figures_inline

if TYPE_CHECKING:
    from ..learner import Learner

DIVERGE = 4.0  # the sweep stops when the smoothed loss exceeds DIVERGE x its best
BETA = 0.98


@dataclass(repr=False)
class LRFindResult:
    """The sweep: ``lrs[i]`` trained batch ``i``, whose loss was ``losses[i]`` (``smoothed[i]``
    after smoothing); ``suggestion`` is the suggested lr (see the module doc; None when there
    is none, and ``notes`` say why) and ``diverged`` whether the sweep stopped early on a
    diverging loss.

    Example: ``print(learn.lr_find())`` prints
    ``LRFindResult(suggestion=2.92e-01, lrs 1.0e-07..3.3e+00, 94 points, diverged=True)``."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    diverged: bool = False
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        suggestion = "None" if self.suggestion is None else f"{self.suggestion:.2e}"
        span = f"lrs {self.lrs[0]:.1e}..{self.lrs[-1]:.1e}, " if self.lrs else ""
        return (
            f"LRFindResult(suggestion={suggestion}, {span}{len(self.lrs)} points, "
            f"diverged={self.diverged})"
        )

    def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
        """The smoothed loss against the lr (log scale), the suggestion marked, the loss axis
        from the minimum to a bit above the highest loss before it (a diverged tail would
        squash the rest flat). Returns the matplotlib ``Figure`` (a notebook shows it once,
        inline: it is not pyplot's); with ``path``, saves it there and returns the path."""
        try:
            from matplotlib.figure import Figure
        except ImportError as error:
            message = "LRFindResult.plot needs matplotlib: pip install matplotlib"
            raise ImportError(message) from error

        fig = Figure(figsize=(6, 4), layout="constrained")  # room for the axis labels
        ax = fig.subplots()
        ax.plot(self.lrs, self.smoothed, label="smoothed loss")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        finite = [s for s in self.smoothed if math.isfinite(s)]
        if finite:
            lowest = min(finite)
            highest = max(self.smoothed[: self.smoothed.index(lowest) + 1])  # finite: a
            # non-finite loss ends the sweep, so it can only be the last point
            margin = 0.1 * (highest - lowest)
            if margin > 0:  # else a flat sweep: matplotlib's own range
                ax.set_ylim(lowest - margin, highest + margin)
        if self.suggestion is not None:
            ax.axvline(self.suggestion, color="red", ls="--", label=f"{self.suggestion:.2e}")
        ax.legend()
        if path is None:
            show_figures_inline()  # a notebook that never imported pyplot shows it too
            return fig
        fig.savefig(path)
        return Path(path)


def suggest(lrs: list[float], smoothed: list[float], num_it: int | None = None) -> float | None:
    """The suggested lr of a sweep planned for ``num_it`` points (default: as many as it has;
    see the module doc); None when no smoothed loss is finite.

    Example: ``suggest(result.lrs, result.smoothed, 100)`` is ``result.suggestion``."""
    skip = (len(lrs) if num_it is None else num_it) // 10
    finite = [i for i in range(skip, len(smoothed)) if math.isfinite(smoothed[i])]
    if not finite:
        finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]  # all in the skip
        if not finite:
            return None
    low = min(finite, key=lambda i: smoothed[i])
    start = min(skip, low)
    if low == start:
        return lrs[low] / 10
    logs = [math.log(lr) for lr in lrs]
    slopes = {
        i: (smoothed[i + 1] - smoothed[i]) / (logs[i + 1] - logs[i]) for i in range(start, low)
    }
    return lrs[min(slopes, key=lambda i: slopes[i])]


def _check(start_lr: Any, end_lr: Any, num_it: Any) -> None:
    from ..diagnostics.input_checks import check_lr

    start, end = check_lr(start_lr), check_lr(end_lr)
    if not 0 < start < end:
        raise ValueError(
            f"lr_find(start_lr={start_lr}, end_lr={end_lr}): the sweep goes up from start_lr > 0 "
            "to a larger end_lr, e.g. lr_find(start_lr=1e-7, end_lr=10)."
        )
    if isinstance(num_it, bool) or not isinstance(num_it, int) or num_it < 2:
        raise ValueError(f"lr_find(num_it={num_it!r}): give an int >= 2, e.g. num_it=100.")


class LRFinder:
    """The sweep as a plugin: sizes the throwaway fit, sets each batch's lr, records its loss,
    skips validation and ends the fit when the sweep is done or the loss diverges."""

    plugin_name = "lr_find"

    def __init__(
        self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, stop_div: bool = True
    ) -> None:
        _check(start_lr, end_lr, num_it)
        ratio = float(end_lr) / float(start_lr)
        self.schedule = [start_lr * ratio ** (i / max(num_it - 1, 1)) for i in range(num_it)]
        self.num_it, self.stop_div = num_it, bool(stop_div)
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.average, self.best, self.diverged = 0.0, math.inf, False
        self.lr = float(start_lr)

    @hookimpl
    def after_create_opt(self, learn: Learner) -> None:
        loader = learn.dls.train
        n_iter = length_of(loader) or 0
        learn.run.extend(-(-self.num_it // n_iter) if n_iter else self.num_it)  # passes needed

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
            raise CancelFitException("the loss diverged")  # the stop reason: "lr_find: ..."
        self.best = min(self.best, smooth)
        if n == self.num_it:
            raise CancelFitException("the sweep is done")

    @hookimpl
    def after_train(self) -> None:
        raise CancelEpochException("no validation")  # and no report

    def result(self) -> LRFindResult:
        """The sweep's :class:`LRFindResult`; warns (``UserWarning``) when it has no
        suggestion, saying why."""
        suggestion = suggest(self.lrs, self.smoothed, self.num_it)
        result = LRFindResult(self.lrs, self.losses, self.smoothed, suggestion, self.diverged)
        n = len(self.losses)
        if suggestion is None:
            result.notes.append(self._no_suggestion())
            warnings.warn(result.notes[-1], UserWarning, stacklevel=3)  # at the lr_find call
        elif n < self.num_it and not self.diverged:
            result.notes.append(f"the sweep ran {n} of {self.num_it} batches (a plugin ended it)")
        return result

    def _no_suggestion(self) -> str:
        """Why a sweep has no suggestion, and what to do."""
        if not self.losses:
            why = "the sweep recorded no loss: a plugin ended it before the first batch's loss"
        else:  # a non-finite loss ends the sweep: the first one was not finite
            why = (
                f"the loss was {self.losses[0]} at the first batch (lr {self.lrs[0]:.1e}), "
                "before any training: look for NaN or inf in the inputs and targets, and for "
                "a loss that takes the log of 0"
            )
        return (
            f"lr_find found no lr to suggest: {why}. result.suggestion is None, and "
            "fit(lr=None) is refused: pass a number, or leave lr out to train at learn.lr."
        )
