"""ProgressBar: one line per epoch off a terminal, tqdm bars on one, bars closed after errors."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from pluglearn import DataLoaders, Learner, ProgressBar, hookimpl


class Terminal(io.StringIO):
    """An in-memory output that says it is a terminal."""

    def isatty(self) -> bool:
        return True


# Not the shared make_learner: 3-feature, 2-class data and a given bar.
def make_learner(bar: ProgressBar, plugins=(), n_train: int = 100, bs: int = 4) -> Learner:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n_train, 3, generator=g), torch.randint(0, 2, (n_train,), generator=g)
    train = [(x[i : i + bs], y[i : i + bs]) for i in range(0, n_train, bs)]
    torch.manual_seed(0)
    return Learner(nn.Linear(3, 2), DataLoaders(train, train[:5]), plugins=[*plugins, bar])


def test_off_a_terminal_it_writes_one_line_per_epoch_and_none_per_batch():
    out = io.StringIO()
    seen = []

    class Keep:
        @hookimpl
        def report(self, metrics):
            seen.append(metrics)

    learn = make_learner(ProgressBar(file=out), plugins=[Keep()])  # 25 training batches
    learn.fit(3)
    text = out.getvalue()
    lines = text.splitlines()
    assert len(lines) == 3
    assert "\r" not in text  # no bar was drawn
    for i, (line, metrics) in enumerate(zip(lines, seen, strict=True)):
        assert line.startswith(f"epoch {i + 1}/3  ")
        assert f"train_loss {metrics['train_loss']:.4f}" in line
        assert f"valid_loss {metrics['valid_loss']:.4f}" in line


def test_on_a_terminal_it_draws_epoch_and_batch_bars():
    out = Terminal()
    bar = ProgressBar(file=out)
    learn = make_learner(bar)
    learn.fit(2)
    text = out.getvalue()
    assert "\r" in text  # tqdm redraws in place
    for desc in ("epoch:", "train:", "valid:"):
        assert desc in text
    assert "2/2" in text and "100%" in text  # the epoch bar completed
    assert "0/25" in text  # the batch bar knew the number of batches
    assert "epoch 1/2  train_loss" in text and "epoch 2/2  train_loss" in text
    assert bar.bar is None and bar.epoch_bar is None


class Boom:
    """Raises in ``after_batch`` at the given epoch and pass; keeps the bars open at that moment."""

    def __init__(self, bar: ProgressBar, epoch: int, training: bool) -> None:
        self.progress, self.epoch, self.training = bar, epoch, training
        self.open_bars: list = []

    @hookimpl
    def after_batch(self, learn):
        if learn.epoch == self.epoch and learn.training == self.training and learn.iter == 2:
            self.open_bars = [self.progress.bar, self.progress.epoch_bar]
            raise RuntimeError("boom")


@pytest.mark.parametrize("training", [True, False], ids=["train", "valid"])
def test_bars_are_closed_after_an_error_in_another_plugin(training):
    out = Terminal()
    bar = ProgressBar(file=out)
    boom = Boom(bar, epoch=1, training=training)
    learn = make_learner(bar, plugins=[boom])
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(3)
    assert len(boom.open_bars) == 2 and all(b is not None for b in boom.open_bars)
    assert bar.bar is None and bar.epoch_bar is None
    assert all(b.disable for b in boom.open_bars)  # tqdm marks a closed bar as disabled


def test_a_second_fit_after_an_error_draws_fresh_bars():
    out = Terminal()
    bar = ProgressBar(file=out)
    learn = make_learner(bar)
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(2, plugins=[Boom(bar, epoch=0, training=True)])
    learn.fit(1)
    assert "epoch 1/1  train_loss" in out.getvalue()
    assert bar.bar is None and bar.epoch_bar is None


class ValidateEvery:
    """Validates from inside the training loop every ``n`` batches (registered before the bar);
    keeps what the bar showed around each call."""

    def __init__(self, progress: ProgressBar, n: int, fail_nested: bool = False) -> None:
        self.progress, self.n, self.fail_nested = progress, n, fail_nested
        self.before: list = []  # the training bar before each nested validate
        self.inner: list = []  # the validation bar while it ran
        self.after: list = []  # the bar after it returned
        self.train_bar_at_end = None
        self.errors: list[Exception] = []

    @hookimpl
    def after_batch(self, learn):
        shown = self.progress.bar
        if learn.run.entries != ["fit"]:  # a nested pass's own batches
            if not any(b is shown for b in self.inner):  # tqdm bars compare by position
                self.inner.append(shown)
            return
        if learn.training and (learn.iter + 1) % self.n == 0:
            self.before.append((shown, getattr(shown, "n", None)))
            try:
                learn.validate()
            except RuntimeError as error:
                self.errors.append(error)
            self.after.append(self.progress.bar)

    @hookimpl
    def before_validate(self, learn):
        if self.fail_nested and learn.run.entries != ["validate"] and len(learn.run.entries) > 1:
            raise RuntimeError("nested validate refused")

    @hookimpl
    def after_train(self):
        self.train_bar_at_end = self.progress.bar


def test_a_validate_inside_a_training_hook_keeps_the_training_bar():
    out = Terminal()
    bar = ProgressBar(file=out)
    every = ValidateEvery(bar, n=10)
    learn = make_learner(bar, plugins=[every])  # 25 training batches, 5 validation ones
    learn.fit(1)
    assert len(every.before) == 2 and len(every.inner) == 2
    train_bar = every.before[0][0]
    assert every.before[0][1] == 9 and every.before[1] == (train_bar, 19)
    assert every.after == [train_bar, train_bar]  # the training bar is back on top
    assert all(b is not train_bar and b.disable for b in every.inner)  # each nested bar closed
    assert every.train_bar_at_end is train_bar and train_bar.n == 25  # it went on to the end
    assert bar.bar is None and bar.epoch_bar is None
    assert out.getvalue().count("epoch 1/1  train_loss") == 1


def test_a_nested_validate_that_fails_before_the_bar_opened_closes_nothing_of_training():
    out = Terminal()
    bar = ProgressBar(file=out)
    every = ValidateEvery(bar, n=10, fail_nested=True)
    learn = make_learner(bar, plugins=[every])
    learn.fit(1)
    assert [str(e) for e in every.errors] == ["nested validate refused"] * 2
    train_bar = every.before[0][0]
    assert every.after == [train_bar, train_bar] and not every.inner
    assert every.train_bar_at_end is train_bar and train_bar.n == 25
    assert bar.bar is None


def test_a_validate_inside_a_training_hook_off_a_terminal_prints_nothing_extra():
    out = io.StringIO()
    bar = ProgressBar(file=out)
    learn = make_learner(bar, plugins=[ValidateEvery(bar, n=10)])
    learn.fit(2)
    assert out.getvalue().splitlines()[0].startswith("epoch 1/2  ")
    assert len(out.getvalue().splitlines()) == 2


def test_an_lr_find_on_a_terminal_draws_its_batch_bar_and_no_epoch_bar():
    out = Terminal()
    bar = ProgressBar(file=out)
    learn = make_learner(bar)  # 25 training batches: the sweep of 30 takes two passes
    learn.lr_find(num_it=30)
    text = out.getvalue()
    assert "train:" in text and "/25" in text
    assert "epoch" not in text  # the sweep's passes are not epochs, and nothing is reported
    assert bar.bar is None and bar.epoch_bar is None
