"""What users read when a run fails or is cancelled: where it happened, and who stopped it.

The dispatcher tags an exception with the hook implementation it left
(:func:`~pluglearn.hooks.dispatch.origin_of`), so the note names the plugin and hook that really
raised, with no traceback matching; the position comes from the Learner's run state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..hooks.dispatch import origin_of

if TYPE_CHECKING:
    from ..exceptions import CancelException
    from ..learner import Learner


def cleanup_after_error(
    learn: Learner, cleanup: Callable[[Learner], None], error: BaseException
) -> None:
    """Run a phase's cleanup while ``error`` is in flight; a cleanup failure becomes a note."""
    try:
        cleanup(learn)
    except BaseException as cleanup_error:
        error.add_note(
            f"pluglearn: a cleanup hook also failed: {cleanup_error!r}{_source(cleanup_error)}"
        )


def report_error(learn: Learner, error: BaseException) -> None:
    """Once per error and call: add the note of where it came from, then call every
    ``on_error`` (the phases it crosses on the way out see the same error and skip this)."""
    if not learn.run.first_report(error):
        return
    error.add_note(where(learn, error))
    try:
        learn.hooks.call("on_error", learn=learn, error=error)
    except BaseException as hook_error:
        error.add_note(
            f"pluglearn: an on_error hook also failed: {hook_error!r}{_source(hook_error)}"
        )


def _source(error: BaseException) -> str:
    impl = origin_of(error)
    return f" (plugin {impl.plugin!r}, hook {impl.hook!r})" if impl is not None else ""


def where(learn: Learner, error: BaseException) -> str:
    """``pluglearn: raised in plugin 'X', hook 'after_loss', epoch 1, train batch 3``."""
    impl = origin_of(error)
    source = (
        f"in plugin {impl.plugin!r}, hook {impl.hook!r}"
        if impl is not None
        else "outside any plugin (in the loader, the model or the loop)"
    )
    pos = learn.run.pos
    when = (
        f"epoch {pos.epoch}" if learn.run.running == "fit" else f"in {learn.run.running or 'no'}()"
    )
    if pos.in_batch:
        when += f", {'train' if pos.training else 'validation'} batch {pos.iter}"
    return f"pluglearn: raised {source}, {when}"


def cancel_reason(cancelled: CancelException) -> str:
    """The default ``learn.stop_reason`` for a cancelled fit: the plugin that raised, and why."""
    impl = origin_of(cancelled)
    who = impl.plugin if impl is not None else "the loop"
    return f"{who}: {cancelled}" if str(cancelled) else f"{who} raised CancelFitException"


def stray_cancel(learn: Learner, cancelled: CancelException) -> RuntimeError:
    """The error for a cancel that no running phase could take (``CancelTrainException`` raised
    in a validation batch, ``CancelBatchException`` outside a batch, a cancel from a cleanup)."""
    phase = type(cancelled).__name__.removeprefix("Cancel").removesuffix("Exception").lower()
    return RuntimeError(
        f"{type(cancelled).__name__} {where(learn, cancelled).removeprefix('pluglearn: ')}, "
        f"where no {phase} phase was running to end: raise it from a hook that runs inside that "
        "phase (cleanup hooks cannot cancel; see pluglearn.hooks.specs)."
    )
