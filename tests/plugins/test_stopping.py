"""TerminateOnNaN, EarlyStopping and SaveBest on real tiny fits, against hand-computed oracles."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import (
    Accuracy,
    AvgLoss,
    CancelFitException,
    Compile,
    hookimpl,
)
from pluglearn.checkpoint.plugin import Checkpoint
from pluglearn.checkpoint.weights import read_safetensors, read_weights
from pluglearn.plugins.stopping import (
    EarlyStopping,
    MetricNotFoundError,
    SaveBest,
    TerminateOnNaN,
)
from tests.helpers import EventLog, tiny_data

X, Y = tiny_data(12)  # the items of make_learner: X[:8] train, X[8:] validate


@pytest.fixture
def learner(make_learner):
    """The shared tiny Learner, 2 training batches of 4 (``X[:8]``) and one validating
    (``X[8:]``), with AvgLoss and no other defaults; ``valid=False``: no validation set."""
    return lambda plugins=(), lr=0.1, valid=True: make_learner(
        [AvgLoss(), *plugins], n_valid=4 if valid else 0, lr=lr
    )


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class Scripted:
    """Reports ``values[epoch]`` as the validation metric ``name``: a known metric sequence."""

    def __init__(self, values, name: str = "score") -> None:
        self.values, self.name = values, name

    @hookimpl
    def collect_metrics(self, learn, phase):
        return {self.name: self.values[learn.epoch]} if phase == "valid" else None


class EpochLog:
    """The oracle: every reported epoch's metrics and the model's weights at that moment."""

    def __init__(self) -> None:
        self.metrics: list[dict] = []
        self.weights: list[dict[str, torch.Tensor]] = []

    @hookimpl
    def report(self, learn, metrics):
        self.metrics.append(dict(metrics))
        self.weights.append(weights(learn.model))


class RaiseAt:
    """Raises ``exc`` at before_batch of (epoch, batch) in training."""

    def __init__(self, epoch: int, batch: int, exc: BaseException) -> None:
        self.at, self.exc = (epoch, batch), exc

    @hookimpl
    def before_batch(self, learn):
        if learn.training and (learn.epoch, learn.iter) == self.at:
            raise self.exc


# ------------------------------------------------------------------------------ TerminateOnNaN


class PoisonInput:
    """Replaces the inputs of one training batch by NaN, as corrupt data would."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch, True)
        self.before: dict[str, torch.Tensor] | None = None  # weights as that batch started

    @hookimpl
    def before_batch(self, learn):
        if (learn.epoch, learn.iter, learn.training) == self.at:
            self.before = weights(learn.model)
            learn.batch = (torch.full_like(learn.xb, float("nan")), learn.yb)


def test_terminate_on_nan_stops_before_the_nan_reaches_the_weights(learner):
    poison, log = PoisonInput(epoch=1, batch=1), EventLog()
    learn = learner([log, poison, TerminateOnNaN()])
    start = weights(learn.model)
    learn.fit(3)
    assert learn.stop_reason == "TerminateOnNaN: loss is nan at epoch 1, train batch 1"
    assert_weights_equal(weights(learn.model), poison.before)  # no step on the NaN batch
    assert not torch.equal(poison.before["weight"], start["weight"])  # it did train before
    assert log.events.count("before_epoch") == 2 and "after_fit" not in log.events
    # the oracle's premise: without the plugin the same batch ruins the weights
    unguarded = learner([PoisonInput(epoch=1, batch=1)])
    unguarded.fit(2)
    assert torch.isnan(unguarded.model.weight).all()


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), float("-inf")])
def test_terminate_on_nan_names_the_value_and_the_validation_batch(scale, learner):
    class ScaledLoss:  # a compute_loss provider whose loss goes bad on the validation batch
        @hookimpl
        def compute_loss(self, learn):
            loss = F.cross_entropy(learn.preds, learn.yb)
            return loss * scale if (learn.epoch, learn.training) == (1, False) else loss

    learn = learner([ScaledLoss(), TerminateOnNaN()])
    learn.fit(4)
    assert learn.stop_reason == f"TerminateOnNaN: loss is {scale} at epoch 1, validation batch 0"


def test_terminate_on_nan_does_nothing_outside_a_fit(learner):
    learn = learner([TerminateOnNaN()])
    learn.fit(1)
    nan_valid = [(torch.full_like(X[8:], float("nan")), Y[8:])]
    assert torch.isnan(torch.tensor(learn.validate(nan_valid)["valid_loss"]))


