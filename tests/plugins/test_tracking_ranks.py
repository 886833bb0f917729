"""Under DDP, the experiment trackers log one run, from rank 0 only."""

from __future__ import annotations

import sys

import pytest
import torch.distributed as dist

from tests import processes
from tests.helpers import needs
from tests.jobs import JOBS
from tests.plugins.test_wandb_logger import logs_of, rows_with

pytestmark = [needs("mlflow", "'pluglearn[mlflow]'"), needs("wandb", "'pluglearn[wandb]'")]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.timeout(240)
@pytest.mark.xdist_group("ranks")  # two-rank jobs run one at a time
def test_two_ranks_log_one_run_with_each_step_once(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()  # the tables, before two ranks race
    done = processes.run(
        [sys.executable, str(JOBS / "tracker_ranks_job.py"), uri, str(tmp_path)], ranks=2,
        run_dir=tmp_path, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ranks").experiment_id])
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == list(range(1, 9)) and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [4, 8]
    (logs,) = logs_of(tmp_path).values()  # one W&B run, one attempt
    assert len(logs) == 1 and [s for s, _ in rows_with(logs, "train/loss")] == list(range(1, 9))
