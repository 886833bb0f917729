"""MetricAdapter against torchmetrics computed by hand: one metric, a MetricCollection, resume."""

from __future__ import annotations

import csv
import io
import warnings

import pytest
import torch

from pluglearn import (
    Checkpoint,
    DataLoaders,
    Learner,
    MetricAdapter,
    MetricsLogger,
    ProgressBar,
    Recorder,
    hookimpl,
)
from tests.helpers import CrashAt, first_line
from tests.plugins.test_metrics import (
    TORCHMETRICS,
    batches,
    hit_rate,
    make_data,
    make_learner,
    make_model,
    multiclass_accuracy,
    multiclass_f1,
)

pytestmark = TORCHMETRICS


@pytest.fixture
def data():
    """10 training items in batches 4, 4, 2; 7 validation items in batches 4, 3 (both ragged)."""
    xt, yt = make_data(10, seed=1)
    xv, yv = make_data(7, seed=2)
    return batches(xt, yt, 4), batches(xv, yv, 4), (xt, yt), (xv, yv)


def test_metric_adapter_equals_torchmetrics_on_all_validation_predictions():
    xt, yt = make_data(40, seed=3)
    xv, yv = make_data(30, seed=4)
    train, valid = batches(xt, yt, 8), batches(xv, yv, 8)  # valid: 8, 8, 8, 6
    model = make_model()
    acc = MetricAdapter(multiclass_accuracy(average="micro"))
    f1 = MetricAdapter(multiclass_f1(average="macro"), name="f1")
    learn = make_learner(model, train, valid, plugins=[acc, f1])
    learn.fit(2)

    with torch.no_grad():
        preds = model(xv)
    expected_acc = multiclass_accuracy(average="micro")(preds, yv).item()
    expected_f1 = multiclass_f1(average="macro")(preds, yv).item()
    assert expected_acc == pytest.approx((preds.argmax(1) == yv).float().mean().item())
    assert isinstance(learn.metrics["multiclassaccuracy"], float)  # default name: the class's
    assert learn.metrics["multiclassaccuracy"] == pytest.approx(expected_acc)
    assert learn.metrics["f1"] == pytest.approx(expected_f1)
    assert "train_f1" not in learn.metrics


def test_metric_adapter_with_train_phase_reports_train_name(data):
    train, valid, (xt, yt), (xv, yv) = data
    model = make_model()
    adapter = MetricAdapter(
        multiclass_accuracy(average="micro"), name="acc", phases=("train", "valid")
    )
    learn = make_learner(model, train, valid, plugins=[adapter], lr=0)
    learn.fit(1)
    assert learn.metrics["train_acc"] == pytest.approx(hit_rate(model, xt, yt))
    assert learn.metrics["acc"] == pytest.approx(hit_rate(model, xv, yv))


def test_metric_adapter_resets_between_epochs(data):
    """Each epoch's value covers that epoch's validation pass only (reset at each pass)."""
    train, valid, _, (xv, yv) = data
    seen, expected = [], []

    class Keep:
        @hookimpl
        def report(self, learn, metrics):
            seen.append(metrics["acc"])
            # the model that just made this epoch's validation predictions
            expected.append(hit_rate(learn.model, xv, yv))

    adapter = MetricAdapter(multiclass_accuracy(average="micro"), name="acc")
    learn = make_learner(make_model(), train, valid, plugins=[adapter, Keep()], lr=1.0)
    learn.fit(4)
    assert seen == pytest.approx(expected)


class OnlyUpdate:
    def update(self, preds, target):
        pass


@pytest.mark.parametrize(
    ("metric", "missing"),
    [
        (object(), "object lacks update, compute, reset"),
        (OnlyUpdate(), "OnlyUpdate lacks compute, reset"),
    ],
)
def test_metric_adapter_rejects_objects_without_the_protocol(metric, missing):
    # the whole message: the class, every method it lacks, and what is needed
    with pytest.raises(TypeError) as info:
        MetricAdapter(metric)
    assert str(info.value) == (
        f"{missing}: MetricAdapter needs an object with update(preds, targets), compute() and "
        "reset() (e.g. a torchmetrics metric)."
    )


