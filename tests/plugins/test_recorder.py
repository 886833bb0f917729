"""Recorder: per-batch losses, lrs and momenta, per-epoch metrics, plot, every=n, state."""

from __future__ import annotations

import copy
import io
import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner, ProgressBar, Recorder, hookimpl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_batches(n: int, bs: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g)
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, n, bs)]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3))


# Not the shared make_learner: the model and batches are the test's.
def make_learner(model, train, valid, plugins, lr=0.5) -> Learner:
    return Learner(
        model, DataLoaders(train, valid), lr=lr, plugins=[*plugins, ProgressBar(file=io.StringIO())]
    )


def hand_losses(model, train, n_epochs, lr):
    """The loss of every training batch, in a hand-written SGD loop on a copy of ``model``."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(n_epochs):
        for xb, yb in train:
            loss = F.cross_entropy(model(xb), yb)
            losses.append(loss.item())
            loss.backward()
            opt.step()
            opt.zero_grad()
    return losses


@pytest.fixture
def data():
    return make_batches(10, 4, seed=1), make_batches(6, 4, seed=2)  # train: 4, 4, 2


def test_losses_are_one_per_training_batch_and_equal_a_hand_loop(data):
    train, valid = data
    model = make_model()
    expected = hand_losses(model, train, n_epochs=2, lr=0.5)
    rec = Recorder()
    learn = make_learner(model, train, valid, [rec])
    learn.fit(2)
    assert len(rec.losses) == 2 * len(train) == 6
    assert rec.losses == pytest.approx(expected, rel=1e-6)
    assert rec.steps == [1, 2, 3, 4, 5, 6]
    assert len(set(rec.losses)) == 6  # the weights moved: every loss differs


def test_lrs_equal_the_lr_given_to_each_fit(data):
    train, valid = data
    rec = Recorder()
    learn = make_learner(make_model(), train, valid, [rec])
    learn.fit(1, lr=0.05)
    learn.fit(2, lr=0.2)
    assert rec.lrs == [0.05] * 3 + [0.2] * 6


class InverseSchedule:
    """Sets the learning rate 0.1 / (step + 1) before each training batch."""

    @hookimpl
    def before_batch(self, learn):
        if learn.training:
            for group in learn.opt.param_groups:
                group["lr"] = 0.1 / (learn.train_iter + 1)


def test_lrs_follow_a_schedule_set_by_another_plugin(data):
    train, valid = data
    rec = Recorder()
    learn = make_learner(make_model(), train, valid, [InverseSchedule(), rec])
    learn.fit(2)
    assert rec.lrs == pytest.approx([0.1 / (i + 1) for i in range(6)])


def test_epochs_hold_each_epochs_metrics(data):
    train, valid = data
    model = make_model()
    losses = hand_losses(model, train, n_epochs=2, lr=0.5)
    sizes = [len(yb) for _, yb in train]
    rec = Recorder()
    learn = make_learner(model, train, valid, [rec])
    learn.fit(2)
    assert [e["epoch"] for e in rec.epochs] == [0, 1]
    for epoch, metrics in enumerate(rec.epochs):
        assert list(metrics) == ["epoch", "train_loss", "valid_loss", "time"]
        mine = losses[3 * epoch : 3 * epoch + 3]
        per_item = sum(loss * n for loss, n in zip(mine, sizes, strict=True)) / 10
        assert metrics["train_loss"] == pytest.approx(per_item, rel=1e-6)
    with torch.no_grad():
        valid_sum = sum(F.cross_entropy(model(xb), yb, reduction="sum").item() for xb, yb in valid)
    assert rec.epochs[-1]["valid_loss"] == pytest.approx(valid_sum / 6, rel=1e-6)


def test_plot_writes_a_png(data, tmp_path):
    train, valid = data
    rec = Recorder()
    make_learner(make_model(), train, valid, [rec]).fit(2)
    path = rec.plot(tmp_path / "loss.png")
    assert path == tmp_path / "loss.png"
    raw = path.read_bytes()
    assert len(raw) > 0
    assert raw[:8] == PNG_SIGNATURE
    assert raw[12:16] == b"IHDR"
    assert struct.unpack(">II", raw[16:24]) == (700, 600)  # figsize (7, 6) at 100 dpi


def test_plot_without_a_path_returns_the_figure_with_a_loss_and_an_lr_panel(data, tmp_path):
    from matplotlib.figure import Figure

    train, valid = data
    rec = Recorder()
    make_learner(make_model(), train, valid, [InverseSchedule(), rec]).fit(2)
    fig = rec.plot()
    assert isinstance(fig, Figure)
    loss_ax, lr_ax = fig.axes
    assert loss_ax.get_ylabel() == "loss" and lr_ax.get_ylabel() == "learning rate"
    (train_line, valid_line) = loss_ax.get_lines()
    assert list(train_line.get_ydata()) == rec.losses
    assert list(valid_line.get_ydata()) == [e["valid_loss"] for e in rec.epochs]
    (lr_line,) = lr_ax.get_lines()
    assert list(lr_line.get_xdata()) == rec.steps and list(lr_line.get_ydata()) == rec.lrs
    assert not list(tmp_path.iterdir())  # nothing written


class OneCycle:
    """torch's OneCycleLR, stepped after every optimizer step (its documented use)."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps

    @hookimpl
    def before_fit(self, learn):
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            learn.opt, max_lr=0.5, total_steps=self.total_steps
        )

    @hookimpl
    def after_step(self):
        self.sched.step()


