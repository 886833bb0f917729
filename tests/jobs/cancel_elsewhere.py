"""A cancel raised in a module of its own: what pluglearn's derivation of whether a plugin may
cancel does not follow (see tests/jobs/agreement_job.py)."""

from pluglearn import CancelFitException


def stop(message: str) -> None:
    raise CancelFitException(message)
