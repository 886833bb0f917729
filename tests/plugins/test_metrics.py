"""AvgLoss, Accuracy, AverageMetric and MetricAdapter against hand computations and torchmetrics."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import (
    Accuracy,
    AverageMetric,
    AvgLoss,
    Checkpoint,
    DataLoaders,
    Learner,
    MetricAdapter,
    ProgressBar,
    Recorder,
    hookimpl,
)
from pluglearn.plugins.metrics import PerPass
from tests.helpers import CrashAt, first_line

K = 3  # classes

# torchmetrics costs a second to import: imported by the tests that build its metrics (run by
# one xdist worker, this group), not at collection, where every worker would pay it
TORCHMETRICS = pytest.mark.xdist_group("torchmetrics")


def multiclass_accuracy(**options):
    """torchmetrics' ``MulticlassAccuracy`` over the K classes."""
    from torchmetrics.classification import MulticlassAccuracy

    return MulticlassAccuracy(num_classes=K, **options)


def multiclass_f1(**options):
    """torchmetrics' ``MulticlassF1Score`` over the K classes."""
    from torchmetrics.classification import MulticlassF1Score

    return MulticlassF1Score(num_classes=K, **options)


def make_data(n: int, seed: int, d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, K, (n,), generator=g)


def batches(x: torch.Tensor, y: torch.Tensor, bs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, K))


def hit_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The oracle of accuracy: the fraction of arg-max predictions equal to the targets."""
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


# Not the shared make_learner: the model and batches are the test's.
def make_learner(model: nn.Module, train, valid, plugins=(), lr: float = 0.3) -> Learner:
    """A Learner over ready lists of batches, with a silent progress bar."""
    return Learner(
        model, DataLoaders(train, valid), lr=lr, plugins=[*plugins, ProgressBar(file=io.StringIO())]
    )


@pytest.fixture
def data():
    """10 training items in batches 4, 4, 2; 7 validation items in batches 4, 3 (both ragged)."""
    xt, yt = make_data(10, seed=1)
    xv, yv = make_data(7, seed=2)
    return batches(xt, yt, 4), batches(xv, yv, 4), (xt, yt), (xv, yv)


# ------------------------------------------------------------------------------------- AvgLoss


def test_avg_loss_is_the_per_item_average_over_ragged_batches(data):
    train, valid, _, _ = data
    assert [len(yb) for _, yb in train] == [4, 4, 2]
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    learn = make_learner(model, train, valid, lr=0.0)  # lr=0: the weights never change
    learn.fit(1)

    with torch.no_grad():
        train_sum = sum(F.cross_entropy(model(xb), yb, reduction="sum").item() for xb, yb in train)
        valid_sum = sum(F.cross_entropy(model(xb), yb, reduction="sum").item() for xb, yb in valid)
        batch_means = [F.cross_entropy(model(xb), yb).item() for xb, yb in train]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert learn.metrics["train_loss"] == pytest.approx(train_sum / 10, rel=1e-6)
    assert learn.metrics["valid_loss"] == pytest.approx(valid_sum / 7, rel=1e-6)
    # the test discriminates: the mean of the batch means is another number
    assert sum(batch_means) / 3 != pytest.approx(train_sum / 10, rel=1e-4)


def test_train_loss_is_the_loss_of_the_model_before_each_step(data):
    train, valid, _, _ = data
    model = make_model()
    ref = copy.deepcopy(model)
    learn = make_learner(model, train, valid, lr=0.5)
    learn.fit(1)

    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    total = 0.0
    for xb, yb in train:  # the hand-written loop: record the loss, then step
        loss = F.cross_entropy(ref(xb), yb)
        total += loss.item() * len(yb)
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        valid_sum = sum(F.cross_entropy(ref(xb), yb, reduction="sum").item() for xb, yb in valid)
    assert learn.metrics["train_loss"] == pytest.approx(total / 10, rel=1e-6)
    assert learn.metrics["valid_loss"] == pytest.approx(valid_sum / 7, rel=1e-6)


def test_each_epoch_s_train_loss_and_accuracy_cover_that_epoch_s_batches_only(data):
    train, valid, _, _ = data
    model = make_model()
    ref = copy.deepcopy(model)
    learn = make_learner(model, train, valid, [Accuracy(phases=("train", "valid")), Recorder()])
    learn.fit(2)

    opt = torch.optim.SGD(ref.parameters(), lr=0.3)
    expected = []
    for _ in range(2):  # the hand-written loop, its sums started afresh every epoch
        loss_sum, hits = 0.0, 0
        for xb, yb in train:
            preds = ref(xb)
            loss = F.cross_entropy(preds, yb)
            loss_sum += loss.item() * len(yb)
            hits += (preds.argmax(1) == yb).sum().item()
            loss.backward()
            opt.step()
            opt.zero_grad()
        expected.append((loss_sum / 10, hits / 10))
    epochs = learn.plugin("Recorder").epochs
    for epoch, (loss, accuracy) in zip(epochs, expected, strict=True):
        assert epoch["train_loss"] == pytest.approx(loss, rel=1e-6)
        assert epoch["train_accuracy"] == pytest.approx(accuracy)
    assert expected[0] != pytest.approx(expected[1])  # the epochs differ: the test tells them apart


class DoubledLoss(AvgLoss):
    """A subclass with its own batch_sum: AvgLoss's fast path must not bypass it."""

    def metric_name(self, phase: str) -> str:
        return f"{phase}_doubled"

    def batch_sum(self, learn):
        n = len(learn.batch[1])
        return 2 * learn.loss.item() * n, n


