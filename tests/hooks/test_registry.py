"""The ordered plugin registry: one object once, a failed registration changes nothing, new-style
wrappers run through pluggy in order."""

from __future__ import annotations

import pytest

from pluglearn import PluginError, hookimpl
from pluglearn.hooks.registry import PluginRegistry
from tests.helpers import tiny_learner


class Good:
    @hookimpl
    def before_batch(self, learn):
        pass


def test_the_same_object_twice_is_refused_but_two_instances_are_fine():
    plugin = Good()
    with pytest.raises(PluginError, match="Good is already registered"):
        tiny_learner([plugin, plugin])
    learn = tiny_learner([Good(), Good()])
    assert [type(p).__name__ for p in learn.plugins].count("Good") == 2


def test_a_failed_registration_leaves_the_registry_unchanged():
    class Bad:
        @hookimpl
        def nope(self):
            pass

    registry = PluginRegistry()
    registry.add(Good())
    with pytest.raises(PluginError):
        registry.add(Bad())
    assert [type(p).__name__ for p in registry] == ["Good"]


def test_new_style_wrappers_run_through_pluggy_in_order():
    calls = []

    class Wrap:
        @hookimpl(wrapper=True)
        def before_batch(self, learn):
            calls.append("wrap-in")
            result = yield
            calls.append("wrap-out")
            return result

    class Plain:
        @hookimpl
        def before_batch(self):
            calls.append("plain")

    tiny_learner([Wrap(), Plain()], n_train=4, n_valid=4).fit(1)
    assert calls == ["wrap-in", "plain", "wrap-out"] * 2  # one train, one valid batch
