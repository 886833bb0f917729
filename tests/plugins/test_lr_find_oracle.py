"""lr_find against a sweep written by hand: the lrs, the losses, the smoothed losses and the
suggestion of fastai's rule, computed here without pluglearn; the rule itself on hand-made
curves; the sweep as the other plugins see it; the refused arguments."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import CancelFitException, DataLoaders, Learner, hookimpl
from pluglearn.plugins.lr_find import LRFinder, LRFindResult, suggest
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


def test_the_suggestion_skips_a_tenth_of_the_planned_points_not_of_those_recorded():
    lrs = [10.0 ** (i / 10 - 5) for i in range(50)]  # a sweep of 100 that stopped at 50
    smoothed = [3.0 - 0.001 * i for i in range(50)]
    smoothed[7] = 4.0  # steepest fall 7 -> 8: inside the first tenth of 100, not of 50
    smoothed[30] = 2.0  # the next steepest, 29 -> 30
    smoothed[31:] = [1.99 - 0.001 * i for i in range(19)]
    assert suggest(lrs, smoothed, 100) == lrs[29]
    assert suggest(lrs, smoothed) == lrs[7]


def test_the_result_suggests_from_the_planned_sweep_and_notes_a_sweep_a_plugin_ended():
    finder = LRFinder(num_it=100)
    finder.lrs = [10.0 ** (i / 10 - 5) for i in range(50)]
    finder.smoothed = [3.0 - 0.001 * i for i in range(50)]
    finder.smoothed[7], finder.smoothed[30] = 4.0, 2.0
    finder.smoothed[31:] = [1.99 - 0.001 * i for i in range(19)]
    finder.losses = list(finder.smoothed)
    result = finder.result()
    assert result.suggestion == finder.lrs[29]
    assert result.notes == ["the sweep ran 50 of 100 batches (a plugin ended it)"]
    finder.diverged = True
    assert finder.result().notes == []  # a diverged sweep ended itself


def test_the_finders_defaults_sweep_100_batches_from_1e_7_to_10_and_stop_on_divergence():
    finder = LRFinder()
    assert (finder.num_it, finder.stop_div, finder.lr) == (100, True, 1e-7)
    assert len(finder.schedule) == 100 and finder.schedule[0] == 1e-7
    assert finder.schedule[-1] == pytest.approx(10.0)


def test_a_sweep_over_a_loader_without_length_runs_its_batches():
    class Stream:  # no __len__: the finder cannot count its passes, so the fit runs num_it
        def __iter__(self):
            yield from _data()

    torch.manual_seed(0)
    learn = Learner(nn.Linear(4, 3), DataLoaders(Stream()), lr=0.1, defaults=False)
    result = learn.lr_find(start_lr=1e-3, end_lr=1e-1, num_it=NUM_IT)
    assert len(result.lrs) == NUM_IT


def test_the_results_repr_is_one_line():
    result = LRFindResult([1e-7, 3.3], [1.0, 2.0], [1.0, 2.0], 0.292, diverged=True)
    assert repr(result) == (
        "LRFindResult(suggestion=2.92e-01, lrs 1.0e-07..3.3e+00, 2 points, diverged=True)"
    )
    assert repr(LRFindResult([], [], [], None)) == (
        "LRFindResult(suggestion=None, 0 points, diverged=False)"
    )


class _CancelBeforeTheLoss:
    @hookimpl
    def before_batch(self, learn):
        raise CancelFitException()


@pytest.mark.parametrize(
    "plugins, x_scale, why",
    [
        (
            [_CancelBeforeTheLoss()],
            1.0,
            "the sweep recorded no loss: a plugin ended it before the first batch's loss",
        ),
        (
            [],
            math.nan,
            "the loss was nan at the first batch (lr 1.0e-03), before any training: look for "
            "NaN or inf in the inputs and targets, and for a loss that takes the log of 0",
        ),
    ],
    ids=["no-loss", "nan-loss"],
)
def test_a_sweep_without_suggestion_warns_why(plugins, x_scale, why):
    torch.manual_seed(0)
    train = [(x * x_scale, y) for x, y in _data()]
    learn = Learner(nn.Linear(4, 3), DataLoaders(train), lr=0.1, plugins=plugins, defaults=False)
    with pytest.warns(UserWarning) as warned:
        result = learn.lr_find(start_lr=1e-3, end_lr=1.0, num_it=NUM_IT)
    message = (
        f"lr_find found no lr to suggest: {why}. result.suggestion is None, and fit(lr=None) is "
        "refused: pass a number, or leave lr out to train at learn.lr."
    )
    assert [str(w.message) for w in warned] == [message] and result.notes == [message]
    assert result.suggestion is None


def test_the_plot_shows_the_smoothed_loss_the_suggestion_and_the_range_before_the_minimum():
    pytest.importorskip("matplotlib")
    losses = [3.0, 1.0, 3.5, 9.0]
    result = LRFindResult([1e-4, 1e-3, 1e-2, 1e-1], losses, losses, 1e-3)
    fig = result.plot()
    (ax,) = fig.axes
    assert tuple(fig.get_size_inches()) == (6.0, 4.0)
    assert (ax.get_xscale(), ax.get_xlabel(), ax.get_ylabel()) == ("log", "learning rate", "loss")
    curve, mark = ax.get_lines()
    assert list(curve.get_xdata()) == result.lrs and list(curve.get_ydata()) == result.smoothed
    assert list(mark.get_xdata()) == [1e-3, 1e-3]
    assert (mark.get_color(), mark.get_linestyle()) == ("red", "--")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["smoothed loss", "1.00e-03"]
    # from the minimum to the highest loss before it, 10 % beyond: the tail after it left out
    assert ax.get_ylim() == pytest.approx((0.8, 3.2))


def test_the_plot_saved_to_a_path_returns_the_path(tmp_path):
    pytest.importorskip("matplotlib")
    result = LRFindResult([1e-3, 1e-2], [1.0, 0.5], [1.0, 0.5], None)
    assert result.plot(tmp_path / "lr.png") == tmp_path / "lr.png"
    assert (tmp_path / "lr.png").stat().st_size > 0


def test_the_plot_without_matplotlib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError) as missing:
        LRFindResult([1e-3], [1.0], [1.0], None).plot()
    assert str(missing.value) == "LRFindResult.plot needs matplotlib: pip install matplotlib"
