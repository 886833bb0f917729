"""The Learner's loop: event order, cancels, errors, fit-scoped plugins, modes, get_preds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pluglearn import (
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
    DataLoaders,
    Learner,
    hookimpl,
)
from tests.helpers import (
    EventLog,
    batch_events,
    batches,
    epoch_events,
    pass_events,
    tiny_data,
    tiny_learner,
)

FIT = ["before_fit", "after_fit", "cleanup_fit"]


def test_event_sequence_of_a_two_epoch_fit():
    log = EventLog()
    tiny_learner([log]).fit(2)  # 2 train batches, 1 valid batch per epoch
    assert log.events == [
        "after_create_opt",
        "before_fit",
        *epoch_events(),
        *epoch_events(),
        "after_fit",
        "cleanup_fit",
    ]


@pytest.mark.parametrize(
    ("exc", "raise_at", "expected"),
    [
        (
            CancelBatchException(),
            ("after_pred", 0, 0),  # batch 0 of both passes: skip loss, backward, ..., after_batch
            [
                "before_epoch",
                "before_train",
                "before_batch",
                "after_pred",
                "cleanup_batch",
                *batch_events(training=True),
                "after_train",
                "cleanup_train",
                "before_validate",
                "before_batch",
                "after_pred",
                "cleanup_batch",
                "after_validate",
                "cleanup_validate",
                "after_epoch",
                "cleanup_epoch",
            ],
        ),
        (
            CancelTrainException(),
            ("after_backward", 0, 0),  # end the train pass in its first batch; validation runs
            [
                "before_epoch",
                "before_train",
                "before_batch",
                "after_pred",
                "after_loss",
                "after_backward",
                "cleanup_batch",
                "cleanup_train",
                *pass_events("validate", 1),
                "after_epoch",
                "cleanup_epoch",
            ],
        ),
        (
            CancelValidateException(),
            ("before_validate", 0, None),
            [
                "before_epoch",
                *pass_events("train", 2),
                "before_validate",
                "cleanup_validate",
                "after_epoch",
                "cleanup_epoch",
            ],
        ),
        (
            CancelEpochException(),
            ("after_train", 0, None),  # validation and after_epoch are skipped
            ["before_epoch", *pass_events("train", 2), "cleanup_epoch"],
        ),
    ],
)
def test_cancel_ends_its_phase_only(exc, raise_at, expected):
    log = EventLog(raise_at, exc)
    tiny_learner([log]).fit(2)
    first_epoch = log.events[2 : 2 + len(expected)]
    assert first_epoch == expected
    assert log.events[2 + len(expected) :] == [*epoch_events(), "after_fit", "cleanup_fit"]


def test_cancel_fit_skips_after_fit_and_runs_cleanup():
    log = EventLog(("after_epoch", 0, None), CancelFitException())
    tiny_learner([log]).fit(3)
    assert log.events == [
        "after_create_opt",
        "before_fit",
        *epoch_events()[:-1],
        "cleanup_epoch",
        "cleanup_fit",
    ]


def test_error_runs_on_error_once_then_every_cleanup_with_a_note():
    log = EventLog(("after_loss", 1, 1), RuntimeError("boom"))
    learn = tiny_learner([log])
    with pytest.raises(RuntimeError, match="boom") as info:
        learn.fit(3)
    tail = log.events[log.events.index(("on_error", "RuntimeError")) - 1 :]
    assert tail == [
        "after_loss",
        ("on_error", "RuntimeError"),
        "cleanup_batch",
        "cleanup_train",
        "cleanup_epoch",
        "cleanup_fit",
    ]
    assert log.events.count(("on_error", "RuntimeError")) == 1
    note = "\n".join(info.value.__notes__)
    assert "plugin 'EventLog'" in note and "hook 'after_loss'" in note
    assert "epoch 1" in note and "train batch 1" in note


def test_error_outside_plugins_is_located_too():
    class Broken(nn.Module):
        def forward(self, x):
            raise ValueError("bad forward")

    x, y = tiny_data(8)
    learn = Learner(Broken(), DataLoaders(batches(x, y, 4)), defaults=False)
    learn.opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)  # Broken has no params
    with pytest.raises(ValueError, match="bad forward") as info:
        learn.fit(1)
    # the model is called from TrainStep.predict, the innermost plugin frame
    assert "plugin 'TrainStep', hook 'predict'" in info.value.__notes__[0]


def test_cleanup_hooks_all_run_even_when_one_raises():
    seen = []

    class Failing:
        @hookimpl
        def cleanup_fit(self):
            seen.append("failing")
            raise OSError("cleanup failed")

    class Closer:
        @hookimpl
        def cleanup_fit(self):
            seen.append("closer")

    with pytest.raises(OSError, match="cleanup failed"):
        tiny_learner([Failing(), Closer()]).fit(1)
    assert seen == ["failing", "closer"]


def test_fit_scoped_plugins_are_removed_after_success_and_after_error():
    learn = tiny_learner()
    before = learn.plugins
    log = EventLog()
    learn.fit(1, plugins=[log])
    assert log.events and learn.plugins == before
    failing = EventLog(("before_epoch", 0, None), KeyError("x"))
    with pytest.raises(KeyError):
        learn.fit(1, plugins=failing)
    assert learn.plugins == before and failing not in learn.plugins


def test_list_order_and_tryfirst_trylast():
    calls = []

    def make(name, **opts):
        class P:
            @hookimpl(**opts)
            def before_batch(self):
                calls.append(name)

        P.__name__ = name
        return P()

    learn = tiny_learner(
        [
            make("a"),
            make("z_last", trylast=True),
            make("b"),
            make("last", trylast=True),
            make("c"),
            make("first", tryfirst=True),
            make("z_first", tryfirst=True),
        ]
    )
    learn.fit(1)
    expected = ["first", "z_first", "a", "b", "c", "z_last", "last"]  # list order in each group
    assert calls[:7] == expected
    order = [line for line in learn.hooks_table().splitlines() if line.startswith("before_batch")]
    tag = {"first": " (tryfirst)", "z_first": " (tryfirst)", "z_last": " (trylast)"}
    tag["last"] = " (trylast)"
    assert order[0].split(None, 1)[1] == " -> ".join(n + tag.get(n, "") for n in expected)


def test_add_plugin_goes_after_user_plugins_and_before_defaults():
    learn = Learner(nn.Linear(4, 3), DataLoaders([]), plugins=[EventLog()])
    extra = EventLog()
    learn.add_plugin(extra)
    names = [type(p).__name__ for p in learn.plugins]
    defaults = ["AvgLoss", "ProgressBar", "TrainStep", "DefaultLoader", "Device"]
    assert names == ["EventLog", "EventLog", *defaults]
    assert learn.plugin("EventLog_2") is extra
    assert learn.remove_plugin("ProgressBar").__class__.__name__ == "ProgressBar"


def test_validation_runs_in_eval_mode_without_grad_and_training_in_train_mode():
    class ModeSpy(nn.Linear):
        def __init__(self):
            super().__init__(4, 3)
            self.seen = []

        def forward(self, x):
            self.seen.append((self.training, torch.is_grad_enabled()))
            return super().forward(x)

    x, y = tiny_data(12)
    model = ModeSpy()
    Learner(
        model, DataLoaders(batches(x[:8], y[:8], 4), batches(x[8:], y[8:], 4)), defaults=False
    ).fit(1)
    assert model.seen == [(True, True), (True, True), (False, False)]


def test_get_preds_equals_the_model_on_the_validation_set():
    learn = tiny_learner()
    learn.fit(1)
    preds, targets = learn.get_preds()
    x, y = tiny_data(12)
    torch.testing.assert_close(preds, learn.model(x[8:]).detach())
    assert torch.equal(targets, y[8:])
    assert "get_preds" not in [type(p).__name__ for p in learn.plugins]


def test_validate_returns_the_loss_averaged_per_item():
    learn = tiny_learner(n_valid=6, bs=4, defaults=True)  # valid batches of 4 and 2
    x, y = tiny_data(14)
    expected = nn.functional.cross_entropy(learn.model(x[8:]), y[8:]).item()
    assert learn.validate()["valid_loss"] == pytest.approx(expected, rel=1e-6)


def test_step_that_does_nothing_leaves_the_weights_unchanged():
    class NoStep:
        @hookimpl
        def step(self):
            return True

    learn = tiny_learner([NoStep()])
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(2)
    for old, new in zip(before, learn.model.parameters(), strict=True):
        assert torch.equal(old, new)


def test_fit_lr_sets_the_optimizer_lr():
    learn = tiny_learner()
    learn.fit(1, lr=0.05)
    assert learn.opt.param_groups[0]["lr"] == 0.05


@pytest.mark.parametrize("lr", ["0.1", None, float("nan"), -1.0, True])
def test_bad_learning_rate_is_refused(lr):
    with pytest.raises((TypeError, ValueError), match="lr must be"):
        Learner(nn.Linear(4, 3), DataLoaders([]), lr=lr)


def test_no_validation_data_is_a_clear_error_for_validate_and_skipped_by_fit():
    x, y = tiny_data(8)
    learn = Learner(nn.Linear(4, 3), DataLoaders(batches(x, y, 4)), defaults=True)
    learn.fit(1)
    assert "valid_loss" not in learn.metrics and "train_loss" in learn.metrics
    with pytest.raises(ValueError, match="no validation data"):
        learn.validate()


def test_a_batch_that_is_not_a_pair_is_a_clear_error():
    x, _ = tiny_data(8)
    learn = Learner(nn.Linear(4, 3), DataLoaders([x[:4]]), defaults=False)
    with pytest.raises(TypeError, match=r"\(xb, yb\) pair"):
        learn.fit(1)


def test_loaders_from_datasets_are_made_per_fit_and_released():
    x, y = tiny_data(10)
    dls = DataLoaders.from_datasets((x[:8], y[:8]), (x[8:], y[8:]), batch_size=4, seed=0)
    learn = Learner(nn.Linear(4, 3), dls, defaults=False)
    log = EventLog()
    learn.fit(1, plugins=[log])
    assert log.events.count("before_batch") == 2 + 1
    assert dls.train is None and dls.valid is None  # released after the fit


def test_ctrl_c_runs_on_error_and_every_cleanup_and_removes_fit_plugins():
    log = EventLog(("after_backward", 0, 1), KeyboardInterrupt())
    learn = tiny_learner()
    before = learn.plugins
    with pytest.raises(KeyboardInterrupt):
        learn.fit(2, plugins=[log])
    assert log.events[-5:] == [
        ("on_error", "KeyboardInterrupt"),
        "cleanup_batch",
        "cleanup_train",
        "cleanup_epoch",
        "cleanup_fit",
    ]
    assert learn.plugins == before


def test_a_failing_dataset_is_located_in_the_loader_and_cleaned_up():
    from pluglearn.scratch.data import Dataset

    class Broken(Dataset):
        def __getitem__(self, i):
            if i == 5:
                raise OSError("disk read failed")
            return super().__getitem__(i)

    x, y = tiny_data(12)
    dls = DataLoaders.from_datasets(Broken(x[:8], y[:8]), Broken(x[8:], y[8:]), 4, seed=0)
    log = EventLog()
    learn = Learner(nn.Linear(4, 3), dls, defaults=False)
    with pytest.raises(OSError, match="disk read failed") as info:
        learn.fit(1, plugins=[log])
    assert "outside any plugin (in the loader, the model or the loop), epoch 0" in str(
        info.value.__notes__
    )
    tail = [("on_error", "OSError"), "cleanup_train", "cleanup_epoch", "cleanup_fit"]
    assert log.events[-4:] == tail  # the fetch failed between batches: no batch was open
    assert dls.train is None  # the loaders made for the fit were released


def test_validate_asks_only_for_the_validation_loader():
    asked = []

    class Spy:
        @hookimpl
        def make_dataloader(self, dataset, train):
            asked.append(train)

    x, y = tiny_data(12)
    dls = DataLoaders.from_datasets((x[:8], y[:8]), (x[8:], y[8:]), 4, seed=0)
    Learner(nn.Linear(4, 3), dls, plugins=[Spy()], defaults=False).validate()
    assert asked == [False]


class RaiseAfterBackward:
    @hookimpl
    def after_backward(self, learn):
        raise RuntimeError("after the backward, before the step")


def test_a_fit_after_one_that_raised_between_backward_and_step_starts_with_no_gradient():
    crashed = tiny_learner()
    with pytest.raises(RuntimeError, match="before the step"):
        crashed.fit(1, plugins=[RaiseAfterBackward()])
    assert all(p.grad is not None for p in crashed.model.parameters())  # the batch's, left
    fresh = tiny_learner(seed=1)
    fresh.model.load_state_dict(crashed.model.state_dict())  # unchanged: no step was taken
    crashed.fit(2)
    fresh.fit(2)
    for key, value in fresh.model.state_dict().items():
        assert torch.equal(crashed.model.state_dict()[key], value), key
