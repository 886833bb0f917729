"""MetricsLogger: CSV and JSON-lines rows equal the reported metrics; widening; formats."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from torch import nn

from pluglearn import (
    Accuracy,
    DataLoaders,
    Learner,
    MetricAdapter,
    MetricsLogger,
    ProgressBar,
    hookimpl,
)
from tests.plugins.test_metrics import TORCHMETRICS, K, multiclass_accuracy


class Keep:
    """Keeps every epoch's reported metrics: the oracle of the logged rows."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    @hookimpl
    def report(self, metrics):
        self.epochs.append(dict(metrics))


# Not the shared make_learner: random data in ragged batches of 8.
def make_learner(plugins=()) -> Learner:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, generator=g), torch.randint(0, K, (30,), generator=g)
    train = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 20, 8)]
    valid = [(x[20:], y[20:])]
    torch.manual_seed(0)
    return Learner(
        nn.Linear(4, K),
        DataLoaders(train, valid),
        plugins=[*plugins, ProgressBar(file=io.StringIO())],
    )


def read_csv(path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_csv_rows_equal_the_reported_metrics(tmp_path):
    path, keep = tmp_path / "metrics.csv", Keep()
    make_learner([Accuracy(), MetricsLogger(path), keep]).fit(3)
    header, rows = read_csv(path)
    assert header == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert len(rows) == 3
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]  # data counts epochs from 0
    for row, metrics in zip(rows, keep.epochs, strict=True):
        assert int(row["epoch"]) == metrics["epoch"]
        for key in ("train_loss", "valid_loss", "accuracy", "time"):
            assert float(row[key]) == metrics[key]  # floats are written in full


def test_jsonl_rows_equal_the_reported_metrics(tmp_path):
    path, keep = tmp_path / "metrics.jsonl", Keep()
    make_learner([Accuracy(), MetricsLogger(path), keep]).fit(3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == keep.epochs
    assert [type(r["epoch"]) for r in rows] == [int] * 3
    assert list(rows[0]) == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]


def test_the_json_suffix_writes_json_lines(tmp_path):
    path, keep = tmp_path / "metrics.json", Keep()
    make_learner([MetricsLogger(path), keep]).fit(2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == keep.epochs


def test_a_metric_added_in_a_later_fit_widens_the_csv_header(tmp_path):
    path, keep = tmp_path / "metrics.csv", Keep()
    learn = make_learner([MetricsLogger(path), keep])
    learn.fit(1)
    assert read_csv(path)[0] == ["epoch", "train_loss", "valid_loss", "time"]
    learn.fit(1, plugins=[Accuracy()])  # the same logger carries on (append) with a new column
    header, rows = read_csv(path)
    assert header == ["epoch", "train_loss", "valid_loss", "time", "accuracy"]
    assert len(rows) == 2
    assert rows[0]["accuracy"] == ""  # the earlier row gets an empty cell
    for row, metrics in zip(rows, keep.epochs, strict=True):
        for key in metrics:
            assert float(row[key]) == metrics[key]


def test_a_new_logger_with_append_widens_the_file_an_earlier_one_wrote(tmp_path):
    path, keep = tmp_path / "metrics.csv", Keep()
    learn = make_learner([keep])
    learn.fit(2, plugins=[MetricsLogger(path)])
    learn.fit(1, plugins=[Accuracy(), MetricsLogger(path, append=True)])
    header, rows = read_csv(path)
    assert header == ["epoch", "train_loss", "valid_loss", "time", "accuracy"]
    assert [r["accuracy"] for r in rows[:2]] == ["", ""]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 0]
    for row, metrics in zip(rows, keep.epochs, strict=True):
        for key in metrics:
            assert float(row[key]) == metrics[key]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_without_append_a_new_logger_starts_the_file_afresh(tmp_path, suffix):
    path = tmp_path / f"metrics{suffix}"
    learn = make_learner()
    learn.fit(2, plugins=[MetricsLogger(path)])
    keep = Keep()
    learn.fit(1, plugins=[MetricsLogger(path), keep])
    if suffix == ".csv":
        rows = read_csv(path)[1]
        assert [float(r["train_loss"]) for r in rows] == [keep.epochs[0]["train_loss"]]
    else:
        assert [json.loads(line) for line in path.read_text().splitlines()] == keep.epochs


def test_jsonl_appends_across_fits_of_one_learner(tmp_path):
    path, keep = tmp_path / "metrics.jsonl", Keep()
    learn = make_learner([MetricsLogger(path), keep])
    learn.fit(1)
    learn.fit(2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == keep.epochs
    assert len(keep.epochs) == 3


def test_the_parent_folder_is_created(tmp_path):
    path = tmp_path / "runs" / "a" / "metrics.csv"
    make_learner([MetricsLogger(path)]).fit(1)
    assert len(read_csv(path)[1]) == 1


@pytest.mark.parametrize("name", ["metrics.txt", "metrics", "metrics.CSV"])
def test_an_unknown_suffix_names_the_allowed_ones(tmp_path, name):
    with pytest.raises(ValueError, match="unknown format") as info:
        MetricsLogger(tmp_path / name)
    for suffix in (".csv", ".jsonl", ".json"):
        assert suffix in str(info.value)


@TORCHMETRICS
def test_tensor_metrics_are_logged_as_numbers_and_lists(tmp_path):
    """A per-class metric (a tensor of K values) is logged as a list, a 0-d tensor as a number."""
    path = tmp_path / "metrics.jsonl"
    per_class = MetricAdapter(multiclass_accuracy(average=None), name="per_class")

    class Scalar:
        @hookimpl
        def collect_metrics(self, phase):
            return {"half": torch.tensor(0.5)} if phase == "valid" else None

    learn = make_learner([per_class, Scalar(), MetricsLogger(path)])
    learn.fit(1)
    (row,) = [json.loads(line) for line in path.read_text().splitlines()]
    ((xv, yv),) = learn.dls.valid
    with torch.no_grad():
        expected = multiclass_accuracy(average=None)(learn.model(xv), yv)
    assert row["per_class"] == pytest.approx(expected.tolist())
    assert row["half"] == 0.5


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_resumed_run_rewrites_the_file_as_the_uninterrupted_run_wrote_it(tmp_path, suffix):
    """The crashed run reported epochs 0 and 1, saved a checkpoint in epoch 2 after batch 0,
    then died in epoch 2: the resumed run's file holds each epoch once, as the uninterrupted
    run's (and an epoch reported after the checkpoint would be dropped)."""
    from pluglearn import Checkpoint
    from tests.helpers import CrashAt

    def rows(path):
        if suffix == ".csv":
            return [{k: v for k, v in r.items() if k != "time"} for r in read_csv(path)[1]]
        lines = path.read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]

    whole = tmp_path / f"whole{suffix}"
    make_learner([Accuracy(), MetricsLogger(whole)]).fit(4)
    cut = tmp_path / f"cut{suffix}"
    ckpt = Checkpoint(tmp_path / "ckpt", every_n_batches=1)
    with pytest.raises(RuntimeError, match="killed"):
        make_learner([Accuracy(), MetricsLogger(cut), ckpt, CrashAt(2, 1)]).fit(4)
    assert len(rows(cut)) == 2
    # the file gains a row the saved run never reported (an epoch after its checkpoint)
    with cut.open("a") as f:
        f.write(json.dumps({"epoch": 9}) + "\n" if suffix == ".jsonl" else "9" + ",0" * 4 + "\n")
    resumed = make_learner([Accuracy(), MetricsLogger(cut)])
    resumed.fit(4, resume_from=tmp_path / "ckpt")
    assert rows(cut) == rows(whole)
