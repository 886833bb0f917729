"""MLflowLogger: a real MLflow store (SQLite), read back with MlflowClient, holds the run."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from pluglearn import Accuracy, AvgLoss, Checkpoint, Recorder, hookimpl
from pluglearn.plugins.mlflow_logger import MLflowLogger
from tests.helpers import CrashAt, needs
from tests.support.trackers import Decay, FailIn, Keep, make_learner

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# one worker runs the MLflow tests under -n: a tracking store costs seconds to create, and
# mlflow a second to import (imported by the tests, not at collection on every worker)
pytestmark = [pytest.mark.xdist_group("mlflow"), needs("mlflow", "'pluglearn[mlflow]'")]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite tracking store for the module (creating its tables costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(scope="module")
def client(store) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store)


def runs_of(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def the_run(client: MlflowClient, experiment: str):
    (run,) = runs_of(client, experiment)
    return run


def history(client: MlflowClient, run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.slow
def test_params_per_batch_values_and_reports_read_back(store, client):
    rec, keep = Recorder(), Keep()
    logger = MLflowLogger(store, experiment="read_back", params={"hidden": 7})
    learn = make_learner([AvgLoss(), Accuracy(), Decay(), rec, keep, logger])
    learn.fit(2)
    run = the_run(client, "read_back")
    assert run.info.status == "FINISHED" and logger.run_id is None
    assert run.data.params == {
        "lr": "0.4",
        "batch_size": "4",
        "n_epochs": "2",
        "opt": "SGD",
        "loss_func": "cross_entropy",
        "model": "Linear",
        "plugins": "AvgLoss, Accuracy, Decay, Recorder, Keep, MLflowLogger, TrainStep, "
        "DefaultLoader, Device",
        "hidden": "7",
    }
    assert history(client, run, "train/loss") == list(zip(range(1, 9), rec.losses, strict=True))
    assert history(client, run, "train/lr") == list(
        zip(range(1, 9), rec.lrs, strict=True)
    )  # as used
    assert history(client, run, "train/lr")[1][1] == 0.2  # the lr the second batch used
    assert history(client, run, "train/momentum") == [(s, 0.0) for s in range(1, 9)]
    for key in ("train_loss", "valid_loss", "accuracy", "time"):
        assert history(client, run, key) == [(4, keep.epochs[0][key]), (8, keep.epochs[1][key])]
    assert history(client, run, "epoch") == [(4, 0.0), (8, 1.0)]
    assert "stop_reason" not in run.data.tags and "error" not in run.data.tags


def test_every_n_logs_one_batch_in_n(store, client):
    make_learner([MLflowLogger(store, experiment="every", every=3)]).fit(2)
    assert [s for s, _ in history(client, the_run(client, "every"), "train/loss")] == [1, 4, 7]


class Peek:
    """Reads the steps of ``train/loss`` the store holds after each training batch."""

    def __init__(self, client: MlflowClient, logger: MLflowLogger) -> None:
        self.client, self.logger, self.seen = client, logger, []

    @hookimpl
    def after_batch(self, learn):
        if not learn.training:
            return
        history = self.client.get_metric_history(self.logger.run_id, "train/loss")
        self.seen.append(sorted(m.step for m in history))


def test_metrics_reach_the_store_every_flush_secs_and_at_each_report(store, client):
    live = MLflowLogger(store, experiment="live", flush_secs=0)
    peek = Peek(client, live)
    make_learner([live, peek]).fit(1)
    assert peek.seen == [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]]  # sent as each batch is logged
    held = MLflowLogger(store, experiment="held", flush_secs=1000)
    peek = Peek(client, held)
    make_learner([held, peek]).fit(2)
    assert peek.seen == [[]] * 4 + [[1, 2, 3, 4]] * 4  # sent by the report of epoch 0


def test_more_params_than_one_mlflow_batch_takes_are_all_logged(store, client):
    params = {f"p{i}": i for i in range(150)}
    make_learner([MLflowLogger(store, experiment="many_params", params=params)]).fit(1)
    logged = the_run(client, "many_params").data.params
    assert {k: logged[k] for k in params} == {k: str(v) for k, v in params.items()}


def test_each_fit_is_a_new_run_whose_steps_go_on(store, client):
    logger = MLflowLogger(store, experiment="two_fits")
    learn = make_learner([logger])
    learn.fit(1)
    learn.fit(1)
    first, second = sorted(runs_of(client, "two_fits"), key=lambda r: r.info.start_time)
    assert [s for s, _ in history(client, first, "train/loss")] == [1, 2, 3, 4]
    assert [s for s, _ in history(client, second, "train/loss")] == [5, 6, 7, 8]


def test_a_step_budget_is_a_param_and_its_stop_reason_a_tag(store, client):
    learn = make_learner([MLflowLogger(store, experiment="budget")])
    learn.fit(3, max_steps=6)
    run = the_run(client, "budget")
    assert run.data.params["max_steps"] == "6"
    assert run.data.tags["stop_reason"] == learn.stop_reason and "max_steps=6" in learn.stop_reason
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history(client, run, "train/loss")] == list(range(1, 7))


def test_an_error_fails_the_run_and_names_the_error(store, client):
    learn = make_learner([MLflowLogger(store, experiment="failed"), CrashAt(0, 1)])
    with pytest.raises(RuntimeError, match="killed"):
        learn.fit(2)
    run = the_run(client, "failed")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: killed"
    assert [s for s, _ in history(client, run, "train/loss")] == [1, 2]  # flushed at the end


def test_a_keyboard_interrupt_marks_the_run_killed(store, client):
    learn = make_learner([MLflowLogger(store, experiment="interrupted")])
    with pytest.raises(KeyboardInterrupt):
        learn.fit(2, plugins=[FailIn(0, KeyboardInterrupt())])
    assert the_run(client, "interrupted").info.status == "KILLED"


def test_no_run_without_a_fit_nor_for_validate_or_lr_find(store, client):
    logger = MLflowLogger(store, experiment="no_fit")
    learn = make_learner([AvgLoss(), logger])
    learn.validate()
    learn.lr_find(num_it=3)
    assert logger.client is None and runs_of(client, "no_fit") == []
    MLflowLogger(store, experiment="never_fitted")
    assert runs_of(client, "never_fitted") == []


def resumed_against_uninterrupted(store, client, tmp_path, name, crash):
    """One uninterrupted fit and one that crashes (``crash``), then resumes from a Checkpoint
    saved every 3 batches; returns both runs."""
    make_learner([AvgLoss(), Accuracy(), MLflowLogger(store, experiment=f"{name}_whole")]).fit(2)
    ckpt = tmp_path / "ckpt"

    def plugins():
        return [AvgLoss(), Accuracy(), MLflowLogger(store, experiment=name)]

    with pytest.raises(RuntimeError):
        make_learner([*plugins(), crash, Checkpoint(ckpt, every_n_batches=3)]).fit(2)
    make_learner([*plugins(), Checkpoint(ckpt, every_n_batches=3)]).fit(2, resume_from=ckpt)
    return the_run(client, f"{name}_whole"), the_run(client, name)


def test_a_resumed_fit_continues_the_run_logging_each_step_once(store, client, tmp_path):
    # the crash comes after batch 6; the newest checkpoint is the end of epoch 0 (batch 4), so
    # the resumed fit runs batches 5 and 6 again: the run must not get them twice
    whole, resumed = resumed_against_uninterrupted(
        store, client, tmp_path, "resumed", CrashAt(epoch=1, batch=1)
    )
    for key in ("train/loss", "train/lr", "train_loss", "valid_loss", "accuracy", "epoch"):
        assert history(client, resumed, key) == history(client, whole, key), key
    assert resumed.info.status == "FINISHED" and "error" not in resumed.data.tags
    assert "CrashAt" in resumed.data.params["plugins"]  # the run's params: its first attempt's


def test_a_crash_in_validation_still_gets_its_epochs_report_after_the_resume(
    store, client, tmp_path
):
    # batch 4 (the epoch's last) was logged, its report was not: the resume must log the report
    whole, resumed = resumed_against_uninterrupted(
        store, client, tmp_path, "crash_in_validation", FailIn(0, RuntimeError("in validation"))
    )
    assert history(client, resumed, "valid_loss") == history(client, whole, "valid_loss")
    assert history(client, resumed, "train/loss") == history(client, whole, "train/loss")


def test_resuming_a_run_missing_from_the_store_names_the_fix(store):
    logger = MLflowLogger(store, experiment="missing")
    learn = make_learner([logger])
    logger.load_state_dict(learn, {"run_id": "f" * 32})
    with pytest.raises(
        ValueError, match=r"not in the tracking store.*resume with the tracking_uri"
    ):
        learn.fit(1)


def test_bad_arguments_name_the_fix(store):
    with pytest.raises(ValueError, match="every must be a positive int"):
        MLflowLogger(store, every=0)
    with pytest.raises(ValueError, match="logged by the logger itself"):
        MLflowLogger(store, params={"lr": 0.1})
    with pytest.raises(TypeError, match=r"pass str\(value\)"):
        MLflowLogger(store, tags={"layers": 3})
    with pytest.raises(ValueError, match="flush_secs"):
        MLflowLogger(store, flush_secs=-1)
    with pytest.raises(ValueError, match="experiment must be a non-empty str"):
        MLflowLogger(store, experiment="")


def test_without_mlflow_building_the_logger_names_the_pip_command(monkeypatch):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what Python does for a missing package
    with pytest.raises(ImportError, match=r"pip install 'pluglearn\[mlflow\]'"):
        MLflowLogger()


def test_each_validation_between_epochs_is_logged_at_its_step(store, client):
    rec = Recorder()
    make_learner([AvgLoss(), Accuracy(), rec, MLflowLogger(store, experiment="valid_every")]).fit(
        2, valid_every=2
    )
    run = the_run(client, "valid_every")
    want = [(v["step"], v["valid_loss"]) for v in rec.validations]
    assert [s for s, _ in want] == [2, 4, 6, 8]  # after step 2 of each epoch, and each epoch's
    assert history(client, run, "valid_loss") == want
    assert history(client, run, "train_loss") == [
        (4, rec.epochs[0]["train_loss"]),
        (8, rec.epochs[1]["train_loss"]),
    ]
    assert "step" not in run.data.metrics  # the step is where each value is logged
