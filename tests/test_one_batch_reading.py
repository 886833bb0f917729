"""A reader follows one training batch with the default plugins through at most six files of
pluglearn: the loop, the dispatcher, the Learner and the default plugins that act per batch.
Measured, not claimed: every pluglearn function the batch calls is traced."""

from __future__ import annotations

import sys
from pathlib import Path

import pluglearn
from pluglearn import hookimpl
from tests.helpers import tiny_learner

PACKAGE = Path(pluglearn.__file__).parent


class TraceOneBatch:
    """Traces the calls of the second training batch, from its before_batch to its after_batch
    (``tryfirst``/``trylast``: every other plugin's hooks are inside the trace)."""

    def __init__(self) -> None:
        self.files: dict[str, set[str]] = {}

    def _profile(self, frame, event, arg) -> None:
        path = Path(frame.f_code.co_filename)
        if event == "call" and path.is_relative_to(PACKAGE):
            name = path.relative_to(PACKAGE).as_posix()
            self.files.setdefault(name, set()).add(frame.f_code.co_name)

    @hookimpl(tryfirst=True)
    def before_batch(self, learn) -> None:
        if learn.training and learn.iter == 1:
            sys.setprofile(self._profile)

    @hookimpl(trylast=True)
    def after_batch(self, learn) -> None:
        if learn.training and learn.iter == 1:
            sys.setprofile(None)


def test_one_training_batch_with_the_default_plugins_runs_in_at_most_six_files():
    trace = TraceOneBatch()
    tiny_learner(plugins=[trace], defaults=True).fit(1)
    files = set(trace.files) | {"loop.py"}  # _one_batch itself, whose frame was already open
    assert len(files) <= 6, trace.files
    # the files a reader opens: the loop, how a hook is called, the training step's provider
    assert {"loop.py", "hooks/dispatch.py", "plugins/train_step.py"} <= files
    assert {"predict", "compute_loss", "backward", "step"} <= trace.files["plugins/train_step.py"]
