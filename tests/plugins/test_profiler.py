"""Profiler: real fits with a deliberately slow plugin, model, loader or wrapper; the table's
order and the totals' consistency (no timed thresholds: sleeps only make one row dominate)."""

from __future__ import annotations

import io
import time

import pytest
import torch
from torch import nn

from pluglearn import DataLoaders, Learner, Profiler, hookimpl
from pluglearn.plugins.profiler import LOADER
from tests.helpers import batches, tiny_data, tiny_learner

SLEEP = 0.02  # far above any hook's own cost on a loaded machine


class SlowAfterBatch:
    @hookimpl
    def after_batch(self):
        time.sleep(SLEEP)


class CountBatches:
    def __init__(self) -> None:
        self.n = 0

    @hookimpl
    def after_batch(self):
        self.n += 1


class SlowLoader:
    """A loader that takes its time to produce each batch."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        for item in self.items:
            time.sleep(SLEEP)
            yield item


class SlowModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        time.sleep(SLEEP)
        return self.lin(x)


def test_a_slow_plugin_tops_the_table_and_rows_add_up_to_at_most_the_fit():
    profiler, counter = Profiler(), CountBatches()
    learn = tiny_learner([SlowAfterBatch(), counter], n_train=16, n_valid=8)
    start = time.perf_counter()
    learn.fit(2, plugins=[profiler])
    wall = time.perf_counter() - start
    rows = profiler.table()
    top = rows[0]
    assert (top.plugin, top.hook, top.calls) == ("SlowAfterBatch", "after_batch", counter.n)
    assert counter.n == 2 * (4 + 2)
    assert top.total_s >= counter.n * SLEEP
    assert top.mean_us == pytest.approx(top.total_s / top.calls * 1e6)
    assert [r.total_s for r in rows] == sorted((r.total_s for r in rows), reverse=True)
    assert sum(r.total_s for r in rows) <= profiler.fit_s <= wall
    parts = profiler.breakdown()
    assert parts["fit"] == profiler.fit_s
    assert sum(v for k, v in parts.items() if k != "fit") == pytest.approx(profiler.fit_s)
    assert parts["plugins"] >= top.total_s
    by_name = {(r.plugin, r.hook): r for r in rows}
    assert by_name["TrainStep", "predict"].calls == counter.n  # the model's forward
    assert by_name["TrainStep", "step"].calls == 2 * 4  # training batches only
    assert by_name[LOADER, "next batch"].calls == counter.n


def warm_up_autograd() -> None:
    """The process's first backward starts autograd's machinery (a fraction of a second on a
    loaded machine): done before the timed fit, so no row counts it."""
    nn.Linear(4, 3)(torch.zeros(1, 4)).sum().backward()


def test_a_slow_loader_shows_as_the_loader_row():
    warm_up_autograd()
    x, y = tiny_data(12)
    dls = DataLoaders(SlowLoader(batches(x[:8], y[:8], 2)), batches(x[8:], y[8:], 2))
    torch.manual_seed(0)
    profiler = Profiler()
    Learner(nn.Linear(4, 3), dls, plugins=[profiler], defaults=False).fit(1)
    top = profiler.table()[0]
    assert (top.plugin, top.hook, top.calls) == (LOADER, "next batch", 4 + 2)
    parts = profiler.breakdown()
    assert max((k for k in parts if k != "fit"), key=parts.get) == "loader"


def test_a_slow_model_shows_as_the_forward():
    warm_up_autograd()
    x, y = tiny_data(12)
    dls = DataLoaders(batches(x[:8], y[:8], 2), batches(x[8:], y[8:], 2))
    profiler = Profiler()
    Learner(SlowModel(), dls, plugins=[profiler], defaults=False).fit(1)
    top = profiler.table()[0]
    assert (top.plugin, top.hook) == ("TrainStep", "predict")
    parts = profiler.breakdown()
    assert max((k for k in parts if k != "fit"), key=parts.get) == "forward"


class SlowWrapper:
    @hookimpl(wrapper=True)
    def after_batch(self):
        time.sleep(SLEEP / 4)
        result = yield
        return result


class VerySlowAfterBatch:
    @hookimpl
    def after_batch(self):
        time.sleep(SLEEP * 2)


def test_a_wrapper_is_charged_for_its_own_code_not_the_hook_it_wraps():
    profiler = Profiler()
    learn = tiny_learner([SlowWrapper(), VerySlowAfterBatch(), profiler])
    learn.fit(1)
    rows = {(r.plugin, r.hook): r for r in profiler.table()}
    wrapper, inner = rows["SlowWrapper", "after_batch"], rows["VerySlowAfterBatch", "after_batch"]
    assert wrapper.calls == inner.calls == 3
    assert wrapper.total_s >= 3 * SLEEP / 4
    assert wrapper.total_s < inner.total_s
    assert sum(r.total_s for r in rows.values()) <= profiler.fit_s


class ValidateMidEpoch:
    def __init__(self) -> None:
        self.results: list[dict] = []

    @hookimpl
    def after_batch(self, learn):
        if learn.training and learn.iter == 0:
            self.results.append(learn.validate())


def test_a_validate_inside_a_hook_is_not_counted_twice():
    profiler, nested = Profiler(), ValidateMidEpoch()
    learn = tiny_learner([nested, SlowAfterBatch(), profiler], n_train=8, n_valid=4)
    learn.fit(1)
    assert len(nested.results) == 1
    rows = {(r.plugin, r.hook): r for r in profiler.table()}
    assert rows[LOADER, "next batch"].calls == 2 + 1 + 1  # train, valid, nested valid
    assert rows["SlowAfterBatch", "after_batch"].calls == 4
    assert rows["ValidateMidEpoch", "after_batch"].total_s < SLEEP  # the nested pass is not its
    assert sum(r.total_s for r in rows.values()) <= profiler.fit_s


def test_each_fit_starts_a_fresh_count_and_a_removed_profiler_stops_instrumenting():
    profiler, counter = Profiler(), CountBatches()
    learn = tiny_learner([counter, profiler])
    learn.fit(1)
    first = {(r.plugin, r.hook): r.calls for r in profiler.table()}
    learn.fit(1)
    assert {(r.plugin, r.hook): r.calls for r in profiler.table()} == first
    assert first["CountBatches", "after_batch"] == 3
    learn.remove_plugin(profiler)
    assert learn._registry._chained("instrument_hooks") is None  # the bare callers again
    learn.fit(1)
    assert counter.n == 9
    assert {(r.plugin, r.hook): r.calls for r in profiler.table()} == first


def test_validate_outside_a_fit_is_not_counted():
    profiler = Profiler()
    learn = tiny_learner([profiler])
    learn.fit(1)
    before = profiler.table()
    learn.validate()
    assert profiler.table() == before


class Boom:
    @hookimpl
    def after_loss(self, learn):
        if learn.iter == 1:
            raise ValueError("boom")


def test_an_error_under_the_profiler_propagates_and_the_fit_is_still_measured():
    profiler = Profiler()
    learn = tiny_learner([Boom(), profiler])
    with pytest.raises(ValueError, match="boom") as raised:
        learn.fit(1)
    assert any("Boom" in note and "after_loss" in note for note in raised.value.__notes__)
    assert profiler.fit_s > 0
    rows = {(r.plugin, r.hook): r for r in profiler.table()}
    assert rows["Boom", "after_loss"].calls == 2


def test_show_prints_the_table_and_the_breakdown():
    profiler = Profiler()
    out = io.StringIO()
    profiler.show(file=out)
    assert "nothing recorded yet" in out.getvalue()
    tiny_learner([SlowAfterBatch()]).fit(1, plugins=[profiler])
    out = io.StringIO()
    profiler.show(limit=3, file=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["plugin", "hook", "calls", "total", "s", "mean", "us"]
    assert lines[1].split()[:3] == ["SlowAfterBatch", "after_batch", "3"]
    assert lines[4].startswith("... ") and "more rows" in lines[4]
    assert lines[5].startswith("fit ") and "loader" in lines[5] and "forward" in lines[5]