def test_the_metric_given_is_the_first_phase_s_and_the_other_phase_updates_its_own_copy(data):
    train, valid, (xt, yt), (xv, yv) = data
    given = multiclass_accuracy(average="micro")
    adapter = MetricAdapter(given, name="acc", phases=("train", "valid"))
    model = make_model()
    learn = make_learner(model, train, valid, plugins=[adapter], lr=0)
    learn.fit(1)
    assert adapter.metric is given and adapter.metrics["train"] is given
    assert adapter.metrics["valid"] is not given
    # the caller's own object holds the train pass, the copy the validation pass
    assert given.compute().item() == pytest.approx(hit_rate(model, xt, yt))
    assert adapter.metrics["valid"].compute().item() == pytest.approx(hit_rate(model, xv, yv))
    assert hit_rate(model, xt, yt) != pytest.approx(hit_rate(model, xv, yv))  # told apart


# ---------------------------------------------------------------------- MetricCollection


def collection(**kwargs):
    from torchmetrics import MetricCollection

    return MetricCollection(
        {
            "acc": multiclass_accuracy(average="micro"),
            "f1": multiclass_f1(average="macro"),
        },
        **kwargs,
    )


def test_a_metric_collection_reports_one_metric_per_key_and_one_csv_column_each(tmp_path):
    xt, yt = make_data(24, seed=3)
    xv, yv = make_data(14, seed=4)
    model = make_model()
    log = tmp_path / "metrics.csv"
    adapter = MetricAdapter(collection(), phases=("train", "valid"))
    learn = make_learner(
        model, batches(xt, yt, 8), batches(xv, yv, 8), [adapter, MetricsLogger(log)]
    )
    learn.fit(2)

    with torch.no_grad():
        preds = model(xv)
    expected = {"acc": collection()["acc"](preds, yv), "f1": collection()["f1"](preds, yv)}
    assert isinstance(learn.metrics["acc"], float) and isinstance(learn.metrics["f1"], float)
    assert learn.metrics["acc"] == pytest.approx(expected["acc"].item())
    assert learn.metrics["f1"] == pytest.approx(expected["f1"].item())
    assert {"train_acc", "train_f1"} <= set(learn.metrics)
    rows = list(csv.DictReader(log.open()))
    assert list(rows[0]) == ["epoch", "train_loss", "valid_loss", "train_acc", "train_f1", "acc",
                             "f1", "time"]  # fmt: skip
    assert float(rows[-1]["f1"]) == pytest.approx(expected["f1"].item())


def test_a_named_collection_prefixes_its_keys_with_the_name(data):
    train, valid, _, _ = data
    learn = make_learner(make_model(), train, valid, [MetricAdapter(collection(), name="cls")])
    learn.fit(1)
    assert {"cls_acc", "cls_f1"} <= set(learn.metrics) and "acc" not in learn.metrics
    learn = make_learner(make_model(), train, valid, [MetricAdapter(collection(prefix="val_"))])
    learn.fit(1)
    assert {"val_acc", "val_f1"} <= set(learn.metrics)  # the collection's own prefix= holds


class ValidateInBatch:
    """Runs a whole validation from inside training batch 1 (``after_batch``)."""

    @hookimpl
    def after_batch(self, learn):
        if learn.training and learn.iter == 1:
            learn.validate()


def test_a_validation_run_from_a_training_hook_leaves_a_collection_s_train_values_be(data):
    # each phase has its own collection, members included: the nested validation resets and
    # updates the validation one only
    train, valid, _, _ = data

    def fit(plugins=()):
        adapter = MetricAdapter(collection(), phases=("train", "valid"))
        learn = make_learner(make_model(), train, valid, [adapter, *plugins])
        learn.fit(2)
        return learn.metrics

    plain, nested = fit(), fit([ValidateInBatch()])
    for key in ("train_acc", "train_f1", "acc", "f1"):
        assert nested[key] == plain[key], key


# Not the shared make_learner: the metrics' data and model of this file.
def resumable(plugins=()) -> Learner:
    xt, yt = make_data(40, seed=5)
    xv, yv = make_data(12, seed=6)
    dls = DataLoaders.from_datasets((xt, yt), (xv, yv), batch_size=8, seed=3)
    adapter = MetricAdapter(collection(), phases=("train", "valid"))
    return Learner(make_model(), dls, lr=0.5, plugins=[adapter, Recorder(), *plugins])


