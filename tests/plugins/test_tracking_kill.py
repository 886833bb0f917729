"""A fit killed outright (SIGKILL) and resumed in a new process leaves an MLflow run whose history
equals an uninterrupted run's: the steps buffered at the kill are the ones the resume runs again."""

from __future__ import annotations

import signal
import sys

import pytest

from pluglearn import Accuracy, AvgLoss, MLflowLogger
from tests import processes
from tests.helpers import needs
from tests.jobs import JOBS
from tests.support.trackers import make_learner

# with the other MLflow tests (tests/plugins/test_mlflow_logger.py): one worker imports mlflow
pytestmark = [pytest.mark.xdist_group("mlflow"), needs("mlflow", "'pluglearn[mlflow]'")]

JOB = JOBS / "tracker_kill_job.py"


def history(client, experiment, key):
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run, sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_sigkilled_fit_resumed_in_a_new_process_logs_each_step_once(tmp_path):
    uri, ckpt = f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "ckpt")
    make_learner([AvgLoss(), Accuracy(), MLflowLogger(uri, experiment="whole")]).fit(3)
    killed = processes.run(
        [sys.executable, str(JOB), uri, ckpt, "kill"], warm=True, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    resumed = processes.run(
        [sys.executable, str(JOB), uri, ckpt, "resume"], warm=True, capture_output=True
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for key in ("train/loss", "train/lr", "valid_loss", "accuracy", "epoch"):
        run, got = history(client, "kill", key)
        assert got == history(client, "whole", key)[1], key
    assert run.info.status == "FINISHED"