# ------------------------------------------------------------------------------ EarlyStopping


def test_constant_valid_loss_stops_after_patience_plus_one_epochs(learner):
    log = EpochLog()
    learn = learner([log, EarlyStopping(patience=2)], lr=0.0)  # lr 0: nothing changes
    learn.fit(10)
    assert [m["epoch"] for m in log.metrics] == [0, 1, 2]
    expected = F.cross_entropy(learn.model(X[8:]), Y[8:]).item()  # the oracle, by torch
    assert log.metrics[0]["valid_loss"] == pytest.approx(expected, rel=1e-6)
    assert learn.stop_reason == (
        f"EarlyStopping: valid_loss did not improve for 2 epochs (best {expected:.4g} at epoch 0)"
    )


@pytest.mark.parametrize(
    ("values", "kwargs", "epochs_run", "best", "best_epoch"),
    [
        # improves at 1 and 3, then 3 epochs without: stops after epoch 6
        ([1.0, 0.9, 0.95, 0.8, 0.85, 0.86, 0.87, 0.1, 0.1], {"patience": 3}, 7, 0.8, 3),
        # changes smaller than min_delta do not count
        ([1.0, 0.95, 0.92, 0.91, 0.5], {"patience": 2, "min_delta": 0.1}, 3, 1.0, 0),
        # "max" by choice: a rising score keeps training
        ([0.5, 0.6, 0.7, 0.7, 0.65, 0.9], {"patience": 2, "mode": "max"}, 5, 0.7, 2),
        # the same rising score with "min" stops at once
        ([0.5, 0.6, 0.7, 0.7, 0.65, 0.9], {"patience": 2, "mode": "min"}, 3, 0.5, 0),
        # a NaN epoch never improves
        ([1.0, float("nan"), float("nan"), 0.5], {"patience": 2}, 3, 1.0, 0),
    ],
)
def test_early_stopping_counts_epochs_without_improvement(
    values, kwargs, epochs_run, best, best_epoch, learner
):
    log, stop = EpochLog(), EarlyStopping("score", **kwargs)
    learn = learner([Scripted(values), log, stop])
    learn.fit(len(values))
    assert len(log.metrics) == epochs_run
    assert (stop.best, stop.best_epoch, stop.wait) == (best, best_epoch, kwargs["patience"])
    assert learn.stop_reason == (
        f"EarlyStopping: score did not improve for {kwargs['patience']} epochs "
        f"(best {best:.4g} at epoch {best_epoch})"
    )


def test_accuracy_is_maximised_by_default(learner):
    stop = EarlyStopping("accuracy", patience=1)
    learn = learner([Accuracy(), stop], lr=0.0)
    learn.fit(5)
    accuracy = (learn.model(X[8:]).argmax(1) == Y[8:]).float().mean().item()
    assert stop.mode == "max" and EarlyStopping().mode == "min"
    assert learn.stop_reason == (
        f"EarlyStopping: accuracy did not improve for 1 epochs (best {accuracy:.4g} at epoch 0)"
    )


def test_patience_running_out_on_the_last_epoch_lets_the_fit_end_normally(learner):
    log = EventLog()
    learn = learner([log, EarlyStopping(patience=2)], lr=0.0)
    learn.fit(3)
    assert learn.stop_reason is None and log.events[-2:] == ["after_fit", "cleanup_fit"]


def test_each_fit_starts_afresh(learner):
    log = EpochLog()
    learn = learner([log, EarlyStopping(patience=1)], lr=0.0)
    learn.fit(5)
    learn.fit(5)  # would stop after its first epoch if the exhausted patience carried over
    assert [m["epoch"] for m in log.metrics] == [0, 1, 0, 1]


