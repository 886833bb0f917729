"""Scheduler: any ``torch.optim.lr_scheduler``, stepped per optimizer step or per epoch, resumable.

Example::

    from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau
    learn.fit(3, plugins=[Scheduler(lambda opt: OneCycleLR(opt, 0.5, total_steps=300))])
    learn.fit(9, plugins=[Scheduler(lambda opt: CosineAnnealingLR(opt, 9), interval="epoch")])
    learn.fit(9, plugins=[Scheduler(lambda opt: ReduceLROnPlateau(opt), interval="epoch")])
    learn.fit_one_cycle(3, lr_max=0.5)                   # OneCycleLR over the fit's steps

``factory(opt)`` builds the scheduler in ``after_create_opt``: the optimizer exists and a
checkpoint given as ``resume_from`` is not loaded yet, so the resume then loads the saved
optimizer and scheduler state over the fresh ones and the run follows the same lr and momentum
sequence, bit for bit. ``interval="batch"`` steps it in ``after_step`` (once per optimizer step,
so accumulated batches do not count, and not when ``MixedPrecision``'s scaler skipped the
step); ``interval="epoch"`` steps it once per finished epoch, in ``report`` (before the
epoch-end checkpoint is written), ``ReduceLROnPlateau`` with ``metrics[monitor]``.
:class:`~pluglearn.plugins.recorder.Recorder` logs the lr and momentum each batch used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau

from ..hooks.markers import hookimpl
from .mixed_precision import skippers

if TYPE_CHECKING:
    from ..learner import Learner

INTERVALS = ("batch", "epoch")


class Scheduler:
    """Builds ``factory(learn.opt)`` at the start of each fit and steps it (see the module doc)."""

    def __init__(
        self, factory: Callable[[Any], Any], interval: str = "batch", monitor: str = "valid_loss"
    ) -> None:
        if not callable(factory) or hasattr(factory, "step"):
            raise TypeError(
                f"Scheduler takes a factory, a function of the optimizer, got "
                f"{type(factory).__name__}: write Scheduler(lambda opt: OneCycleLR(opt, ...)), "
                "so that each fit builds its scheduler on the Learner's optimizer."
            )
        if interval not in INTERVALS:
            raise ValueError(f"Scheduler(interval={interval!r}): give 'batch' or 'epoch'.")
        self.factory, self.interval, self.monitor = factory, interval, monitor
        self.scheduler: Any = None
        self._skippers: list[Any] = []  # plugins that may skip an optimizer step (a scaler)

    @hookimpl
    def after_create_opt(self, learn: Learner) -> None:
        scheduler = self.factory(learn.opt)
        if not (hasattr(scheduler, "step") and hasattr(scheduler, "state_dict")):
            raise TypeError(
                f"Scheduler: the factory returned {type(scheduler).__name__}, not an lr "
                "scheduler: return one built on the optimizer it receives, e.g. "
                "lambda opt: torch.optim.lr_scheduler.StepLR(opt, 10)."
            )
        if getattr(scheduler, "optimizer", learn.opt) is not learn.opt:
            raise ValueError(
                "Scheduler: the factory built its scheduler on another optimizer than the one "
                "it received: build it on its argument (lambda opt: StepLR(opt, 10))."
            )
        if self.interval == "batch" and isinstance(scheduler, ReduceLROnPlateau):
            raise ValueError(
                "Scheduler: ReduceLROnPlateau reads a metric once per epoch: give interval='epoch'."
            )
        self.scheduler = scheduler
        self._skippers = skippers(learn.plugins)

    @hookimpl
    def after_step(self) -> None:
        if self.interval != "batch":
            return
        for plugin in self._skippers:
            if plugin.step_skipped:
                return  # the optimizer did not step: neither does the schedule
        self.scheduler.step()

    @hookimpl
    def report(self, metrics: dict[str, Any]) -> None:
        if self.interval != "epoch":
            return
        if isinstance(self.scheduler, ReduceLROnPlateau):
            if self.monitor not in metrics:
                raise KeyError(
                    f"Scheduler: ReduceLROnPlateau monitors {self.monitor!r}, which the epoch's "
                    f"metrics lack (they have {', '.join(metrics)}): pass monitor=<one of them>."
                )
            self.scheduler.step(metrics[self.monitor])
        else:
            self.scheduler.step()

    @hookimpl
    def state_dict(self) -> dict[str, Any] | None:
        if self.scheduler is None:
            return None
        return {"interval": self.interval, "scheduler": self.scheduler.state_dict()}

    @hookimpl
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("interval") != self.interval:
            raise ValueError(
                f"Scheduler: the checkpoint's scheduler stepped per {state.get('interval')}, "
                f"this one per {self.interval}: resume with interval={state.get('interval')!r}."
            )
        self.scheduler.load_state_dict(state["scheduler"])


def fit_one_cycle(
    learn: Learner,
    n_epochs: int | None,
    lr_max: float,
    plugins: object | Sequence[object] = (),
    *,
    max_steps: int | None = None,
    resume_from: Any = None,
    missing_ok: bool = False,
    **one_cycle: Any,
) -> None:
    """``learn.fit`` with a ``OneCycleLR(opt, lr_max, total_steps)`` stepped per optimizer step;
    ``total_steps`` counts the fit's optimizer steps (batches divided by the accumulation, and
    ``max_steps`` when given). ``one_cycle`` goes to ``OneCycleLR`` (``pct_start``,
    ``div_factor``, ``final_div_factor``, ``base_momentum``, ...).

    The cycle is this fit's only: afterwards (also after an error) ``learn.lr`` is the lr the
    Learner had before, and each param group's settings are as they were before the scheduler
    was built (SGD's momentum, Adam's betas; OneCycleLR's own keys removed), so the next
    ``fit`` trains at them, not at ``lr_max`` and OneCycleLR's final momentum. A resumed cycle
    loads the checkpoint's settings over them, so it goes on exactly.

    Example: ``learn.fit_one_cycle(3, lr_max=0.5)``, then ``learn.fit(1)`` trains at
    ``learn.lr``."""
    from fastcore.basics import listify

    from .budget import planned_steps

    for bad in ("total_steps", "epochs", "steps_per_epoch", "max_lr"):
        if bad in one_cycle:
            raise TypeError(
                f"fit_one_cycle counts the steps itself and takes lr_max: drop {bad}= (use "
                "Scheduler(lambda opt: OneCycleLR(opt, ...)) to set them by hand)."
            )

    base_lr = learn.lr
    before: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (group, its settings)

    def factory(opt: Any) -> OneCycleLR:
        before[:] = [(g, {k: v for k, v in g.items() if k != "params"}) for g in opt.param_groups]
        total = planned_steps(learn, learn.n_epochs, max_steps)
        return OneCycleLR(opt, max_lr=lr_max, total_steps=total, **one_cycle)

    try:
        learn.fit(
            n_epochs,
            lr=lr_max,
            plugins=[*listify(plugins), Scheduler(factory)],
            max_steps=max_steps,
            resume_from=resume_from,
            missing_ok=missing_ok,
        )
    finally:
        if learn.lr != base_lr:  # unchanged when fit refused to start (called from a hook)
            learn.lr = base_lr
        for group, settings in before:
            params = group["params"]
            group.clear()  # OneCycleLR's initial_lr, max_lr, ... would seed a later scheduler
            group.update(settings, params=params, lr=base_lr)
