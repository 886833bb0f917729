"""WandbLogger: offline W&B runs (no network, no login), read back from their transaction logs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from pluglearn import Accuracy, AvgLoss, Checkpoint, Recorder
from pluglearn.plugins import wandb_files
from pluglearn.plugins.wandb_logger import WandbLogger
from tests.helpers import CrashAt, needs
from tests.support.trackers import Decay, FailIn, Keep, make_learner

# one worker runs the W&B tests under -n (with tests/plugins/test_wandb_files.py): wandb costs
# a second to import, imported by the tests rather than at collection on every worker
pytestmark = [pytest.mark.xdist_group("wandb"), needs("wandb", "'pluglearn[wandb]'")]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch) -> Path:
    """W&B offline, writing under this test's tmp_path. wandb reads its environment once per
    process (WANDB_DIR included), so the loggers get ``dir`` and ``mode`` themselves."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def offline_logger(root: Path, **kwargs) -> WandbLogger:
    return WandbLogger(dir=root, mode="offline", **kwargs)


def logs_of(root: Path) -> dict[str, list[Path]]:
    """Each run id under ``root`` -> its transaction logs, oldest first, once each is complete
    (wandb writes a finished run's last records just after ``finish`` returns)."""
    ids = {p.name[len("run-") : -len(".wandb")] for p in root.glob("wandb/*/run-*.wandb")}
    logs = {run_id: wandb_files.run_logs(root, run_id) for run_id in ids}
    deadline = time.monotonic() + 10
    for path in [p for paths in logs.values() for p in paths]:
        while wandb_files.exit_code(path) is None and time.monotonic() < deadline:
            time.sleep(0.02)
    return logs


def the_run(root: Path) -> list[Path]:
    (paths,) = logs_of(root).values()
    return paths


def rows_with(paths: list[Path], key: str) -> list[tuple[int, float]]:
    """(step, value) of every history row holding ``key``, over every attempt of the run."""
    return [(r["_step"], r[key]) for p in paths for r in wandb_files.history(p) if key in r]


def test_config_history_and_summary_read_back(offline):
    rec, keep = Recorder(), Keep()
    make_learner(
        [AvgLoss(), Accuracy(), Decay(), rec, keep, offline_logger(offline, params={"hidden": 7})]
    ).fit(2)
    (log,) = the_run(offline)
    config = {k: v for k, v in wandb_files.config(log).items() if k != "_wandb"}
    assert config == {
        "lr": 0.4,
        "batch_size": 4,
        "n_epochs": 2,
        "opt": "SGD",
        "loss_func": "cross_entropy",
        "model": "Linear",
        "plugins": "AvgLoss, Accuracy, Decay, Recorder, Keep, WandbLogger, TrainStep, "
        "DefaultLoader, Device",
        "hidden": 7,
    }
    assert rows_with([log], "train/loss") == list(zip(range(1, 9), rec.losses, strict=True))
    assert rows_with([log], "train/lr") == list(zip(range(1, 9), rec.lrs, strict=True))
    assert rows_with([log], "train/lr")[1][1] == 0.2  # the lr the second batch used
    for key in ("train_loss", "valid_loss", "accuracy", "time"):
        assert rows_with([log], key) == [(4, keep.epochs[0][key]), (8, keep.epochs[1][key])]
    assert rows_with([log], "epoch") == [(4, 0), (8, 1)]
    summary = wandb_files.summary(log)
    assert (summary["status"], summary["stop_reason"], summary["error"]) == ("finished", None, None)
    assert wandb_files.exit_code(log) == 0


def test_every_n_logs_one_batch_in_n(offline):
    make_learner([offline_logger(offline, every=3)]).fit(2)
    assert [s for s, _ in rows_with(the_run(offline), "train/loss")] == [1, 4, 7]


def test_the_stop_reason_goes_into_the_summary(offline):
    learn = make_learner([offline_logger(offline)])
    learn.fit(3, max_steps=6)
    (log,) = the_run(offline)
    assert wandb_files.summary(log)["stop_reason"] == learn.stop_reason
    assert wandb_files.config(log)["max_steps"] == 6 and wandb_files.exit_code(log) == 0


def test_an_error_fails_the_run_and_a_keyboard_interrupt_ends_it_as_wandb_does(offline):
    with pytest.raises(RuntimeError, match="killed"):
        make_learner([offline_logger(offline, name="crash"), CrashAt(0, 1)]).fit(2)
    with pytest.raises(KeyboardInterrupt):
        make_learner([offline_logger(offline, name="ctrl_c"), FailIn(0, KeyboardInterrupt())]).fit(
            2
        )
    ends = {}
    for (log,) in logs_of(offline).values():
        summary = wandb_files.summary(log)
        ends[summary["status"]] = (summary["error"], wandb_files.exit_code(log))
    assert ends == {
        "failed": ("RuntimeError: killed", 1),
        "interrupted": ("KeyboardInterrupt: ", 255),
    }


