"""``wrap_hook_calls(hook, call)``: a plugin method that wraps the whole compiled call of a hook.

The registry asks every registered plugin that has the method, once per plugin set, composed in
registration order (the last one outermost); DDP holds and refuses cancels through it. Tested
here with real fits: what the wrapped call sees, what it may change, and that removing the
plugin compiles the bare calls again.
"""

from __future__ import annotations

import pytest

from pluglearn import CancelBatchException, hookimpl
from tests.helpers import tiny_learner


class Trace:
    """Wraps after_loss and after_batch, logging around each whole call."""

    def __init__(self, name: str, log: list) -> None:
        self.plugin_name, self.log = name, log

    @hookimpl
    def wrap_hook_calls(self, hook, call):
        if hook not in ("after_loss", "after_batch"):
            return call

        def traced(learn):
            self.log.append((self.plugin_name, "enter", hook))
            result = call(learn)
            self.log.append((self.plugin_name, "exit", hook))
            return result

        return traced


class Inner:
    """An implementation and a generator wrapper of after_loss: both inside the wrapped call."""

    def __init__(self, log: list) -> None:
        self.log = log

    @hookimpl
    def after_loss(self, learn):
        self.log.append(("Inner", "impl", "after_loss"))

    @hookimpl(wrapper=True)
    def after_batch(self, learn):
        self.log.append(("Inner", "wrapper", "after_batch"))
        return (yield)


def test_the_whole_call_is_wrapped_and_the_last_registered_is_outermost():
    log: list = []
    learn = tiny_learner([Trace("A", log), Trace("B", log), Inner(log)], n_train=4, bs=4)
    learn.fit(1)
    train = log[: log.index(("B", "exit", "after_batch")) + 1]
    assert train == [
        ("B", "enter", "after_loss"),
        ("A", "enter", "after_loss"),
        ("Inner", "impl", "after_loss"),
        ("A", "exit", "after_loss"),
        ("B", "exit", "after_loss"),
        ("B", "enter", "after_batch"),
        ("A", "enter", "after_batch"),
        ("Inner", "wrapper", "after_batch"),
        ("A", "exit", "after_batch"),
        ("B", "exit", "after_batch"),
    ]


class SwallowBatchCancels:
    """Holds a CancelBatchException from after_loss: the batch goes on to its backward."""

    @hookimpl
    def wrap_hook_calls(self, hook, call):
        if hook != "after_loss":
            return call

        def held(learn):
            try:
                return call(learn)
            except CancelBatchException:
                return None

        return held


class CancelEveryBatch:
    steps = 0

    @hookimpl
    def after_loss(self, learn):
        raise CancelBatchException("skip")

    @hookimpl
    def after_step(self, learn):
        self.steps += 1


def test_a_wrapped_call_may_handle_what_the_call_raises():
    counter = CancelEveryBatch()
    learn = tiny_learner([counter], n_train=8, bs=4, defaults=True)
    learn.fit(1)
    assert counter.steps == 0  # cancelled batches do not step
    held = tiny_learner([SwallowBatchCancels(), CancelEveryBatch()], n_train=8, bs=4, defaults=True)
    held.fit(1)
    assert held.plugin("CancelEveryBatch").steps == 2


def test_removing_the_plugin_compiles_the_bare_calls_again():
    log: list = []
    learn = tiny_learner([Trace("A", log)], n_train=4, bs=4)
    assert learn._registry._chained("wrap_hook_calls") is not None
    learn.remove_plugin("A")
    assert learn._registry._chained("wrap_hook_calls") is None
    learn.fit(1)
    assert log == []


@pytest.mark.parametrize("hook", ["before_batch", "report"])
def test_hooks_the_method_leaves_alone_keep_their_caller(hook):
    learn = tiny_learner([Trace("A", [])])
    bare = tiny_learner([])
    assert learn.hooks._callers[hook].__qualname__ == bare.hooks._callers[hook].__qualname__
    assert learn.hooks._callers["after_loss"].__qualname__.endswith("traced")


def test_the_hooks_table_says_which_calls_are_wrapped_and_by_whom():
    learn = tiny_learner([Trace("A", [])])
    lines = {line.split()[0]: line for line in learn.hooks_table().splitlines()}
    assert "whole call wrapped by A" in lines["after_loss"]
    assert "whole call wrapped by A" in lines["after_batch"]
    assert "wrapped" not in lines["before_batch"]
