"""The dispatcher's promises that mutation testing found unchecked (``benchmarks/mutation.py
--module plugins/dispatch.py``): which implementation an error is tagged with, for every kind of
hook; ``call()`` by keyword and its refusals; ``load_state_dict`` addressed to each plugin;
instrumented implementations; a wrapper that yields zero or two times; an empty registry.

The oracle is the plugin itself: each plugin here records what it received or raises an error
of its own, so the expected tag, argument or part of the state is known without the dispatcher.
"""

from __future__ import annotations

import pytest

from pluglearn import hookimpl
from pluglearn.hooks.dispatch import Dispatcher, origin_of
from pluglearn.hooks.specs import HOOKS
from tests.helpers import tiny_learner


class Boom(Exception):
    """An error of the test's own, so nothing else can raise it."""


class Named:
    def __init__(self, name: str) -> None:
        self.plugin_name = name
        self.seen: list = []


def _origin(error: BaseException) -> tuple[str, str] | None:
    impl = origin_of(error)
    return None if impl is None else (impl.plugin, impl.hook)


# ------------------------------------------------------------------ the raising implementation


class StepPlugin(Named):
    def __init__(self, name: str, fail: bool = False) -> None:
        super().__init__(name)
        self.fail = fail

    @hookimpl
    def predict(self, learn):
        self.seen.append("predict")
        if self.fail:
            raise Boom(self.plugin_name)
        return None  # no answer: the next implementation is asked


def test_a_step_raising_after_one_that_declined_is_tagged_with_itself():
    learn = tiny_learner([StepPlugin("quiet"), StepPlugin("loud", fail=True)])
    with pytest.raises(Boom) as info:
        learn.hooks.predict(learn)
    assert _origin(info.value) == ("loud", "predict")
    assert learn.plugin("quiet").seen == ["predict"]


class StatePlugin(Named):
    def __init__(self, name: str, fail_save: bool = False, fail_load: bool = False) -> None:
        super().__init__(name)
        self.fail_save, self.fail_load = fail_save, fail_load

    @hookimpl
    def state_dict(self, learn):
        if self.fail_save:
            raise Boom("save")
        return {"name": self.plugin_name}

    @hookimpl
    def load_state_dict(self, learn, state):
        self.seen.append((learn, state))
        if self.fail_load:
            raise Boom("load")


def test_state_dict_errors_are_tagged_with_the_plugin_that_raised():
    learn = tiny_learner([StatePlugin("fine"), StatePlugin("broken", fail_save=True)])
    with pytest.raises(Boom) as info:
        learn.hooks.call("state_dict", learn=learn)
    assert _origin(info.value) == ("broken", "state_dict")


def test_load_state_dict_gives_each_plugin_its_own_part_and_skips_the_others():
    a, b, c = StatePlugin("a"), StatePlugin("b"), StatePlugin("c")
    learn = tiny_learner([a, b, c])
    part_a, part_c = {"step": 3}, {"step": 7}
    assert (
        learn.hooks.call("load_state_dict", learn=learn, state={"a": part_a, "c": part_c}) is None
    )
    assert a.seen == [(learn, part_a)] and a.seen[0][1] is part_a
    assert c.seen == [(learn, part_c)]
    assert b.seen == []  # no saved part: not called


def test_load_state_dict_errors_are_tagged_with_the_plugin_that_raised():
    learn = tiny_learner([StatePlugin("a"), StatePlugin("b", fail_load=True)])
    with pytest.raises(Boom, match="load") as info:
        learn.hooks.call("load_state_dict", learn=learn, state={"a": {}, "b": {}})
    assert _origin(info.value) == ("b", "load_state_dict")


class ContextPlugin(Named):
    def __init__(self, name: str, fail: bool = False) -> None:
        super().__init__(name)
        self.fail = fail

    @hookimpl
    def forward_context(self, learn):
        self.seen.append(learn)
        if self.fail:
            raise Boom("context")
        return None


def test_forward_context_gets_the_learner_and_its_errors_are_tagged():
    quiet = ContextPlugin("quiet")
    learn = tiny_learner([quiet, ContextPlugin("loud", fail=True)])
    with pytest.raises(Boom) as info:
        learn.hooks.forward_context(learn)
    assert _origin(info.value) == ("loud", "forward_context")
    assert quiet.seen == [learn] and quiet.seen[0] is learn


def test_forward_context_with_no_implementation_is_a_usable_context_manager():
    learn = tiny_learner([])
    entered = []
    with learn.hooks.forward_context(learn):
        entered.append(True)
    assert entered == [True]
    # and with implementations that all return None, too
    learn = tiny_learner([ContextPlugin("a"), ContextPlugin("b")])
    with learn.hooks.forward_context(learn):
        entered.append(True)
    assert entered == [True, True]


