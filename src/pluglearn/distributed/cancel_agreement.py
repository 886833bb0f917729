"""What the ranks of a fit agree on while it runs, for ``DDP`` and ``FSDP``: every cancel
raised on one rank.

A cancel caught around a hook call (DDP's ``wrap_hook_calls``) is held, the strongest one
winning, until an agreement (:meth:`CancelAgreement.sync`: one all-reduce of a flag per kind of
cancel); then the strongest cancel any rank holds is raised on every rank, with that rank's
message and stop reason. Raised inside a training batch (before its step), the agreement first
takes the batch back out of the metrics that one process, cancelling where the rank that
cancelled did, would not have counted (:func:`pluglearn.run.metrics.take_back`): that rank
notes which had counted it when it held the cancel. Where the agreements happen is DDP's
business (see :mod:`pluglearn.distributed.ddp`). Agreements only run where a plugin may cancel,
which is derived from the plugins' code (:mod:`pluglearn.hooks.cancels`); one judged unable
to cancel that cancels anyway is refused with an error naming it. What the ranks agree on at
the fit's start is in :mod:`pluglearn.distributed.fit_agreement`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, NoReturn

from ..diagnostics.error_notes import cancel_reason
from ..exceptions import (
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
)
from ..hooks.cancels import declared, impl_may_cancel
from ..hooks.dispatch import origin_of
from ..run.metrics import batch_key, counted_now, take_back
from . import ranks as pdist

if TYPE_CHECKING:
    from ..hooks.dispatch import Caller
    from ..learner import Learner

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


def level(cancel: CancelException) -> int:
    """The strength of ``cancel``: its index in :data:`LEVELS`."""
    return max(i for i, kind in enumerate(LEVELS) if isinstance(cancel, kind))


def batch_items(learn: Learner) -> int:
    return learn.hooks.call("count_items", learn=learn, batch=learn.batch)


class CancelAgreement:
    """The cancels of one rank held for the next agreement, and the agreements themselves.
    ``owner`` is the DDP plugin: its hooks are not plugins that may cancel, and ``owner.module``
    is the DDP wrapper inside a fit on several processes (None otherwise: a cancel is raised
    at once)."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.pending: CancelException | None = None  # this rank's, not agreed yet
        # the training batch ``pending`` was held in, and which metrics had counted it then
        self.counted: tuple[tuple[bool, int, int], tuple[bool, ...]] | None = None
        self.agree = True  # agree at the ends of the pass hooks (see agreeing)
        self.hooks_seen: Any = None  # the dispatcher ``agree`` was decided for

    def cancellers(
        self, learn: Learner, hooks: tuple[str, ...] = HELD_HOOKS, any_plugin: bool = False
    ) -> bool:
        """Does a plugin other than the owner implement one of ``hooks`` on this rank and may
        cancel there (any such plugin with ``any_plugin``)?"""
        return any(
            getattr(i.function, "__self__", None) is not self.owner
            and (any_plugin or impl_may_cancel(i))
            for h in hooks
            for i in learn.hooks.impls.get(h, [])
        )

    def agreeing(self, learn: Learner) -> bool:
        """Must the ends of the pass hooks agree? Decided for every rank at the fit's start (one
        all-reduce); a plugin added during the fit can only turn it on."""
        hooks = learn.hooks
        if hooks is not self.hooks_seen:
            self.hooks_seen = hooks
            self.agree = self.agree or self.cancellers(learn)
        return self.agree

    def keep(self, learn: Learner, cancel: CancelException) -> None:
        """Hold ``cancel`` unless a stronger (or as strong) one is held already, noting which
        metrics had counted the training batch it is raised in."""
        if self.pending is None or level(cancel) > level(self.pending):
            self.pending = cancel
            in_batch = learn.run.pos.in_batch and learn.training
            self.counted = (batch_key(learn), counted_now(learn)) if in_batch else None

    def catch(self, learn: Learner, cancel: CancelException, drop_batch: bool = False) -> None:
        """A cancel left a hook: raise it now (alone, or a validation batch skipped on this
        rank: nothing to agree), drop it (``drop_batch``: after the step a batch cancel has
        nothing left to skip), or hold it for the next agreement."""
        if self.owner.module is None or (not learn.training and level(cancel) == 0):
            raise cancel
        if not self.agreeing(learn):
            raise self.undeclared(cancel) from cancel
        if not (drop_batch and level(cancel) == 0):
            self.keep(learn, cancel)

    @staticmethod
    def undeclared(cancel: CancelException, hook: str | None = None) -> RuntimeError:
        """The error for a cancel where the ranks do not agree, since no plugin on any rank
        implements a hook there that may cancel."""
        impl = origin_of(cancel)
        plugin = getattr(impl.function, "__self__", None) if impl is not None else None
        who = impl.plugin if impl is not None else "a plugin"
        said = declared(plugin) is False
        why = (
            f"{who} declares may_cancel = False"
            if said
            else f"pluglearn found no cancel in the code of {who}'s hooks"
        )
        fix = (
            f"Remove may_cancel = False from {who}"
            if said
            else f"Declare `may_cancel = True` on {who}'s class (its cancel is raised where "
            "pluglearn cannot see it: a function of another module, the loss function)"
        )
        return RuntimeError(
            f"DDP: {type(cancel).__name__}({cancel}) was raised by {who} on rank "
            f"{pdist.group_rank()} {f'in {hook}' if hook else 'in its hook'}, where the ranks "
            f"do not agree on cancels: no plugin that may cancel there was given, and {why}, "
            f"so the other ranks would not stop. {fix}, or raise the cancel from a plugin "
            "whose hook raises it itself."
        )

    def hold(self, learn: Learner) -> Wrapper:
        """Run the hook (a generator wrapper), holding a cancel as :meth:`catch` does."""
        try:
            return (yield)
        except CancelException as cancel:
            self.catch(learn, cancel)
            return None

    def held(self, call: Caller, drop_batch: bool = False) -> Caller:
        """``call`` (a hook's whole compiled call) with its cancels held as :meth:`hold` does:
        one frame per call, where a generator wrapper costs several (it runs every batch)."""

        def held(learn: Learner) -> Any:
            try:
                return call(learn)
            except CancelException as cancel:
                self.catch(learn, cancel, drop_batch)
                return None

        return held

    def refusing(self, call: Caller, hook: str) -> Caller:
        """``call`` (a step hook's whole compiled call) with a cancel from it refused (the other
        ranks are in, or past, the gradient all-reduce), except a validation batch's own skip."""

        def refusing(learn: Learner) -> Any:
            try:
                return call(learn)
            except CancelException as cancel:
                self.refuse(learn, cancel, hook)

        return refusing

    def refuse(self, learn: Learner, cancel: CancelException, hook: str) -> NoReturn:
        if self.owner.module is None or (not learn.training and level(cancel) == 0):
            raise cancel  # alone, or a validation batch skipped on this rank: nothing to agree
        raise RuntimeError(
            f"DDP: {type(cancel).__name__}({cancel}) was raised by the {hook!r} hook on rank "
            f"{pdist.group_rank()}, where the other ranks cannot follow it: under DDP every "
            "rank takes part in each batch's gradient all-reduce. Raise it from an event hook "
            "(before_batch, after_pred, after_loss, ...) or from compute_loss, and DDP "
            "stops every rank together at the next optimizer step."
        ) from cancel

    def sync_after(self, learn: Learner) -> Wrapper:
        """A pass hook's wrapper: hold its cancel, then agree if some plugin may cancel (never
        in a rank-local call: the other ranks are not there)."""
        result = yield from self.hold(learn)
        if self.owner.module is not None and self.agreeing(learn) and not pdist.is_local():
            self.sync(learn)
        return result

    def sync(
        self, learn: Learner, after_backward: bool = False, extra: tuple[float, ...] = ()
    ) -> list[float]:
        """Agree now on the cancels every rank holds (one all-reduce of a few numbers); raise
        the strongest any rank holds, on every rank (after a backward, putting the gradients
        back as ``zero_grad`` left them first). ``extra`` values ride along: their sums over
        the ranks are returned."""
        flags = [0.0] * len(LEVELS)
        if self.pending is not None:
            flags[level(self.pending)] = 1.0
        summed = pdist.reduce_sum(*flags, *extra)
        held = summed[: len(LEVELS)]
        if not any(held):
            return summed[len(LEVELS) :]
        strongest = max(i for i, n in enumerate(held) if n)
        mine, self.pending = self.pending, None
        counted, self.counted = self.counted, None
        if mine is not None and level(mine) != strongest:
            mine = None
        reason = learn.stop_reason
        if mine is not None and reason is None and strongest == len(LEVELS) - 1:
            reason = cancel_reason(mine)  # what the loop would say: the plugin that raised
        in_batch = learn.run.pos.in_batch and learn.training
        # held in an earlier batch (after its step): one process never computed this one
        kept = counted[1] if in_batch and counted and counted[0] == batch_key(learn) else None
        mine_said = (pdist.rank(), str(mine), reason, kept) if mine is not None else None
        said = pdist.all_gather(mine_said)
        who, message, reason, kept = next(s for s in said if s is not None)
        if reason is not None:  # every rank names the plugin that stopped the fit
            learn.run.stop(reason)
        if in_batch:  # the batch is cancelled before its step: out of the metrics
            take_back(learn, kept)
        if after_backward:  # the batch is cancelled before its step: as if never backpropagated
            learn.hooks.zero_grad(learn)
        if mine is not None:
            raise mine
        cancel = LEVELS[strongest](message)
        cancel.add_note(f"pluglearn DDP: raised on rank {who}; every rank stops together")
        raise cancel
