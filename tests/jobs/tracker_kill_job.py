"""A fit logged to MLflow that kills its own process outright (SIGKILL) after training batch 7, or
resumes from its checkpoints: run as a script by tests/plugins/test_tracking_kill.py.

    python tests/jobs/tracker_kill_job.py TRACKING_URI CKPT_DIR kill|resume
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pluglearn import Accuracy, AvgLoss, Checkpoint, MLflowLogger, hookimpl
from tests.support.trackers import make_learner

KILL_AT = 7  # the newest checkpoint is then the one after batch 6


class KillAt:
    """SIGKILLs this process after training batch ``step`` (counted over the Learner's life)."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def after_batch(self, learn):
        if learn.training and learn.train_iter == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(tracking_uri: str, ckpt: str, mode: str) -> None:
    # flush_secs: between reports, only a checkpoint sends the logged steps to the store
    logger = MLflowLogger(tracking_uri, experiment="kill", flush_secs=1e6)
    plugins = [AvgLoss(), Accuracy(), logger, Checkpoint(ckpt, every_n_batches=3)]
    if mode == "kill":
        make_learner([*plugins, KillAt(KILL_AT)]).fit(3)
    else:
        make_learner(plugins).fit(3, resume_from=ckpt)


if __name__ == "__main__":
    main(*sys.argv[1:])