class FailingWrapper(Named):
    @hookimpl(wrapper=True)
    def before_batch(self, learn):
        raise Boom("before yield")
        yield  # pragma: no cover  (a generator that raises when first resumed)


class Plain(Named):
    @hookimpl
    def before_batch(self, learn):
        self.seen.append(learn)


def test_a_wrapper_raising_before_its_yield_is_tagged_with_itself():
    plain = Plain("plain")
    learn = tiny_learner([FailingWrapper("wrapper"), plain])
    with pytest.raises(Boom) as info:
        learn.hooks.before_batch(learn)
    assert _origin(info.value) == ("wrapper", "before_batch")
    assert plain.seen == []  # the wrapped call never started


class NestedCaller(Named):
    """Its ``before_batch`` calls another hook, whose implementation raises: the error passes
    through this implementation too, yet it must stay tagged with the innermost one."""

    @hookimpl
    def before_batch(self, learn):
        learn.hooks.after_batch(learn)


class AfterBatchBoom(Named):
    @hookimpl
    def after_batch(self, learn):
        raise Boom("inner")


def test_an_error_keeps_the_tag_of_the_innermost_implementation():
    learn = tiny_learner([NestedCaller("outer"), AfterBatchBoom("inner")])
    with pytest.raises(Boom) as info:
        learn.hooks.before_batch(learn)
    assert _origin(info.value) == ("inner", "after_batch")


class Frozen(Exception):
    """An exception that refuses new attributes (it cannot carry the tag)."""

    def __setattr__(self, name, value):
        raise AttributeError(f"Frozen refuses {name}")


class RaisesFrozen(Named):
    @hookimpl
    def before_batch(self, learn):
        raise Frozen("as raised")


def test_an_exception_that_cannot_be_tagged_still_propagates_unchanged():
    learn = tiny_learner([RaisesFrozen("frozen")])
    with pytest.raises(Frozen, match="as raised") as info:
        learn.hooks.before_batch(learn)
    assert origin_of(info.value) is None


# --------------------------------------------------------------- wrappers that break the rule


class NoYield(Named):
    @hookimpl(wrapper=True)
    def before_batch(self, learn):
        if False:
            yield
        return None


class TwoYields(Named):
    @hookimpl(wrapper=True)
    def before_batch(self, learn):
        yield
        yield


def test_a_wrapper_that_never_yields_is_refused_by_name():
    learn = tiny_learner([NoYield("lazy")])
    expected = (
        "plugin 'lazy': the wrapper 'before_batch' returned without yielding: a wrapper must "
        "`result = yield` exactly once."
    )
    with pytest.raises(RuntimeError) as info:
        learn.hooks.before_batch(learn)
    assert str(info.value) == expected


def test_a_wrapper_that_yields_twice_is_refused_by_name():
    plain = Plain("plain")
    learn = tiny_learner([TwoYields("greedy"), plain])
    expected = (
        "plugin 'greedy': the wrapper 'before_batch' yielded twice: a wrapper must "
        "`result = yield` exactly once, then return the result."
    )
    with pytest.raises(RuntimeError) as info:
        learn.hooks.before_batch(learn)
    assert str(info.value) == expected
    assert plain.seen == [learn]  # the wrapped call itself ran


# ------------------------------------------------------------------------- call() by keyword


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


# --------------------------------------------------------------------- the Dispatcher itself


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


# ----------------------------------------------- one forward_context provider (its own fast path)


class EntersFailing(Named):
    """Returns a context manager whose __enter__ raises."""

    @hookimpl
    def forward_context(self, learn):
        self.seen.append(learn)

        class Failing:
            def __enter__(self):
                raise Boom("enter")

            def __exit__(self, *exc):
                return False

        return Failing()


def test_one_provider_gets_the_learner_and_its_errors_are_tagged():
    alone = ContextPlugin("alone", fail=True)
    learn = tiny_learner([alone])
    with pytest.raises(Boom) as info:
        learn.hooks.forward_context(learn)
    assert _origin(info.value) == ("alone", "forward_context")
    assert alone.seen == [learn] and alone.seen[0] is learn


def test_one_provider_s_failing_enter_is_tagged_with_it():
    plugin = EntersFailing("entering")
    learn = tiny_learner([plugin])
    with pytest.raises(Boom, match="enter") as info, learn.hooks.forward_context(learn):
        pass  # pragma: no cover  (the context never enters)
    assert _origin(info.value) == ("entering", "forward_context")
    assert plugin.seen == [learn]


def test_one_provider_answering_none_gives_a_usable_context_and_none_is_tagged():
    learn = tiny_learner([ContextPlugin("quiet")])
    entered = []
    with learn.hooks.forward_context(learn) as value:
        entered.append(value)
    assert entered == [None]
    learn.fit(1)  # the loop runs the forward inside it
    assert learn.plugin("quiet").seen[-1] is learn
