"""The registry extension points (``wrap_hook_calls``, ``instrument_hooks``) are declared in
pluglearn.hooks.specs with their arguments, implemented with ``@hookimpl`` and checked at
registration like hooks: a misspelled or wrongly-signed one is a registration error, one
without ``@hookimpl`` warns, and the registry uses only the declared, marked ones."""

from __future__ import annotations

import pytest

from pluglearn import hookimpl
from pluglearn.hooks.guards import PluginError, PluginWarning
from pluglearn.hooks.specs import EXTENSION_POINTS, HOOKS
from tests.helpers import tiny_learner


class Counting:
    """Counts the calls of after_loss through wrap_hook_calls."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def wrap_hook_calls(self, hook, call):
        if hook != "after_loss":
            return call

        def counted(learn):
            self.calls += 1
            return call(learn)

        return counted


def test_the_extension_points_are_declared_with_their_arguments_and_are_no_hooks():
    assert EXTENSION_POINTS == {
        "wrap_hook_calls": ("hook", "call"),
        "instrument_hooks": ("impl", "fn"),
    }
    assert not set(EXTENSION_POINTS) & set(HOOKS)


def test_a_marked_extension_point_is_used_for_every_batch():
    counting = Counting()
    learn = tiny_learner([counting], n_train=8, bs=4)
    learn.fit(1)
    assert counting.calls == 2 + 1  # two training batches, one validation batch


def test_a_misspelled_extension_point_is_refused_with_the_right_name():
    class Misspelled:
        @hookimpl
        def wrap_hook_call(self, hook, call):
            return call

    with pytest.raises(
        PluginError, match=r"no hook or registry extension point.*'wrap_hook_calls'"
    ):
        tiny_learner([Misspelled()])


def test_an_extension_point_with_other_arguments_is_refused_naming_the_declared_ones():
    class WrongArguments:
        @hookimpl
        def instrument_hooks(self, impl):
            return impl

    with pytest.raises(PluginError, match=r"'instrument_hooks' takes \(impl, fn\), but it is"):
        tiny_learner([WrongArguments()])


def test_an_ordering_option_on_an_extension_point_is_refused():
    class Ordered:
        @hookimpl(tryfirst=True)
        def wrap_hook_calls(self, hook, call):
            return call

    with pytest.raises(PluginError, match=r"@hookimpl\(tryfirst=True\), which does not apply"):
        tiny_learner([Ordered()])


def test_an_unmarked_extension_point_warns_and_is_never_called():
    class Unmarked:
        def __init__(self) -> None:
            self.asked = 0

        def wrap_hook_calls(self, hook, call):
            self.asked += 1
            return call

    plugin = Unmarked()
    with pytest.warns(PluginWarning, match="named like a registry extension point but lacks"):
        learn = tiny_learner([plugin])
    learn.fit(1)
    assert plugin.asked == 0
