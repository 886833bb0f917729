"""ValidateEvery / fit(valid_every=n): exact (the weights of a run without it), and each
validation logged with its step by every reporter."""

from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn

from pluglearn import (
    Accuracy,
    AvgLoss,
    ConsoleReport,
    EarlyStopping,
    MetricsLogger,
    ProgressBar,
    Recorder,
    ValidateEvery,
)

N, BS = 40, 4  # 10 training batches an epoch


@pytest.fixture
def learner(make_learner):
    """The shared tiny Learner with a dropout MLP, AvgLoss and Accuracy (no other defaults): N
    shuffled training items in batches of BS, 12 validating."""
    return lambda plugins=(): make_learner(
        [AvgLoss(), Accuracy(), *plugins],
        n_train=N,
        n_valid=12,
        bs=BS,
        data_seed=3,
        from_datasets=True,
        loader_seed=1,
        model=lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3)),
    )


def test_validating_every_n_steps_leaves_the_training_exactly_as_without_it(learner):
    plain, rec_plain = learner([rec := Recorder()]), rec
    plain.fit(3)
    learn = learner([rec := Recorder()])
    learn.fit(3, valid_every=3)
    assert rec.losses == rec_plain.losses
    assert all(torch.equal(p, q) for p, q in zip(
        learn.model.parameters(), plain.model.parameters(), strict=True))  # fmt: skip
    assert [e["epoch"] for e in rec.epochs] == [0, 1, 2]
    # after steps 3, 6, 9 of each epoch but the epoch's last (10, 20, 30: the epoch's own)
    steps = [v["step"] for v in rec.validations]
    assert steps == [3, 6, 9, 10, 12, 15, 18, 20, 21, 24, 27, 30]
    own = [v for v in rec.validations if v["step"] % 10 == 0]
    assert [v["valid_loss"] for v in own] == [e["valid_loss"] for e in rec.epochs]


def test_each_validation_equals_a_validate_at_that_step(learner):
    """The oracle: the same run stopped after step 6 and validated then."""
    learn = learner([rec := Recorder()])
    learn.fit(1, valid_every=6)
    at_six = [v for v in rec.validations if v["step"] == 6]
    stopped = learner()
    stopped.fit(1, max_steps=6)
    assert at_six[0]["valid_loss"] == stopped.validate()["valid_loss"]
    assert at_six[0]["accuracy"] == stopped.validate()["accuracy"]


def test_every_reporter_logs_each_validation_with_its_step(tmp_path, learner):
    tb = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from pluglearn import TensorBoardLogger

    out, table = io.StringIO(), io.StringIO()
    plugins = [
        MetricsLogger(tmp_path / "m.jsonl"),
        TensorBoardLogger(tmp_path / "tb"),
        ProgressBar(file=out),
        ConsoleReport(file=table),
    ]
    learner(plugins).fit(2, valid_every=4)
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r.get("step")) for r in rows] == [
        (0, 4), (0, 8), (0, None), (1, 12), (1, 16), (1, None),
    ]  # fmt: skip
    assert all("valid_loss" in r and "accuracy" in r for r in rows)
    events = tb.EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("step/valid_loss")] == [3, 7, 11, 15]
    assert [e.step for e in events.Scalars("epoch/valid_loss")] == [0, 1]
    assert "step" not in out.getvalue()  # the bar yields to the table, which prints them all
    rows = [r.split() for r in table.getvalue().splitlines() if r.split()[0] != "epoch"]
    assert [(r[0], r[1]) for r in rows] == [
        ("1/2", "4"), ("1/2", "8"), ("1/2", "-"), ("2/2", "12"), ("2/2", "16"), ("2/2", "-"),
    ]  # fmt: skip


def test_the_progress_bar_prints_each_validation_with_its_step(learner):
    out = io.StringIO()
    learner([ProgressBar(file=out)]).fit(1, valid_every=5)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("epoch 1/1  step 5  valid_loss ")
    assert lines[1].startswith("epoch 1/1  train_loss ") and len(lines) == 2


def test_early_stopping_counts_the_validations_between_epochs(learner):
    stop = EarlyStopping("valid_loss", patience=2, min_delta=10.0)  # nothing improves enough
    learn = learner([stop])
    learn.fit(5, valid_every=2)
    assert learn.stop_reason is not None and learn.epoch == 0  # patience ran out in epoch 0


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_a_bad_interval_is_refused(n):
    with pytest.raises(ValueError, match=r"ValidateEvery\(n="):
        ValidateEvery(n)
