"""TrackerLogger: what reaches a tracker from the reports, and what stays out of `import pluglearn`.

The tracker here keeps its runs in a dict: a real implementation of the five methods a
tracker answers, so these tests need neither MLflow nor W&B.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from pluglearn import hookimpl
from pluglearn.plugins.tracking import TrackerLogger
from tests import processes
from tests.support.trackers import make_learner


class MemoryTracker(TrackerLogger):
    """Runs as dicts: ``runs[id] = {"params", "rows": [(step, values)], "end"}``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.runs: dict[str, dict] = {}

    def _open(self, learn, run_id):
        run_id = run_id or f"run{len(self.runs)}"
        self.runs.setdefault(run_id, {"params": {}, "rows": [], "end": None})
        return run_id

    def _log_params(self, params):
        self.runs[self.run_id]["params"].update(params)

    def _log(self, values, step):
        self.runs[self.run_id]["rows"].append((step, dict(values)))

    def _logged_steps(self):
        return {}

    def _close(self, status, stop_reason, error):
        self.runs[self.run_id]["end"] = (status, stop_reason, error)


class ReportExtras:
    """Adds metrics of every kind to each epoch's report."""

    @hookimpl(tryfirst=True)
    def report(self, metrics):
        metrics.update(
            tensor=torch.tensor(0.25),
            numpy=np.float32(0.5),
            flag=True,
            per_class=[0.1, 0.9],
            name="mlp",
        )


def test_a_report_logs_every_number_and_warns_once_per_key_it_skips():
    tracker = MemoryTracker()
    with pytest.warns(UserWarning) as caught:
        make_learner([ReportExtras(), tracker]).fit(2)
    (run,) = tracker.runs.values()
    reports = [(step, values) for step, values in run["rows"] if "epoch" in values]
    assert [step for step, _ in reports] == [4, 8]
    assert reports[1][1] == {"epoch": 1.0, "time": reports[1][1]["time"], "tensor": 0.25,
                             "numpy": 0.5, "flag": 1.0}  # fmt: skip
    skipped = sorted(str(w.message).split("'")[1] for w in caught)
    assert skipped == ["name", "per_class"]  # each once, not once per epoch
    assert run["end"] == ("finished", None, "")


def test_params_and_every_are_checked_when_the_logger_is_built():
    with pytest.raises(TypeError, match="params must be a dict"):
        MemoryTracker(params=[("hidden", 7)])
    with pytest.raises(TypeError, match="params keys must be str"):
        MemoryTracker(params={1: "a"})
    with pytest.raises(ValueError, match=r"\['lr', 'plugins'\] are logged by the logger"):
        MemoryTracker(params={"lr": 0.1, "plugins": "x"})
    with pytest.raises(ValueError, match="every must be a positive int"):
        MemoryTracker(every=True)


def test_a_checkpoint_run_id_of_another_type_is_refused():
    tracker = MemoryTracker()
    with pytest.raises(ValueError, match="not written by this logger"):
        tracker.load_state_dict(make_learner([tracker]), {"run_id": 7})


def test_a_resumed_run_keeps_its_params_and_reopens_the_same_run():
    tracker = MemoryTracker(params={"hidden": 7})
    learn = make_learner([tracker])
    learn.fit(1)
    tracker.load_state_dict(learn, {"run_id": "run0"})
    learn.fit(1)  # as a resume would: the same run, no second set of params
    assert list(tracker.runs) == ["run0"]
    assert tracker.runs["run0"]["params"]["hidden"] == 7
    assert [step for step, values in tracker.runs["run0"]["rows"] if "epoch" in values] == [4, 8]


@pytest.mark.slow
def test_importing_pluglearn_imports_neither_mlflow_nor_wandb():
    code = "import sys, pluglearn; print(sorted({'mlflow', 'wandb'} & set(sys.modules)))"
    out = processes.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