def test_a_subclass_s_own_batch_sum_is_used(data):
    train, valid, _, _ = data
    model = make_model()
    learn = make_learner(model, train, valid, plugins=[DoubledLoss()], lr=0.0)
    learn.fit(1)
    assert learn.metrics["valid_doubled"] == pytest.approx(2 * learn.metrics["valid_loss"])
    assert learn.metrics["train_doubled"] == pytest.approx(2 * learn.metrics["train_loss"])


def test_avg_loss_counts_a_dict_batch_by_its_labels():
    x, y = make_data(6, seed=3)
    model = make_model()

    class DictStep:
        @hookimpl
        def before_batch(self, learn):
            xb, yb = learn.batch
            learn.batch = {"x": xb, "labels": yb}

        @hookimpl
        def predict(self, learn):
            return learn.model(learn.batch["x"])

        @hookimpl
        def compute_loss(self, learn):
            return F.cross_entropy(learn.preds, learn.batch["labels"])

    learn = make_learner(model, batches(x, y, 4), batches(x, y, 4), [DictStep()], lr=0.0)
    learn.fit(1)
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, reduction="sum").item() / 6
    assert learn.metrics["valid_loss"] == pytest.approx(expected, rel=1e-6)


def test_avg_loss_is_a_default_and_reports_per_phase_names(data):
    train, valid, _, _ = data
    learn = make_learner(make_model(), train, valid)
    assert any(type(p) is AvgLoss for p in learn.plugins)
    learn.fit(1)
    assert list(learn.metrics) == ["epoch", "train_loss", "valid_loss", "time"]


# ------------------------------------------------------------------------------------ Accuracy


def test_accuracy_is_the_argmax_hit_rate_over_the_validation_set(data):
    train, valid, _, (xv, yv) = data
    model = make_model()
    learn = make_learner(model, train, valid, plugins=[Accuracy()])
    learn.fit(2)
    with torch.no_grad():  # validation is the last pass: the final model made the predictions
        expected = (model(xv).argmax(dim=1) == yv).float().mean().item()
        per_batch = [(model(xb).argmax(1) == yb).float().mean().item() for xb, yb in valid]
    assert learn.metrics["accuracy"] == pytest.approx(expected)
    assert "train_accuracy" not in learn.metrics
    # per item, not per batch (batches 4 and 3 weigh differently)
    if sum(per_batch) / 2 != pytest.approx(expected):
        assert learn.metrics["accuracy"] != pytest.approx(sum(per_batch) / 2)


def test_accuracy_with_train_phase_reports_train_accuracy(data):
    train, valid, (xt, yt), (xv, yv) = data
    model = make_model()
    learn = make_learner(model, train, valid, plugins=[Accuracy(phases=("train", "valid"))], lr=0)
    learn.fit(1)
    assert learn.metrics["train_accuracy"] == pytest.approx(hit_rate(model, xt, yt))
    assert learn.metrics["accuracy"] == pytest.approx(hit_rate(model, xv, yv))


