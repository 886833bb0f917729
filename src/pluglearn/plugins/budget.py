"""StepBudget: end a fit after ``max_steps`` optimizer steps (``learn.fit(max_steps=...)``).

Example::

    learn.fit(max_steps=1000)           # as many epochs as 1000 steps need, the last one partial
    learn.fit(5, max_steps=1000)        # whichever comes first: 5 epochs or 1000 steps

Steps are optimizer steps, so with ``GradientAccumulation(4)`` 1000 steps are 4000 batches.
Without ``n_epochs`` the fit runs ``ceil(max_steps / steps per epoch)`` epochs. When the budget is
spent inside an epoch, the rest of its train pass is skipped, and its validation, report and
epoch-end checkpoint still run (the metrics are those of the partial epoch). When epochs remain,
the fit then stops with ``learn.stop_reason`` naming the budget. The steps done are in the
checkpoint state, so a resume ends at the same step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..data.loaders import length_of
from ..exceptions import CancelFitException, CancelTrainException
from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


def steps_per_epoch(learn: Learner) -> int:
    """Optimizer steps in one epoch of ``learn.dls.train`` (inside a fit: its loader exists)."""
    from .accumulate import GradientAccumulation

    loader = learn.dls.train
    n_batches = None if loader is None else length_of(loader)
    if n_batches is None:
        raise ValueError(
            "cannot count the optimizer steps of an epoch: the training loader has no length. "
            "Give n_epochs (and no max_steps), or a loader with a __len__."
        )
    n = 1
    for impl in learn.hooks.impls.get("should_step", []):
        plugin = learn.plugin(impl.plugin)
        if not isinstance(plugin, GradientAccumulation):
            raise ValueError(
                f"cannot count the optimizer steps of an epoch: plugin {impl.plugin!r} decides "
                "when to step (should_step). Give n_epochs and build the schedule yourself: "
                "Scheduler(lambda opt: OneCycleLR(opt, lr, total_steps=...))."
            )
        n = plugin.n_batches
    return math.ceil(n_batches / n)


def planned_steps(learn: Learner, n_epochs: int, max_steps: int | None) -> int:
    """The optimizer steps a fit of ``n_epochs`` with ``max_steps`` will take."""
    total = n_epochs * steps_per_epoch(learn)
    return total if max_steps is None else min(total, max_steps)


def check_max_steps(max_steps: Any) -> int:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1 (optimizer steps), got {max_steps!r}.")
    return max_steps


class StepBudget:
    """Ends the fit after ``max_steps`` optimizer steps; with ``epochs_from_steps`` it also sets
    ``learn.n_epochs`` to the epochs they need (see the module doc)."""

    def __init__(self, max_steps: int, epochs_from_steps: bool = False) -> None:
        self.max_steps = check_max_steps(max_steps)
        self.epochs_from_steps = epochs_from_steps
        self.start = 0  # learn.opt_steps when the run started

    @hookimpl(tryfirst=True)  # before a scheduler sized from learn.n_epochs is built
    def after_create_opt(self, learn: Learner) -> None:
        self.start = learn.opt_steps
        if self.epochs_from_steps:
            learn.run.extend(math.ceil(self.max_steps / steps_per_epoch(learn)))

    def spent(self, learn: Learner) -> bool:
        return learn.opt_steps - self.start >= self.max_steps

    @hookimpl(tryfirst=True)
    def before_batch(self, learn: Learner) -> None:
        if learn.training and self.spent(learn):
            raise CancelTrainException(f"max_steps={self.max_steps} optimizer steps done")

    @hookimpl
    def after_epoch(self, learn: Learner) -> None:
        if self.spent(learn) and learn.epoch + 1 < learn.n_epochs:
            raise CancelFitException(f"max_steps={self.max_steps} optimizer steps done")

    @hookimpl
    def state_dict(self, learn: Learner) -> dict[str, Any]:
        return {"max_steps": self.max_steps, "done": learn.opt_steps - self.start}

    @hookimpl
    def load_state_dict(self, learn: Learner, state: dict[str, Any]) -> None:
        if state.get("max_steps") != self.max_steps:
            raise ValueError(
                f"fit(max_steps={self.max_steps}) resumes a run started with max_steps="
                f"{state.get('max_steps')}: pass the run's own max_steps."
            )
        self.start = learn.opt_steps - int(state["done"])