class CrashInValidation:
    """Raises after the train pass of epoch 1: the last checkpoint holds the whole pass."""

    @hookimpl
    def before_validate(self, learn):
        if learn.epoch == 1:
            raise RuntimeError("killed")


@pytest.mark.parametrize(
    "crash", [lambda: CrashAt(1, 2), CrashInValidation], ids=["mid-epoch", "in-validation"]
)
def test_a_train_phase_collection_resumed_mid_epoch_reports_the_uninterrupted_values(
    tmp_path, crash
):
    done = resumable([ProgressBar(file=io.StringIO())])
    done.fit(2)
    crashing = resumable([Checkpoint(tmp_path, every_n_batches=1), ProgressBar(file=io.StringIO())])
    with pytest.raises(RuntimeError, match="killed"):
        crashing.fit(2, plugins=[crash()])
    resumed = resumable([Checkpoint(tmp_path, every_n_batches=1), ProgressBar(file=io.StringIO())])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "compute called before update" from torchmetrics
        resumed.fit(2, resume_from=tmp_path)

    def values(learn):
        return [
            {k: v for k, v in e.items() if k != "time"} for e in learn.plugin("Recorder").epochs
        ]

    assert values(resumed) == values(done)
    assert {"train_acc", "train_f1"} <= set(values(done)[-1])


def test_a_checkpoint_of_one_metric_from_before_the_update_counts_still_resumes():
    metric = multiclass_accuracy(average="micro")
    metric.update(torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1]]), torch.tensor([0, 2]))
    metric.persistent(True)
    old_format = {"train": dict(metric.state_dict()), "updates": 1}  # one count, no names
    adapter = MetricAdapter(multiclass_accuracy(average="micro"), phases=("train",))
    adapter.load_state_dict(old_format)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # counted as updated: no "compute before update"
        assert adapter.metrics["train"].compute().item() == 0.5


def test_a_train_phase_metric_adapter_resumed_mid_epoch_reports_the_uninterrupted_value(
    data, tmp_path
):
    from pluglearn import Checkpoint
    from tests.helpers import CrashAt

    train, valid = data[0], data[1]

    def learner(plugins=()):
        f1 = MetricAdapter(multiclass_f1(), "f1", phases=("train", "valid"))
        return make_learner(make_model(), train, valid, [f1, *plugins])

    done = learner()
    done.fit(2)
    with pytest.raises(RuntimeError, match="killed"):
        learner([Checkpoint(tmp_path, every_n_batches=1), CrashAt(1, 1)]).fit(2)
    resumed = learner()
    resumed.fit(2, resume_from=tmp_path)
    assert resumed.metrics["train_f1"] == done.metrics["train_f1"]
    assert resumed.metrics["f1"] == done.metrics["f1"]


class Counting:
    """update/compute/reset and nothing to save its state with."""

    def __init__(self):
        self.n = 0

    def update(self, preds, targets):
        self.n += len(targets)

    def compute(self):
        return self.n

    def reset(self):
        self.n = 0


def test_a_train_metric_without_state_dict_refuses_a_mid_epoch_resume(data, tmp_path):
    from pluglearn import Checkpoint
    from tests.helpers import CrashAt

    train, valid = data[0], data[1]

    def learner(plugins=()):
        counted = MetricAdapter(Counting(), "n", phases=("train",))
        return make_learner(make_model(), train, valid, [counted, *plugins])

    with pytest.raises(RuntimeError, match="killed"):
        learner([Checkpoint(tmp_path, every_n_batches=1), CrashAt(1, 1)]).fit(2)
    with pytest.raises(ValueError) as info:
        learner().fit(2, resume_from=tmp_path)
    assert first_line(info.value) == (
        "MetricAdapter[n]: the checkpoint was written in the middle of a train pass, and its "
        "metric (Counting) has no state_dict, so its train value cannot be resumed exactly: use a "
        "metric with state_dict (torchmetrics, torcheval), phases=('valid',), or resume from a "
        "checkpoint written at an epoch's end."
    )
