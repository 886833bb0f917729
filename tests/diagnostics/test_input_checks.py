"""Bad inputs: each is an error of a known type whose message names the problem and the fix
(predictions against targets, losses, data, learning rates, what provider hooks answer)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner, hookimpl
from tests.helpers import batches, raised_by, tiny_data

X, Y = tiny_data(12)  # 4 inputs, 3 classes


TRAIN, VALID = batches(X[:8], Y[:8], 4), batches(X[8:], Y[8:], 4)


# A factory of this file's own: the tests give it batches of their own, malformed on purpose,
# which the shared make_learner (ready batches of tiny_data) cannot take.
def learner(train=TRAIN, valid=VALID, model=None, **kwargs) -> Learner:
    torch.manual_seed(0)
    model = model if model is not None else nn.Linear(4, 3)
    return Learner(model, DataLoaders(train, valid), defaults=False, **kwargs)


def test_targets_of_another_length_name_both_shapes_and_the_fix():
    text = raised_by(lambda: learner([(X[:4], Y[:5])]).fit(1), ValueError)
    assert "batch_size (4) to match target batch_size (5)" in text  # torch's own message
    assert "predictions of shape (4, 3) float32 and targets of shape (5,) int64" in text
    assert "4 items and the targets 5" in text and "every input needs one target" in text


def test_float_targets_of_another_shape_name_both_shapes_and_the_fix():
    soft = torch.rand(4, 2)
    text = raised_by(lambda: learner([(X[:4], soft)]).fit(1), RuntimeError)
    assert "float targets (4, 2) are read as class probabilities" in text
    assert "predictions' shape (4, 3)" in text and "y.long()" in text


def test_labels_beyond_the_classes_name_the_range_and_the_fix():
    labels = torch.tensor([0, 1, 5, 2])
    text = raised_by(lambda: learner([(X[:4], labels)]).fit(1), IndexError)
    assert "Target 5 is out of bounds" in text
    assert "class labels 0..5, but the predictions have 3 classes" in text
    assert "must lie in 0..2" in text and "last layer 6 outputs, or remap the labels" in text


def test_negative_labels_suggest_remapping_not_a_bigger_layer():
    labels = torch.tensor([0, -1, 1, 2])
    text = raised_by(lambda: learner([(X[:4], labels)]).fit(1), IndexError)
    assert "class labels -1..2" in text and "remap the labels" in text
    assert "outputs" not in text


def test_float_labels_ask_for_long():
    text = raised_by(lambda: learner([(X[:4], Y[:4].float())]).fit(1), RuntimeError)
    assert "float labels of shape (4,)" in text and "y.long()" in text


def test_a_loss_failure_the_check_cannot_explain_still_shows_both_shapes():
    def loss_func(preds, targets):
        raise ArithmeticError("my loss is broken")

    text = raised_by(lambda: learner(loss_func=loss_func).fit(1), ArithmeticError)
    assert "my loss is broken" in text
    assert "loss_func(preds, targets) failed on predictions of shape (4, 3)" in text
    assert "check that the loss function accepts these" in text


def test_an_empty_dataset_is_refused_when_the_loaders_are_built():
    empty = (torch.empty(0, 4), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"train_ds is empty: a dataset needs at least one item"):
        DataLoaders.from_datasets(empty, batch_size=4)
    with pytest.raises(ValueError, match=r"valid_ds is empty"):
        DataLoaders.from_datasets((X, Y), empty, batch_size=4)


@pytest.mark.parametrize(
    ("train", "valid", "which"), [([], VALID, "train"), (TRAIN, [], "validation")]
)
def test_an_empty_ready_loader_names_the_loader_and_the_likely_cause(train, valid, which):
    text = raised_by(lambda: learner(train, valid).fit(1), ValueError)
    assert f"the {which} loader yielded no batch" in text
    assert "is its dataset empty, or smaller than one batch with drop_last=True?" in text


def test_a_batch_that_is_not_a_pair_names_what_it_got_and_the_fix():
    text = raised_by(lambda: learner([(X[:4], Y[:4], torch.ones(4))]).fit(1), TypeError)
    assert "a batch must be an (xb, yb) pair, got a tuple of length 3" in text
    assert "make the dataset return (x, y) items" in text


def test_validate_without_validation_data_says_how_to_give_some():
    text = raised_by(learner(valid=None).validate, ValueError)
    assert "no validation data" in text and "learn.validate(dl=...)" in text


@pytest.mark.parametrize("lr", ["0.1", None, [0.1]])
def test_a_non_numeric_learning_rate_is_refused_at_construction_and_in_fit(lr):
    text = raised_by(lambda: learner(lr=lr), TypeError)
    assert f"lr must be a number, got {lr!r}" in text and "pass e.g. lr=0.1" in text
    # fit(lr=None) too (lr_find's missing suggestion): only an lr left out keeps learn.lr
    text = raised_by(lambda: learner().fit(1, lr=lr), TypeError)
    assert f"lr must be a number, got {lr!r}" in text


class LossAsFloat:
    @hookimpl
    def compute_loss(self, learn):
        return F.cross_entropy(learn.preds, learn.yb).item()


class StepSaysDone:
    @hookimpl
    def step(self, learn):
        return "done"


class BackwardSaysOne:
    @hookimpl
    def backward(self, learn):
        learn.loss.backward()
        return 1


class ZeroGradSaysDone:
    @hookimpl
    def zero_grad(self, learn):
        learn.opt.zero_grad()
        return "yes"


class ShouldStepSaysOne:
    @hookimpl
    def should_step(self, learn):
        return 1


@pytest.mark.parametrize(
    ("plugin", "expected"),
    [
        (LossAsFloat(), "'compute_loss' must return a tensor, got float: return the loss tensor"),
        (StepSaysDone(), "'step' must return True when done (or None to let the next plugin"),
        (BackwardSaysOne(), "'backward' must return True when done (or None to let the next"),
        (ZeroGradSaysDone(), "'zero_grad' must return True when done (or None to let the next"),
        (ShouldStepSaysOne(), "'should_step' must return True (step after this batch), False"),
    ],
)
def test_a_step_answering_the_wrong_type_names_the_hook_and_the_fix(plugin, expected):
    text = raised_by(lambda: learner(plugins=[plugin]).fit(1), TypeError)
    assert expected in text


def test_make_dataloader_answering_an_int_names_the_hook_and_the_fix():
    class IntLoader:
        @hookimpl
        def make_dataloader(self, learn, dataset, train):
            return 3

    dls = DataLoaders.from_datasets((X, Y), batch_size=4, seed=0)
    learn = Learner(nn.Linear(4, 3), dls, plugins=[IntLoader()], defaults=False)
    text = raised_by(lambda: learn.fit(1), TypeError)
    assert "'make_dataloader' gave int for the train dataset" in text
    assert "must return an iterable of batches (or None to pass)" in text


def test_a_loss_that_is_not_one_number_is_named_as_such_not_blamed_on_a_metric(make_learner):
    learn = make_learner(
        n_train=40, n_valid=8, bs=8, defaults=True, from_datasets=True, loader_seed=3
    )
    learn.loss_func = lambda preds, y: F.cross_entropy(preds, y, reduction="none")
    with pytest.raises(ValueError, match=r"the loss has shape \(8,\).*reduction='mean'") as info:
        learn.fit(1)
    assert "AvgLoss" not in "\n".join(info.value.__notes__)


@pytest.mark.slow
def test_regression_targets_that_would_broadcast_are_refused():
    torch.manual_seed(0)
    x = torch.randn(32, 3)
    y = x.sum(1)  # shape (32,), the model returns (32, 1)
    learn = Learner(nn.Linear(3, 1), DataLoaders.from_datasets((x, y), batch_size=8), F.mse_loss)
    with pytest.raises(ValueError, match=r"\(8, 1\) and float targets of shape \(8,\).*\(8, 8\)"):
        learn.fit(1)
    ok = Learner(
        nn.Linear(3, 1), DataLoaders.from_datasets((x, y[:, None]), batch_size=8), F.mse_loss
    )
    ok.fit(1)  # the same data with matching shapes trains