def test_a_missing_metric_names_the_available_ones_and_the_fix(learner):
    with pytest.raises(KeyError) as info:
        learner([EarlyStopping("valid_acc")]).fit(1)
    assert isinstance(info.value, MetricNotFoundError)
    message = str(info.value)
    assert "'valid_acc'" in message and "train_loss, valid_loss" in message
    assert "pass monitor=" in message and "Accuracy()" in message
    with pytest.raises(KeyError, match=r"validation metrics need validation data"):
        learner([SaveBest()], valid=False).fit(1)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: EarlyStopping(patience=0), r"patience=0.*positive int"),
        (lambda: EarlyStopping(patience=2.5), r"patience=2.5"),
        (lambda: EarlyStopping(mode="lowest"), r"mode='lowest'.*'min'.*'max'"),
        (lambda: EarlyStopping(min_delta=-0.1), r"min_delta=-0.1.*>= 0"),
        (lambda: EarlyStopping(monitor=""), r"monitor=''.*metric name"),
        (lambda: SaveBest(monitor=3), r"monitor=3"),
        (lambda: SaveBest(restore="yes"), r"restore='yes'.*True or False"),
    ],
)
def test_bad_arguments_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_early_stopping_state_roundtrips_through_a_safe_load(learner):
    stop = EarlyStopping("score", patience=5)
    learn = learner([Scripted([1.0, 0.5, 0.7, 0.8]), stop])
    learn.fit(4)
    state = roundtrip(stop.state_dict())
    assert state == {"monitor": "score", "mode": "min", "best": 0.5, "best_epoch": 1, "wait": 2}
    fresh = EarlyStopping("score", patience=5)
    fresh.load_state_dict(learn, state)
    assert (fresh.best, fresh.best_epoch, fresh.wait) == (0.5, 1, 2)
    other = EarlyStopping("valid_loss")
    with pytest.warns(UserWarning, match="ignored"):
        other.load_state_dict(learn, state)
    assert other.best is None


def test_a_resumed_fit_stops_where_an_uninterrupted_one_does(tmp_path, learner):
    values = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99]  # stops after epoch 4 with patience 3

    def run(plugins, **fit_kwargs):
        log = EpochLog()
        learn = learner([Scripted(values), log, EarlyStopping("score", patience=3)])
        learn.fit(len(values), plugins=plugins, **fit_kwargs)
        return learn, [m["epoch"] for m in log.metrics]

    whole, epochs = run([])
    assert epochs == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="killed"):  # dies as epoch 3 starts
        run([Checkpoint(tmp_path, on_interrupt=False), RaiseAt(3, 0, RuntimeError("killed"))])
    resumed, epochs = run([], resume_from=tmp_path)
    assert epochs == [3, 4] and resumed.stop_reason == whole.stop_reason


# ---------------------------------------------------------------------------------- SaveBest


VALUES = [3.0, 1.0, 2.0, 4.0, 5.0]  # the best epoch is 1, in the middle


@pytest.mark.parametrize(
    ("ender", "raises"),
    [
        (None, None),
        (RaiseAt(3, 1, RuntimeError("boom")), RuntimeError),
        (RaiseAt(3, 1, KeyboardInterrupt()), KeyboardInterrupt),
        (RaiseAt(3, 1, CancelFitException("enough")), None),
    ],
    ids=["normal-end", "error", "ctrl-c", "cancel-fit"],
)
def test_save_best_restores_the_best_epoch_however_the_fit_ends(ender, raises, learner):
    log, save = EpochLog(), SaveBest("score")
    learn = learner([Scripted(VALUES), log, save])
    plugins = [ender] if ender is not None else []
    if raises is None:
        learn.fit(len(VALUES), plugins=plugins)
    else:
        with pytest.raises(raises):
            learn.fit(len(VALUES), plugins=plugins)
    assert (save.best, save.best_epoch) == (1.0, 1)
    assert_weights_equal(weights(learn.model), log.weights[1])
    assert not torch.equal(log.weights[1]["weight"], log.weights[-1]["weight"])


def test_save_best_on_a_real_metric_keeps_the_argmax_epoch(learner):
    log, save = EpochLog(), SaveBest("accuracy")
    learner([Accuracy(), log, save], lr=2.0).fit(6)
    scores = [m["accuracy"] for m in log.metrics]
    best = scores.index(max(scores))  # the first epoch that reaches the maximum
    assert (save.best, save.best_epoch) == (scores[best], best)
    assert_weights_equal(save.weights, log.weights[best])


def test_without_restore_the_model_keeps_its_last_weights_and_the_copy_is_cloned_on_cpu(learner):
    log, save = EpochLog(), SaveBest("score", restore=False)
    learn = learner([Scripted(VALUES), log, save])
    learn.fit(len(VALUES))
    assert_weights_equal(weights(learn.model), log.weights[-1])
    assert_weights_equal(save.weights, log.weights[1])
    assert all(t.device.type == "cpu" for t in save.weights.values())
    with torch.no_grad():
        learn.model.weight.add_(1.0)  # the copy does not share storage with the model
    assert_weights_equal(save.weights, log.weights[1])