def sgd_momentum(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def test_lrs_and_moms_are_those_each_batch_used_under_one_cycle_stepped_after_step(data):
    train, valid = data
    n_epochs = 3
    model = make_model()
    # the hand-written loop: record what the optimizer holds when it steps
    hand = copy.deepcopy(model)
    opt = sgd_momentum(hand.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=n_epochs * 3)
    lrs, moms, losses = [], [], []
    for _ in range(n_epochs):
        for xb, yb in train:
            loss = F.cross_entropy(hand(xb), yb)
            losses.append(loss.item())
            loss.backward()
            lrs.append(opt.param_groups[0]["lr"])
            moms.append(opt.param_groups[0]["momentum"])
            opt.step()
            sched.step()
            opt.zero_grad()

    rec = Recorder()
    learn = Learner(
        model,
        DataLoaders(train, valid),
        opt_func=sgd_momentum,
        lr=0.5,
        plugins=[rec, OneCycle(n_epochs * 3), ProgressBar(file=io.StringIO())],
    )
    learn.fit(n_epochs)
    assert rec.lrs == lrs  # exactly the floats the optimizer stepped with
    assert rec.moms == moms
    assert rec.lrs[0] == pytest.approx(0.5 / 25)  # OneCycleLR starts at max_lr / div_factor
    assert len(set(rec.moms)) > 3  # momentum cycles too
    assert rec.losses == pytest.approx(losses, rel=1e-6)


def test_moms_are_adams_first_beta(data):
    train, valid = data
    rec = Recorder()

    def adam(params, lr):
        return torch.optim.Adam(params, lr=lr, betas=(0.85, 0.99))

    learn = Learner(
        make_model(),
        DataLoaders(train, valid),
        opt_func=adam,
        lr=0.01,
        plugins=[rec],
        defaults=False,
    )
    learn.fit(1)
    assert rec.moms == [0.85] * 3


def test_plot_before_fit_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        Recorder().plot(tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()


def test_every_two_records_half_the_batches():
    train, valid = make_batches(16, 4, seed=3), make_batches(4, 4, seed=4)  # 4 batches an epoch
    model = make_model()
    expected = hand_losses(model, train, n_epochs=2, lr=0.5)
    rec = Recorder(every=2)
    make_learner(model, train, valid, [rec]).fit(2)
    assert rec.steps == [1, 3, 5, 7]
    assert rec.losses == pytest.approx(expected[0::2], rel=1e-6)
    assert len(rec.lrs) == 4


@pytest.mark.parametrize("every", [0, -1, 1.5, True, "2"])
def test_every_must_be_a_positive_int(every):
    with pytest.raises(ValueError, match="every must be a positive int"):
        Recorder(every=every)


def test_state_dict_round_trips_through_a_weights_only_checkpoint(data):
    train, valid = data
    rec = Recorder()
    learn = make_learner(make_model(), train, valid, [rec])
    learn.fit(2)
    buffer = io.BytesIO()
    torch.save(rec.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    fresh = Recorder()
    fresh.load_state_dict(state)
    assert fresh.steps == rec.steps
    assert fresh.losses == rec.losses
    assert fresh.lrs == rec.lrs
    assert fresh.moms == rec.moms == [0.0] * 6  # plain SGD: momentum 0
    assert fresh.epochs == rec.epochs

    learn.remove_plugin(rec)  # the restored Recorder carries on where the first one stopped
    learn.add_plugin(fresh)
    learn.fit(1)
    assert len(fresh.losses) == 9
    assert fresh.losses[:6] == rec.losses
    assert fresh.steps == list(range(1, 10))
    assert len(fresh.epochs) == 3


def test_state_dict_hook_is_collected_by_the_plugin_manager(data):
    train, valid = data
    rec = Recorder()
    learn = make_learner(make_model(), train, valid, [rec])
    learn.fit(1)
    state = dict(learn.hooks.call("state_dict", learn=learn))["Recorder"]  # (name, state) pairs
    assert state["steps"] == [1, 2, 3]
    assert state["lrs"] == [0.5] * 3
    assert [e["epoch"] for e in state["epochs"]] == [0]


def test_every_counts_optimizer_steps_across_epochs():
    train, valid = make_batches(20, 4, seed=3), make_batches(4, 4, seed=4)  # 5 batches an epoch
    rec = Recorder(every=2)
    make_learner(make_model(), train, valid, [rec]).fit(2)
    assert rec.steps == [1, 3, 5, 7, 9]  # not restarting at each epoch (1, 3, 5, 6, 8, 10)