def test_a_metric_given_a_name_reports_under_it_in_both_passes(data):
    train, valid, (xt, yt), (xv, yv) = data
    model = make_model()
    hits = Accuracy(name="hits", phases=("train", "valid"))
    learn = make_learner(model, train, valid, plugins=[hits], lr=0)
    learn.fit(1)
    assert {"train_hits", "hits"} <= set(learn.metrics)
    assert "accuracy" not in learn.metrics and "train_accuracy" not in learn.metrics
    assert learn.metrics["train_hits"] == pytest.approx(hit_rate(model, xt, yt))
    assert learn.metrics["hits"] == pytest.approx(hit_rate(model, xv, yv))


def test_accuracy_rejects_one_dimensional_predictions(data):
    train, _, _, _ = data
    model = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))  # preds of shape (n,)
    regression = [(xb, yb.float()) for xb, yb in train]
    learn = Learner(
        model,
        DataLoaders(regression, regression),
        loss_func=F.mse_loss,
        plugins=[Accuracy(), ProgressBar(file=io.StringIO())],
    )
    with pytest.raises(ValueError, match=r"Accuracy expects predictions \(n, classes\)") as info:
        learn.fit(1)
    assert "(4,)" in str(info.value)


def test_accuracy_rejects_targets_of_the_wrong_shape(data):
    train, _, _, _ = data
    column = [(xb, yb.unsqueeze(1)) for xb, yb in train]  # targets (n, 1)
    learn = Learner(
        make_model(),
        DataLoaders(column, column),
        loss_func=lambda preds, y: F.cross_entropy(preds, y.squeeze(1)),
        plugins=[Accuracy(), ProgressBar(file=io.StringIO())],
    )
    with pytest.raises(ValueError, match=r"targets \(n,\)") as info:
        learn.fit(1)
    assert "(4, 3) and (4, 1)" in str(info.value)


# ------------------------------------------------------------------------------- AverageMetric


class MeanAbsError(AverageMetric):
    name = "mae"

    def batch_sum(self, learn):
        return (learn.preds - learn.yb).abs().sum().item(), len(learn.yb)


def test_average_metric_subclass_is_a_per_item_average():
    torch.manual_seed(0)
    x, y = torch.randn(11, 2), torch.randn(11)
    model = nn.Sequential(nn.Linear(2, 1), nn.Flatten(0))
    dl = batches(x, y, 3)  # 3, 3, 3, 2
    learn = Learner(
        model,
        DataLoaders(dl, dl),
        loss_func=F.mse_loss,
        defaults=False,
        plugins=[MeanAbsError(phases=("train", "valid"))],
    )
    learn.fit(1)
    with torch.no_grad():
        expected = F.l1_loss(model(x), y).item()
    assert learn.metrics["mae"] == pytest.approx(expected, rel=1e-6)
    assert "train_mae" in learn.metrics


def test_average_metric_without_batch_sum_says_so(data):
    train, valid, _, _ = data
    learn = make_learner(make_model(), train, valid, plugins=[AverageMetric()])
    with pytest.raises(NotImplementedError, match="must implement batch_sum"):
        learn.fit(1)


BAD_PHASES = [("test",), (), ("train", "eval"), "valid"]


@TORCHMETRICS
@pytest.mark.parametrize("phases", BAD_PHASES)
@pytest.mark.parametrize(
    "make",
    [
        lambda phases: Accuracy(phases=phases),
        lambda phases: MetricAdapter(multiclass_accuracy(), phases=phases),
    ],
    ids=["Accuracy", "MetricAdapter"],
)
def test_bad_phases_raise(make, phases):
    with pytest.raises(ValueError, match="phases must be a non-empty subset of"):
        make(phases)


# --------------------------------------------------------------------------- name collisions


