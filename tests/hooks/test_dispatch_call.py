"""``Dispatcher.call()`` by keyword and its refusals, ``implemented``, a dispatcher of an empty
registry, and instrumented implementations.

The oracle is the plugin itself: each plugin here records what it received, so the expected
argument is known without the dispatcher."""

from __future__ import annotations

import pytest

from pluglearn import hookimpl
from pluglearn.hooks.dispatch import Dispatcher
from pluglearn.hooks.specs import HOOKS
from tests.helpers import tiny_learner


class Named:
    def __init__(self, name: str) -> None:
        self.plugin_name = name
        self.seen: list = []


class Plain(Named):
    @hookimpl
    def before_batch(self, learn):
        self.seen.append(learn)


def test_call_passes_the_learner_itself_to_a_hook_of_learn_alone():
    plain = Plain("plain")
    learn = tiny_learner([plain])
    assert learn.hooks.call("before_batch", learn=learn) is None
    assert plain.seen == [learn] and plain.seen[0] is learn


def test_call_refuses_an_unknown_hook_by_name():
    learn = tiny_learner([])
    with pytest.raises(KeyError) as info:
        learn.hooks.call("before_bacth", learn=learn)
    assert info.value.args == ("no hook named 'before_bacth'; see pluglearn.hooks.specs",)


def test_call_refuses_missing_or_unexpected_arguments_and_names_them():
    learn = tiny_learner([])
    args = ", ".join(HOOKS["report"].args)
    assert args == "learn, metrics"  # the spec this test is written against
    with pytest.raises(TypeError) as info:
        learn.hooks.call("report", learn=learn)
    assert str(info.value) == (
        "hook 'report' takes learn, metrics by keyword; missing: ['metrics'], unexpected: []."
    )
    with pytest.raises(TypeError) as info:
        learn.hooks.call("before_batch", learn=learn, batch=1)
    assert str(info.value) == (
        "hook 'before_batch' takes learn by keyword; missing: [], unexpected: ['batch']."
    )
    with pytest.raises(TypeError, match=r"missing: \['learn'\], unexpected: \['model'\]"):
        learn.hooks.call("before_batch", model=learn)


def test_implemented_answers_per_hook():
    learn = tiny_learner([Plain("plain")])
    assert learn.hooks.implemented("before_batch") is True
    assert learn.hooks.implemented("after_batch") is False


def test_a_dispatcher_of_an_empty_registry_answers_every_hook():
    """``impls`` may leave out hooks nobody implements: each is then a no-op of its kind."""
    calls = Dispatcher({})
    assert not any(calls.implemented(h) for h in HOOKS)
    assert calls.before_batch(object()) is None
    assert calls.call("state_dict", learn=object()) == []
    assert calls.call("collect_metrics", learn=object(), phase="train") == []
    with calls.forward_context(object()):
        pass


class Instrumenting(Named):
    """Wraps every implementation: records which one runs, then runs it."""

    @hookimpl
    def instrument_hooks(self, impl, fn):
        def timed(arg):
            self.seen.append((impl.plugin, impl.hook, arg))
            return fn(arg)

        return timed


def test_an_instrumenting_plugin_wraps_every_implementation_and_each_still_runs():
    probe, plain = Instrumenting("probe"), Plain("plain")
    learn = tiny_learner([probe, plain])
    learn.hooks.before_batch(learn)
    assert plain.seen == [learn]
    assert probe.seen == [("plain", "before_batch", learn)]
