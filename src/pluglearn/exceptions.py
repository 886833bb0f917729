"""The cancel exceptions: raised from any hook, ``CancelXException`` ends phase X early.

``after_X`` is skipped, ``cleanup_X`` runs, and the loop goes on after X. They are not errors:
``on_error`` is not called for them.
"""

from __future__ import annotations


class CancelException(Exception):
    """Base of the cancel exceptions: raised from a hook, it ends a phase early (not an error)."""


class CancelFitException(CancelException):
    """End the fit: ``after_fit`` is skipped, ``cleanup_fit`` runs."""


class CancelEpochException(CancelException):
    """End this epoch (its remaining passes too); the next epoch starts."""


class CancelTrainException(CancelException):
    """End this epoch's train pass; validation still runs."""


class CancelValidateException(CancelException):
    """End the validation pass."""


class CancelBatchException(CancelException):
    """Skip the rest of this batch (e.g. the step); the next batch starts."""
