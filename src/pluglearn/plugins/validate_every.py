"""ValidateEvery: a validation pass every n optimizer steps, each one reported with its step.

Example::

    learn.fit(3, valid_every=200)                     # or plugins=[ValidateEvery(200)]
    rec = learn.plugin("Recorder"); rec.validations[-1]["step"], rec.validations[-1]["valid_loss"]

After every ``n``-th optimizer step of a fit it runs ``learn.validate()`` from the training
batch's ``after_batch`` hook, so the run goes on exactly as without it (the weights equal a run
without validations: the position, the batch state, the random states and the train metrics are
put back), then calls ``report`` with the epoch, the ``step`` (training batches run so far,
``learn.train_iter``) and the validation metrics. Every reporter logs it: ``ProgressBar`` and
``ConsoleReport`` print a line, ``Recorder`` keeps it in ``validations``, ``MetricsLogger``
writes a row with a ``step`` column, ``TensorBoardLogger`` and the trackers log it at its step;
``EarlyStopping`` and ``SaveBest`` see it (their patience counts validations). A report with a
``"step"`` key is such a validation; the epoch's own report follows its validation pass as
before (no step validation runs on the epoch's last batch: the epoch's own does).

Under ``DDP`` each validation runs on every rank over the whole validation set, with no
collective (see :meth:`pluglearn.Learner.validate`). ``lr_find``'s throwaway fit runs none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner

#: the key that marks a report of a validation between epochs
STEP = "step"


def is_step_report(metrics: dict[str, Any]) -> bool:
    """True for the report of a validation run between epochs (:class:`ValidateEvery`)."""
    return STEP in metrics


class ValidateEvery:
    """Validate every ``n`` optimizer steps and report it with its step (see the module doc)."""

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"ValidateEvery(n={n!r}): give an int >= 1 (optimizer steps).")
        self.n = n

    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        pos = learn.run.pos
        if (
            not pos.training
            or not pos.will_step
            or pos.opt_steps % self.n
            or learn.run.running != "fit"
            or (pos.n_iter is not None and pos.iter + 1 == pos.n_iter)  # the epoch's own runs
            or learn.dls.valid is None
        ):
            return
        metrics = learn.validate()
        report = {"epoch": pos.epoch, STEP: pos.train_iter, **metrics}
        learn.hooks.call("report", learn=learn, metrics=report)