@TORCHMETRICS
@pytest.mark.parametrize(
    ("second", "second_name"),
    [
        (lambda: Accuracy(), "Accuracy_2"),
        (
            lambda: MetricAdapter(multiclass_accuracy(average="micro"), name="accuracy"),
            "MetricAdapter[accuracy]",
        ),
    ],
    ids=["two-Accuracy", "Accuracy-and-adapter"],
)
def test_two_plugins_reporting_one_name_is_an_error_naming_both(data, second, second_name):
    train, valid, _, _ = data
    learn = make_learner(make_model(), train, valid, plugins=[Accuracy(), second()])
    with pytest.raises(ValueError, match="metric 'accuracy' is reported by both") as info:
        learn.fit(1)
    assert "'Accuracy'" in str(info.value)
    assert f"'{second_name}'" in str(info.value)


@TORCHMETRICS
def test_validate_after_fit_does_not_remember_removed_metric_owners(data):
    train, valid, _, (xv, yv) = data
    model = make_model()
    learn = make_learner(model, train, valid)
    learn.fit(1, plugins=[Accuracy()])  # Accuracy lives for this fit only
    learn.add_plugin(MetricAdapter(multiclass_accuracy(average="micro"), "accuracy"))
    metrics = learn.validate()
    assert metrics["accuracy"] == pytest.approx(hit_rate(model, xv, yv))


def test_two_plugins_reporting_one_name_is_refused_with_the_whole_message(data):
    train, valid, _, _ = data
    learn = make_learner(make_model(), train, valid, plugins=[Accuracy(), Accuracy()])
    with pytest.raises(ValueError) as info:
        learn.fit(1)
    assert first_line(info.value) == (
        "metric 'accuracy' is reported by both 'Accuracy' and 'Accuracy_2': give one of them "
        "another name (e.g. its name= argument)."
    )


class Listing:
    """A metric plugin that answers a list instead of a dict."""

    @hookimpl
    def collect_metrics(self, phase):
        return [0.5]


def test_a_collect_metrics_answer_that_is_no_dict_is_refused_naming_the_plugin_and_type(data):
    train, valid, _, _ = data
    learn = make_learner(make_model(), train, valid, plugins=[Listing()])
    with pytest.raises(TypeError) as info:
        learn.validate()
    assert first_line(info.value) == (
        "plugin 'Listing': 'collect_metrics' must return a dict of metrics or None, got list."
    )


class LrMetric:
    """Reports the optimizer's lr at the end of every pass: reads the Learner it is given."""

    @hookimpl
    def collect_metrics(self, learn, phase):
        lr = learn.opt.param_groups[0]["lr"]
        return {"lr" if phase == "valid" else "train_lr": lr}


def test_collect_metrics_is_asked_with_the_learner(data):
    train, valid, _, _ = data
    learn = make_learner(make_model(), train, valid, plugins=[LrMetric()], lr=0.25)
    learn.fit(1)
    assert learn.metrics["train_lr"] == 0.25 and learn.metrics["lr"] == 0.25


# ------------------------------------------------------------- counting, refusals, empty passes


class IgnoredTargets:
    """Counts the items whose target the loss does not ignore (its ``ignore_index``, read from
    the Learner's loss function): the per-item average of a loss that skips them."""

    @hookimpl
    def count_items(self, learn, batch):
        return int((batch[1] != learn.loss_func.ignore_index).sum())


def with_ignored_targets(y: torch.Tensor) -> torch.Tensor:
    """``y`` with every third target set to -1, the loss's ignore_index below."""
    y = y.clone()
    y[::3] = -1
    return y


def test_count_items_is_asked_with_the_learner_and_weighs_the_loss(data):
    # cross entropy with ignore_index averages over the targets it keeps: so must valid_loss
    train, valid, _, (xv, yv) = data
    yv = with_ignored_targets(yv)  # batches of 4 and 3 keep 2 and 2 items
    valid = batches(xv, yv, 4)
    model = make_model()
    loss = nn.CrossEntropyLoss(ignore_index=-1)
    learn = Learner(
        model,
        DataLoaders(train, valid),
        loss_func=loss,
        lr=0.3,
        plugins=[IgnoredTargets(), ProgressBar(file=io.StringIO())],
    )
    learn.fit(1)
    with torch.no_grad():
        expected = loss(model(xv), yv).item()
        per_batch_size = sum(loss(model(xb), yb).item() * len(yb) for xb, yb in valid) / 7
    assert learn.metrics["valid_loss"] == pytest.approx(expected, rel=1e-6)
    assert per_batch_size != pytest.approx(expected, rel=1e-3)  # the count makes a difference


