"""How the DDP plugin holds a cancel raised on one rank and makes every rank raise it together.

A cancel caught around one of the hook calls the DDP plugin wraps (``wrap_hook_calls``) is kept
(the strongest one wins) until an agreement: :meth:`CancelAgreement._sync`, one all-reduce of a
flag per cancel kind, then the strongest cancel any rank holds is raised on every rank, with
that rank's message and stop reason. Where and when the agreements happen is the plugin's
business (see :mod:`pluglearn.callbacks.ddp`).

An agreement whose answer is known costs a collective for nothing: when no plugin on any rank
that may cancel implements a hook whose cancel waits for one (:data:`HELD_HOOKS`), the ends
of the pass hooks agree on nothing. A plugin says it never cancels with a class attribute
``may_cancel = False`` (pluglearn's plugins that never cancel do: see
:mod:`pluglearn.callbacks.ddp`); one that says so and cancels anyway is refused with an error
naming it, never dropped.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, NoReturn

import torch

from .. import dist as pdist
from ..error_reporting import cancel_reason
from ..exceptions import (
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
)
from ..plugins.dispatch import origin_of

if TYPE_CHECKING:
    from ..learner import Learner
    from ..plugins.dispatch import Caller, Impl

#: the cancels, weakest first: when ranks hold different ones, every rank raises the strongest
LEVELS = (
    CancelBatchException,
    CancelValidateException,
    CancelTrainException,
    CancelEpochException,
    CancelFitException,
)
Wrapper = Generator[None, Any, Any]

#: the hooks whose cancel waits for an agreement at the end of a pass hook (one from
#: ``compute_loss`` or ``before_fit`` is agreed where it is raised, in its batch or its fit)
HELD_HOOKS = (
    "before_epoch", "before_train", "before_batch", "after_pred", "after_loss", "after_backward",
    "before_step", "after_step", "after_batch", "after_train", "before_validate",
    "after_validate", "after_epoch", "after_fit",
)  # fmt: skip


def may_cancel(impl: Impl) -> bool:
    """False when the plugin of this hook implementation declares ``may_cancel = False``."""
    return getattr(getattr(impl.function, "__self__", None), "may_cancel", True) is not False


def _level(cancel: CancelException) -> int:
    return max(i for i, kind in enumerate(LEVELS) if isinstance(cancel, kind))


def batch_items(learn: Learner) -> int:
    return learn.hooks.call("count_items", learn=learn, batch=learn.batch)


def zero_loss(learn: Learner) -> torch.Tensor:
    """A zero that reaches every parameter, so DDP's all-reduce gets this rank's zero gradient."""
    preds = learn.preds
    if isinstance(preds, torch.Tensor) and preds.requires_grad:
        return preds.sum() * 0.0
    return sum(p.sum() for p in learn.model.parameters() if p.requires_grad) * 0.0


class CancelAgreement:
    """Holding cancels and agreeing on them; ``module`` is the DDP wrapper inside a fit on
    several processes (None otherwise: every cancel is raised at once)."""

    module: Any = None
    _pending: CancelException | None = None
    _agree: bool = True  # agree at the ends of the pass hooks (see _agreeing)
    _hooks_seen: Any = None  # the dispatcher _agree was decided for

    def _cancellers(
        self, learn: Learner, hooks: tuple[str, ...] = HELD_HOOKS, any_plugin: bool = False
    ) -> bool:
        """Does a plugin other than this one, not declaring ``may_cancel = False`` (unless
        ``any_plugin``), implement one of ``hooks`` on this rank?"""
        return any(
            getattr(i.function, "__self__", None) is not self and (any_plugin or may_cancel(i))
            for h in hooks
            for i in learn.hooks.impls.get(h, [])
        )

    def _agreeing(self, learn: Learner) -> bool:
        """Must the ends of the pass hooks agree? Decided for every rank at the fit's start (one
        all-reduce); a plugin added during the fit can only turn it on."""
        hooks = learn.hooks
        if hooks is not self._hooks_seen:
            self._hooks_seen = hooks
            self._agree = self._agree or self._cancellers(learn)
        return self._agree

    # ------------------------------------------------------------- holding cancels

    def _keep(self, cancel: CancelException) -> None:
        if self._pending is None or _level(cancel) > _level(self._pending):
            self._pending = cancel

    def _catch(self, learn: Learner, cancel: CancelException, drop_batch: bool = False) -> None:
        """A cancel left a hook: raise it now (alone, or a validation batch skipped on this
        rank: nothing to agree), drop it (``drop_batch``: after the step a batch cancel has
        nothing left to skip), or keep it for the next agreement."""
        if self.module is None or (not learn.training and _level(cancel) == 0):
            raise cancel
        if not self._agreeing(learn):
            raise self._undeclared(cancel) from cancel
        if not (drop_batch and _level(cancel) == 0):
            self._keep(cancel)

    @staticmethod
    def _undeclared(cancel: CancelException, hook: str | None = None) -> RuntimeError:
        """The error for a cancel where the ranks do not agree, since no plugin on any rank
        that may cancel (not declaring ``may_cancel = False``) implements a hook there."""
        impl = origin_of(cancel)
        who = impl.plugin if impl is not None else "a plugin"
        where = f"in {hook}" if hook else "in its hook"
        return RuntimeError(
            f"DDP: {type(cancel).__name__}({cancel}) was raised by {who} on rank "
            f"{pdist.rank()} {where}, where the ranks do not agree on cancels: no plugin that "
            f"may cancel there was given, and {who} declares may_cancel = False, so the other "
            f"ranks would not stop. Remove may_cancel = False from {who}, or raise the cancel "
            "from a plugin of your own (one that does not declare it)."
        )

    def _hold(self, learn: Learner) -> Wrapper:
        """Run the hook (a generator wrapper); on several processes keep a cancel for the next
        agreement."""
        try:
            return (yield)
        except CancelException as cancel:
            self._catch(learn, cancel)
            return None

    def _held(self, call: Caller, drop_batch: bool = False) -> Caller:
        """``call`` (a hook's whole compiled call) with its cancels held as :meth:`_hold` does:
        one frame per call, where a generator wrapper costs several (it runs every batch)."""

        def held(learn: Learner) -> Any:
            try:
                return call(learn)
            except CancelException as cancel:
                self._catch(learn, cancel, drop_batch)
                return None

        return held

    def _refusing(self, call: Caller, hook: str) -> Caller:
        """``call`` (a step hook's whole compiled call); under DDP a cancel from it is refused
        (in training the other ranks are in, or past, the gradient all-reduce; in validation a
        stronger cancel than a batch's would leave them waiting at its end), except a
        validation batch's own skip."""

        def refusing(learn: Learner) -> Any:
            try:
                return call(learn)
            except CancelException as cancel:
                self._refuse(learn, cancel, hook)

        return refusing

    def _refuse(self, learn: Learner, cancel: CancelException, hook: str) -> NoReturn:
        if self.module is None or (not learn.training and _level(cancel) == 0):
            raise cancel  # alone, or a validation batch skipped on this rank: nothing to agree
        raise RuntimeError(
            f"DDP: {type(cancel).__name__}({cancel}) was raised by the {hook!r} hook on rank "
            f"{pdist.rank()}, where the other ranks cannot follow it: under DDP every rank "
            "takes part in each batch's gradient all-reduce. Raise it from an event hook "
            "(before_batch, after_pred, after_loss, ...) or from compute_loss, and DDP "
            "stops every rank together at the next optimizer step."
        ) from cancel

    def _sync_after(self, learn: Learner) -> Wrapper:
        result = yield from self._hold(learn)
        if self.module is not None and self._agreeing(learn):
            self._sync(learn)
        return result

    def _sync(
        self, learn: Learner, after_backward: bool = False, extra: tuple[float, ...] = ()
    ) -> list[float]:
        """Agree now on the cancels every rank holds (one all-reduce of a few numbers); raise
        the strongest any rank holds, on every rank (after a backward, putting the gradients
        back as ``zero_grad`` left them first). ``extra`` values ride along: their sums over
        the ranks are returned."""
        flags = [0.0] * len(LEVELS)
        if self._pending is not None:
            flags[_level(self._pending)] = 1.0
        summed = pdist.reduce_sum(*flags, *extra)
        held = summed[: len(LEVELS)]
        if not any(held):
            return summed[len(LEVELS) :]
        level = max(i for i, n in enumerate(held) if n)
        mine, self._pending = self._pending, None
        if mine is not None and _level(mine) != level:
            mine = None
        reason = learn.stop_reason
        if mine is not None and reason is None and level == len(LEVELS) - 1:
            reason = cancel_reason(mine)  # what the loop would say: the plugin that raised
        said = pdist.all_gather((pdist.rank(), str(mine), reason) if mine is not None else None)
        who, message, reason = next(s for s in said if s is not None)
        if reason is not None:  # every rank names the plugin that stopped the fit
            learn.run.stop(reason)
        if after_backward:  # the batch is cancelled before its step: as if never backpropagated
            learn.hooks.zero_grad(learn)
        if mine is not None:
            raise mine
        cancel = LEVELS[level](message)
        cancel.add_note(f"pluglearn DDP: raised on rank {who}; every rank stops together")
        raise cancel