def test_no_run_without_a_fit_nor_for_validate_or_lr_find(offline):
    learn = make_learner([AvgLoss(), offline_logger(offline)])
    learn.validate()
    learn.lr_find(num_it=3)
    assert logs_of(offline) == {}


def test_a_run_the_user_started_stays_open(offline):
    import wandb

    mine = wandb.init(project="mine", dir=offline, mode="offline")
    make_learner([offline_logger(offline)]).fit(1)
    mine.log({"after_the_fit": 1.0})
    mine.finish()
    logs = logs_of(offline)
    assert len(logs) == 2
    assert rows_with(logs[mine.id], "after_the_fit") == [(0, 1.0)]


def resumed_against_uninterrupted(root: Path, crash) -> tuple[list[Path], list[Path]]:
    """One uninterrupted fit and one that crashes (``crash``), then resumes from a Checkpoint
    saved every 3 batches; returns the logs of both runs."""
    make_learner([AvgLoss(), Accuracy(), offline_logger(root / "whole")]).fit(2)
    ckpt = root / "ckpt"

    def plugins():
        return [AvgLoss(), Accuracy(), offline_logger(root / "resumed")]

    with pytest.raises(RuntimeError):
        make_learner([*plugins(), crash, Checkpoint(ckpt, every_n_batches=3)]).fit(2)
    make_learner([*plugins(), Checkpoint(ckpt, every_n_batches=3)]).fit(2, resume_from=ckpt)
    return the_run(root / "whole"), the_run(root / "resumed")


def test_a_resumed_fit_continues_the_run_logging_each_step_once(offline):
    # the crash comes after batch 6; the newest checkpoint is the end of epoch 0 (batch 4): the
    # resumed attempt runs batches 5 and 6 again and must not log them a second time
    whole, resumed = resumed_against_uninterrupted(offline, CrashAt(epoch=1, batch=1))
    assert len(resumed) == 2  # offline, each attempt writes its own log of the same run
    for key in ("train/loss", "train/lr", "train_loss", "valid_loss", "accuracy", "epoch"):
        assert rows_with(resumed, key) == rows_with(whole, key), key
    first, second = (wandb_files.summary(p) for p in resumed)
    assert (first["status"], second["status"], second["error"]) == ("failed", "finished", None)
    assert wandb_files.exit_code(resumed[1]) == 0


def test_a_crash_in_validation_still_gets_its_epochs_report_after_the_resume(offline):
    whole, resumed = resumed_against_uninterrupted(
        offline, FailIn(0, RuntimeError("in validation"))
    )
    assert rows_with(resumed, "valid_loss") == rows_with(whole, "valid_loss")
    assert rows_with(resumed, "train/loss") == rows_with(whole, "train/loss")


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="every must be a positive int"):
        WandbLogger(every=0)
    with pytest.raises(ValueError, match="logged by the logger itself"):
        WandbLogger(params={"batch_size": 8})
    with pytest.raises(ValueError, match="mode must be one of"):
        WandbLogger(mode="offlne")
    with pytest.raises(TypeError, match="tags must be a list of str"):
        WandbLogger(tags="baseline")
    with pytest.raises(ValueError, match=r"\['config', 'id'\] are set by the logger"):
        WandbLogger(id="abc", config={"a": 1})


def test_other_wandb_init_arguments_reach_the_run(offline):
    make_learner([offline_logger(offline, notes="baseline", group="sweep1")]).fit(1)
    (log,) = the_run(offline)
    (run,) = [r.run for r in wandb_files.records(log) if r.WhichOneof("record_type") == "run"]
    assert (run.notes, run.run_group) == ("baseline", "sweep1")


def test_without_wandb_building_the_logger_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what Python does for a missing package
    with pytest.raises(ImportError, match=r"pip install 'pluglearn\[wandb\]'"):
        WandbLogger()


def test_each_validation_between_epochs_is_logged_at_its_step(offline):
    rec = Recorder()
    make_learner([AvgLoss(), Accuracy(), rec, offline_logger(offline)]).fit(2, valid_every=2)
    (log,) = the_run(offline)
    want = [(v["step"], v["valid_loss"]) for v in rec.validations]
    assert [s for s, _ in want] == [2, 4, 6, 8]
    assert rows_with([log], "valid_loss") == want
    assert rows_with([log], "step") == []  # the step is where each value is logged
