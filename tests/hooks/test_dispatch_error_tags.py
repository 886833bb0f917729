"""Which implementation an error is tagged with, for every kind of hook (first result, run all,
state_dict / load_state_dict, forward_context with one provider or several, wrappers, nested calls),
and ``load_state_dict`` addressed to each plugin.

The oracle is the plugin itself: each plugin here records what it received or raises an error
of its own, so the expected tag, argument or part of the state is known without the dispatcher."""

from __future__ import annotations

import pytest

from pluglearn import hookimpl
from pluglearn.hooks.dispatch import origin_of
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
