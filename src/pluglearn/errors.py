"""Where an error came from, and who cancelled a fit: the notes and reasons users read.

The plugin that raised is found without bookkeeping on the hot path: the registry walks the
traceback for the innermost frame whose code belongs to a hook implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .exceptions import CancelException
    from .learner import Learner


def cleanup_after_error(
    learn: Learner, cleanup: Callable[[Learner], None], error: BaseException
) -> None:
    """Run a phase's cleanup while ``error`` is in flight; a cleanup failure becomes a note."""
    try:
        cleanup(learn)
    except Exception as cleanup_error:
        error.add_note(f"pluglearn: a cleanup hook also failed: {cleanup_error!r}")


def report_error(learn: Learner, error: BaseException) -> None:
    """Once per error and call: add the note of where it came from, then call every
    ``on_error`` (the phases it crosses on the way out see the same error and skip this)."""
    if learn._reported is error:
        return
    learn._reported = error
    error.add_note(where(learn, error))
    try:
        learn.hooks.call_all("on_error", learn=learn, error=error)
    except Exception as hook_error:
        error.add_note(f"pluglearn: an on_error hook also failed: {hook_error!r}")


def where(learn: Learner, error: BaseException) -> str:
    """``pluglearn: raised in plugin 'X', hook 'after_loss', epoch 1, train batch 3``."""
    owners = learn.hooks.owner_of(error)
    plugins = sorted({o.plugin for o in owners})
    hooks = " or ".join(repr(h) for h in dict.fromkeys(o.hook for o in owners))
    source = (
        f"in plugin {' or '.join(map(repr, plugins))}, hook {hooks}"
        if owners
        else "outside any plugin (in the loader, the model or the loop)"
    )
    when = f"epoch {learn.epoch}" if learn.n_epochs else "outside fit"
    if learn._in_batch:
        when += f", {'train' if learn.training else 'validation'} batch {learn.iter}"
    return f"pluglearn: raised {source}, {when}"


def cancel_reason(learn: Learner, cancelled: CancelException) -> str:
    """The default ``learn.stop_reason`` for a cancelled fit: the plugin that raised, and why."""
    owners = learn.hooks.owner_of(cancelled)
    who = " or ".join(sorted({o.plugin for o in owners})) or "the loop"
    return f"{who}: {cancelled}" if str(cancelled) else f"{who} raised CancelFitException"


def stray_cancel(learn: Learner, cancelled: CancelException) -> RuntimeError:
    """The error for a cancel that no running phase could take (``CancelTrainException`` raised
    in a validation batch, ``CancelBatchException`` outside a batch, a cancel from a cleanup)."""
    phase = type(cancelled).__name__.removeprefix("Cancel").removesuffix("Exception").lower()
    return RuntimeError(
        f"{type(cancelled).__name__} {where(learn, cancelled).removeprefix('pluglearn: ')}, "
        f"where no {phase} phase was running to end: raise it from a hook that runs inside that "
        "phase (cleanup hooks cannot cancel; see pluglearn.plugins.specs)."
    )