def test_save_best_state_roundtrips_through_a_safe_load_and_survives_a_resume(tmp_path, learner):
    def run(plugins, **fit_kwargs):
        log, save = EpochLog(), SaveBest("score")
        learn = learner([Scripted(VALUES), log, save])
        learn.fit(len(VALUES), plugins=plugins, **fit_kwargs)
        return learn, save, log

    _, save, log = run([])
    state = roundtrip(save.state_dict())
    assert (state["best"], state["best_epoch"]) == (1.0, 1)
    assert_weights_equal(state["weights"], log.weights[1])
    with pytest.raises(RuntimeError, match="killed"):
        run([Checkpoint(tmp_path, on_interrupt=False), RaiseAt(3, 0, RuntimeError("killed"))])
    resumed, save, _ = run([], resume_from=tmp_path)  # epochs 3 and 4 only: the best is older
    assert (save.best, save.best_epoch) == (1.0, 1)
    assert_weights_equal(weights(resumed.model), log.weights[1])


# ------------------------------------------------------------------------- SaveBest(path=...)


def file_weights(path) -> dict[str, torch.Tensor]:
    return dict(read_weights(path))


def test_save_best_writes_each_new_best_to_its_file_atomically_with_metadata(tmp_path, learner):
    path = tmp_path / "best" / "model.safetensors"  # its folder is made
    log, save = EpochLog(), SaveBest("score", path=path)
    written = []

    class Watch:  # after SaveBest's report: what the file holds at each epoch
        @hookimpl
        def after_epoch(self, learn):
            written.append(file_weights(path))

    learn = learner([Scripted(VALUES), log, save, Watch()])
    learn.fit(len(VALUES))
    assert_weights_equal(written[0], log.weights[0])
    for epoch in range(1, len(VALUES)):  # epoch 1 is the best: the file keeps it from then on
        assert_weights_equal(written[epoch], log.weights[1])
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temporary left
    meta = read_safetensors(path)[1]
    assert (meta["monitor"], meta["mode"], meta["best"], meta["best_epoch"]) == (
        "score",
        "min",
        "1.0",
        "1",
    )
    fresh = learner([])
    fresh.load(path)  # learn.load reads it back into a plain model
    assert_weights_equal(weights(fresh.model), log.weights[1])


def test_save_best_file_keys_are_the_plain_models_under_compile(tmp_path, learner):
    path = tmp_path / "best.safetensors"
    learn = learner([Scripted(VALUES), SaveBest("score", path=path)])
    learn.fit(2, plugins=[Compile(backend="eager")])
    assert sorted(file_weights(path)) == ["bias", "weight"]


def test_a_resumed_run_keeps_the_best_of_before_the_crash_in_its_file(tmp_path, learner):
    whole_path, path = tmp_path / "whole.safetensors", tmp_path / "run.safetensors"
    whole = learner([Scripted(VALUES), SaveBest("score", path=whole_path)])
    whole.fit(len(VALUES))

    def run(plugins, **fit_kwargs):
        learn = learner([Scripted(VALUES), SaveBest("score", path=path)])
        learn.fit(len(VALUES), plugins=plugins, **fit_kwargs)
        return learn

    ckpt = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="killed"):  # dies after the best epoch (1) was written
        run([Checkpoint(ckpt, on_interrupt=False), RaiseAt(3, 0, RuntimeError("killed"))])
    before = file_weights(path)
    resumed = run([], resume_from=ckpt)  # epochs 3 and 4: no better one
    assert_weights_equal(file_weights(path), before)
    assert_weights_equal(file_weights(path), file_weights(whole_path))
    assert_weights_equal(weights(resumed.model), file_weights(whole_path))  # restored too


@pytest.mark.parametrize(
    ("path", "match"),
    [(3, r"SaveBest\(path=3\): give a file path"), (".", r"SaveBest\(path='.'\) is a directory")],
)
def test_save_best_refuses_a_path_that_is_no_file_path(path, match):
    with pytest.raises(ValueError, match=match):
        SaveBest(path=path)