class OwnStep:
    """Predicts and computes the loss in place of TrainStep, and counts no batch."""

    @hookimpl
    def predict(self, learn):
        return learn.model(learn.batch[0])

    @hookimpl
    def compute_loss(self, learn):
        return F.cross_entropy(learn.preds, learn.batch[1])

    @hookimpl
    def count_items(self, batch):
        return None


def test_avg_loss_refuses_a_batch_no_plugin_counts(data):
    train, valid, _, _ = data
    learn = make_learner(make_model(), train, valid, plugins=[OwnStep()])
    learn.remove_plugin("TrainStep")
    with pytest.raises(TypeError) as info:
        learn.validate()
    assert first_line(info.value) == "no plugin answered 'count_items' (every one returned None)"


class Unfinished(AverageMetric):
    name = "unfinished"


def test_an_average_metric_without_batch_sum_names_the_class_that_must_implement_it(data):
    train, valid, _, _ = data
    learn = make_learner(make_model(), train, valid, plugins=[Unfinished()])
    with pytest.raises(NotImplementedError) as info:
        learn.validate()
    assert first_line(info.value) == "Unfinished must implement batch_sum(learn)"


class BatchesSeen(PerPass):
    """A per-pass plugin that forgot its ``_reset``."""

    @hookimpl
    def after_loss(self, learn):
        pass


def test_a_per_pass_plugin_without_reset_names_the_class_that_must_implement_it(data):
    train, valid, _, _ = data
    learn = make_learner(make_model(), train, valid, plugins=[BatchesSeen()])
    with pytest.raises(NotImplementedError) as info:
        learn.validate()
    assert first_line(info.value) == "BatchesSeen must implement _reset(phase)"


def test_a_pass_that_counts_no_item_reports_no_average_and_one_item_is_an_average(data):
    # a loader whose batches hold no item (a filtered dataset, a rank's empty slices): no
    # number to average, so no metric, rather than a division by zero
    train, valid, _, (xv, yv) = data
    model = make_model()
    learn = make_learner(model, train, valid, plugins=[Accuracy()])
    assert learn.validate(dl=[(xv[:0], yv[:0]), (xv[:0], yv[:0])]) == {}
    assert learn.metrics == {}
    one = learn.validate(dl=[(xv[:1], yv[:1])])
    with torch.no_grad():
        loss = F.cross_entropy(model(xv[:1]), yv[:1]).item()
    assert one == {"accuracy": hit_rate(model, xv[:1], yv[:1]), "valid_loss": pytest.approx(loss)}


# --------------------------------------------------------------------------- mid-epoch resume


def resumable(plugins=()) -> Learner:
    """40 shuffled training items in batches of 8, 12 validating, Accuracy of both passes."""
    xt, yt = make_data(40, seed=5)
    xv, yv = make_data(12, seed=6)
    dls = DataLoaders.from_datasets((xt, yt), (xv, yv), batch_size=8, seed=3)
    quiet = ProgressBar(file=io.StringIO())
    plugins = [Accuracy(phases=("train", "valid")), Recorder(), quiet, *plugins]
    return Learner(make_model(), dls, lr=0.5, plugins=plugins)


def test_train_loss_and_accuracy_resumed_mid_epoch_report_the_uninterrupted_values(tmp_path):
    # the sums restored from the checkpoint are kept by the resumed train pass (not reset), and
    # every new epoch starts from zero
    done = resumable()
    done.fit(3)
    with pytest.raises(RuntimeError, match="killed"):
        resumable([Checkpoint(tmp_path, every_n_batches=1), CrashAt(1, 2)]).fit(3)
    resumed = resumable()
    resumed.fit(3, resume_from=tmp_path)

    def values(learn):
        return [
            {k: v for k, v in e.items() if k != "time"} for e in learn.plugin("Recorder").epochs
        ]

    assert values(resumed) == values(done)
    assert values(done)[-1].keys() >= {"train_loss", "train_accuracy", "valid_loss"}
