"""lr_find against a sweep written by hand: the lrs, the losses, the smoothed losses and the
suggestion of fastai's rule, computed here without pluglearn; the rule itself on hand-made
curves; the sweep as the other plugins see it; the refused arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner, hookimpl
from pluglearn.plugins.lr_find import suggest
from tests.helpers import batches, tiny_data

N_BATCHES, NUM_IT = 5, 12


def _data() -> list:
    x, y = tiny_data(4 * N_BATCHES)
    return batches(x, y, 4)


# Not the shared make_learner: the first training batch validates too.
def _learner(plugins=()) -> Learner:
    torch.manual_seed(0)
    train = _data()
    return Learner(nn.Linear(4, 3), DataLoaders(train, train[:1]), lr=0.1, plugins=plugins,
                   defaults=False)  # fmt: skip


def _hand_sweep(start_lr: float, end_lr: float, num_it: int) -> tuple[list, list, list]:
    """The sweep as a reader of the docs would write it: batch i (cycling through the loader)
    at start * (end / start) ** (i / (num_it - 1)), the loss's bias-corrected moving average."""
    torch.manual_seed(0)
    model, train = nn.Linear(4, 3), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lrs, losses, smoothed, average = [], [], [], 0.0
    for i in range(num_it):
        lr = start_lr * (end_lr / start_lr) ** (i / (num_it - 1))
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = train[i % len(train)]
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        lrs.append(lr)
        losses.append(loss.item())
        average = 0.98 * average + 0.02 * loss.item()
        smoothed.append(average / (1 - 0.98 ** (i + 1)))
    return lrs, losses, smoothed


def _steepest_before_minimum(lrs: list, smoothed: list, skip: int) -> float:
    low = min(range(skip, len(smoothed)), key=lambda i: smoothed[i])
    if low == skip:
        return lrs[low] / 10
    slope = [
        (smoothed[i + 1] - smoothed[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
        for i in range(skip, low)
    ]
    return lrs[skip + slope.index(min(slope))]


def test_the_sweep_equals_one_written_by_hand():
    result = _learner().lr_find(start_lr=1e-3, end_lr=1.0, num_it=NUM_IT, stop_div=False)
    lrs, losses, smoothed = _hand_sweep(1e-3, 1.0, NUM_IT)
    assert result.lrs == pytest.approx(lrs, rel=1e-12)
    assert result.losses == losses  # the same batches, lrs and operations: the same floats
    assert result.smoothed == pytest.approx(smoothed, rel=1e-12)
    assert result.suggestion == pytest.approx(_steepest_before_minimum(lrs, smoothed, 1))
    assert not result.diverged and result.notes == []


def test_the_sweep_runs_the_passes_it_needs_and_tells_the_other_plugins_why_it_ends():
    seen = []

    class Watch:
        @hookimpl
        def before_fit(self, learn):
            seen.append(("epochs", learn.n_epochs))

        @hookimpl
        def cleanup_fit(self, learn):
            seen.append(("stop", learn.stop_reason))

    learn = _learner([Watch()])
    learn.lr_find(num_it=NUM_IT, stop_div=False)
    # 12 batches of a 5-batch loader: three passes; the sweep's end is its stop reason
    assert seen == [("epochs", 3), ("stop", "lr_find: the sweep is done")]
    assert learn.stop_reason is None  # put back after the sweep


def test_a_diverging_sweep_stops_at_the_first_smoothed_loss_above_four_times_the_best():
    seen = []

    class Watch:
        @hookimpl
        def cleanup_fit(self, learn):
            seen.append(learn.stop_reason)

    result = _learner([Watch()]).lr_find(start_lr=1e-2, end_lr=1e6, num_it=60)
    assert result.diverged and seen == ["lr_find: the loss diverged"]
    best = min(result.smoothed[:-1])
    assert result.smoothed[-1] > 4 * best or not math.isfinite(result.smoothed[-1])
    assert all(s <= 4 * min(result.smoothed[: i + 1]) for i, s in enumerate(result.smoothed[:-1]))


def test_the_suggestion_leaves_out_the_first_tenth_of_the_planned_sweep():
    lrs = [10.0 ** (i / 10 - 5) for i in range(100)]
    smoothed = [3.0 - 0.001 * i for i in range(100)]
    smoothed[9] = 5.0  # the steepest fall, 9 -> 10, lies in the first tenth: left out
    smoothed[30] = 2.0  # the steepest fall after the first tenth: 29 -> 30
    for i in range(31, 40):
        smoothed[i] = 2.0 - 0.001 * (i - 30)
    smoothed[40] = 1.985  # the minimum
    assert suggest(lrs, smoothed, 100) == lrs[29]
    assert suggest(lrs, smoothed) == lrs[29]  # num_it defaults to the points there are


def test_the_slope_is_taken_against_log_lr_on_an_uneven_grid():
    lrs = [1e-4, 1e-3, 1.1e-3, 1e-1, 1.0]
    smoothed = [2.0, 1.5, 1.45, 1.0, 3.0]
    # falls: 0.5 over log 10 (-0.217 per unit), 0.05 over log 1.1 (-0.525), 0.45 over log 91
    assert suggest(lrs, smoothed, 1) == 1e-3


def test_a_sweep_shorter_than_its_skip_suggests_a_tenth_of_its_minimum():
    assert suggest([1e-3, 1e-2, 1e-1], [2.0, 1.0, float("nan")], 100) == pytest.approx(1e-3)
    assert suggest([1e-3, 1e-2], [float("nan"), float("inf")], 100) is None


def test_a_minimum_at_the_start_of_the_counted_points_suggests_a_tenth_of_it():
    assert suggest([1e-3, 1e-2, 1e-1], [1.0, 2.0, 3.0], 3) == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"start_lr": 0.1, "end_lr": 0.1},
            "lr_find(start_lr=0.1, end_lr=0.1): the sweep goes up from start_lr > 0 to a larger "
            "end_lr, e.g. lr_find(start_lr=1e-7, end_lr=10).",
        ),
        ({"num_it": 1}, "lr_find(num_it=1): give an int >= 2, e.g. num_it=100."),
        ({"num_it": 2.5}, "lr_find(num_it=2.5): give an int >= 2, e.g. num_it=100."),
        ({"num_it": True}, "lr_find(num_it=True): give an int >= 2, e.g. num_it=100."),
    ],
)
def test_bad_sweeps_are_refused_naming_the_fix(kwargs, message):
    with pytest.raises(ValueError) as refused:
        _learner().lr_find(**kwargs)
    assert str(refused.value) == message


def test_the_shortest_sweep_has_two_points():
    result = _learner().lr_find(start_lr=1e-3, end_lr=1e-2, num_it=2)
    assert result.lrs == pytest.approx([1e-3, 1e-2])
