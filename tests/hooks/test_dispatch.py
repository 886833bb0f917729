"""The dispatcher: one table of kinds, wrappers that keep every rule (a wrapper that yields zero
or two times is refused by name), and the plugin that raised."""

from __future__ import annotations

import contextlib

import pluggy
import pytest
import torch

from pluglearn import Accuracy, Learner, PluginError, hookimpl
from pluglearn.hooks import specs
from pluglearn.hooks.dispatch import origin_of
from pluglearn.hooks.markers import PROJECT_NAME
from pluglearn.hooks.specs import HOOKS
from tests.helpers import tiny_learner


class Cleanups:
    def __init__(self, log, name, fail=False):
        self.log, self.plugin_name, self.fail = log, name, fail

    @hookimpl
    def cleanup_batch(self, learn):
        self.log.append(self.plugin_name)
        if self.fail:
            raise RuntimeError(f"{self.plugin_name} failed")


class WrapCleanup:
    def __init__(self, log):
        self.log = log

    @hookimpl(wrapper=True)
    def cleanup_batch(self, learn):
        self.log.append("wrap-in")
        try:
            return (yield)
        finally:
            self.log.append("wrap-out")


def test_a_wrapper_on_a_cleanup_hook_keeps_every_cleanup_running():
    log: list = []
    learn = tiny_learner(
        [WrapCleanup(log), Cleanups(log, "a", fail=True), Cleanups(log, "b"), Cleanups(log, "c")]
    )
    with pytest.raises(RuntimeError, match="a failed") as info:
        learn.fit(1)
    assert log[:5] == ["wrap-in", "a", "b", "c", "wrap-out"]  # b and c ran after a failed
    assert "plugin 'a', hook 'cleanup_batch'" in "\n".join(info.value.__notes__)


def test_every_failing_cleanup_is_named_on_the_first_error():
    log: list = []
    learn = tiny_learner([Cleanups(log, "a", fail=True), Cleanups(log, "b", fail=True)])
    with pytest.raises(RuntimeError, match="a failed") as info:
        learn.fit(1)
    notes = "\n".join(info.value.__notes__)
    assert "plugin 'b', hook 'cleanup_batch' also failed" in notes


def test_a_wrapper_sees_the_result_of_a_step_and_may_replace_it():
    class Provider:
        @hookimpl
        def predict(self, learn):
            return learn.model(learn.xb)

    class Doubling:
        @hookimpl(wrapper=True)
        def predict(self, learn):
            preds = yield
            return preds * 2

    plain, doubled = tiny_learner([Provider()]), tiny_learner([Doubling(), Provider()])
    x = torch.randn(3, 4)
    plain.batch = doubled.batch = (x, None)
    assert torch.equal(doubled.hooks.predict(doubled), 2 * plain.hooks.predict(plain))


def test_an_exception_thrown_into_a_wrapper_can_be_seen_and_passes_on():
    seen = []

    class Watch:
        @hookimpl(wrapper=True)
        def after_loss(self, learn):
            try:
                return (yield)
            except ValueError as error:
                seen.append(str(error))
                raise

    class Boom:
        @hookimpl
        def after_loss(self, learn):
            raise ValueError("inner")

    with pytest.raises(ValueError, match="inner") as info:
        tiny_learner([Watch(), Boom()]).fit(1)
    assert seen == ["inner"]
    assert "raised in plugin 'Boom', hook 'after_loss'" in "\n".join(info.value.__notes__)


def test_a_subclass_of_a_builtin_that_raises_is_named_alone():
    class Broken(Accuracy):
        def batch_sum(self, learn):
            raise ZeroDivisionError("bad metric")

    with pytest.raises(ZeroDivisionError) as info:
        tiny_learner([Broken()], defaults=True).fit(1)
    notes = "\n".join(info.value.__notes__)
    assert "raised in plugin 'Broken', hook 'after_loss'" in notes
    assert "AvgLoss" not in notes


def test_an_error_in_the_model_is_located_in_the_default_step():
    class Crash(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("model broke")

    from pluglearn import DataLoaders

    x = torch.randn(4, 4)
    learn = Learner(Crash(), DataLoaders([(x, x)]), opt_func=lambda p, lr: None, defaults=False)
    with pytest.raises(RuntimeError, match="model broke") as info:
        learn.fit(1)
    assert "plugin 'TrainStep', hook 'predict'" in "\n".join(info.value.__notes__)


def test_forward_context_enters_every_context_in_order_around_predict_and_loss():
    log: list = []

    class Ctx:
        def __init__(self, name):
            self.plugin_name = name

        @hookimpl
        def forward_context(self, learn):
            @contextlib.contextmanager
            def cm():
                log.append(f"enter {self.plugin_name}")
                yield
                log.append(f"exit {self.plugin_name}")

            return cm()

        @hookimpl
        def after_pred(self):
            log.append(f"pred {self.plugin_name}")

        @hookimpl
        def after_loss(self):
            log.append(f"loss {self.plugin_name}")

    tiny_learner([Ctx("a"), Ctx("b")]).fit(1)
    assert log[:8] == [
        "enter a",
        "enter b",
        "pred a",
        "pred b",
        "exit b",
        "exit a",
        "loss a",
        "loss b",
    ]


class EnterFails:
    plugin_name = "enter_fails"

    @hookimpl
    def forward_context(self, learn):
        @contextlib.contextmanager
        def cm():
            raise RuntimeError("cannot enter")
            yield  # pragma: no cover

        return cm()


@pytest.mark.parametrize("others", [0, 1])
def test_a_context_failing_to_enter_is_tagged_with_its_plugin_alone_or_with_others(others):

    log: list = []

    class Quiet:
        @hookimpl
        def forward_context(self, learn):
            return contextlib.nullcontext() if others else None

    learn = tiny_learner([Quiet(), EnterFails()])
    with (
        pytest.raises(RuntimeError, match="cannot enter") as info,
        learn.hooks.forward_context(learn),
    ):
        log.append("body")
    assert log == []
    impl = origin_of(info.value)
    assert (impl.plugin, impl.hook) == ("enter_fails", "forward_context")


def test_a_single_context_sees_the_body_error_and_may_suppress_it_like_several():
    seen: list = []

    class Suppress:
        def __init__(self, name):
            self.plugin_name = name

        @hookimpl
        def forward_context(self, learn):
            @contextlib.contextmanager
            def cm():
                try:
                    yield self.plugin_name
                except KeyError as error:
                    seen.append((self.plugin_name, str(error)))

            return cm()

    for plugins in ([Suppress("one")], [Suppress("a"), Suppress("b")]):
        learn = tiny_learner(plugins)
        with learn.hooks.forward_context(learn):
            raise KeyError("body")
    assert seen == [("one", "'body'"), ("b", "'body'")]  # the innermost suppresses it


def test_old_style_hookwrappers_are_refused_with_the_new_style_fix():
    class Old:
        @hookimpl(hookwrapper=True)
        def after_loss(self, learn):
            yield

    with pytest.raises(PluginError, match=r"hookwrapper=True.*wrapper=True"):
        tiny_learner([Old()])


def test_every_hook_has_one_kind_from_the_table():
    kinds = {spec.kind for spec in HOOKS.values()}
    assert kinds == {"event", "run_all", "first", "collect", "addressed", "context"}
    assert all(HOOKS[h].kind == "run_all" for h in HOOKS if h.startswith("cleanup_"))
    assert HOOKS["on_error"].kind == "run_all" and HOOKS["predict"].kind == "first"


def test_the_pluggy_contract_the_registry_relies_on():
    """pluglearn reads pluggy's public get_hookimpls() and never calls pluggy's callers: pin the
    attributes it reads (pluggy is pinned to major version 1)."""
    assert pluggy.__version__.split(".")[0] == "1"

    class P:
        @hookimpl(tryfirst=True)
        def after_loss(self, learn):
            pass

        @hookimpl(wrapper=True)
        def before_batch(self):
            yield

    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(specs)
    pm.register(P(), name="p")
    pm.check_pending()
    (impl,) = pm.hook.after_loss.get_hookimpls()
    assert (impl.plugin_name, impl.argnames, impl.tryfirst, impl.trylast) == (
        "p",
        ("learn",),
        True,
        False,
    )
    assert impl.wrapper is False and callable(impl.function)
    (wrapper,) = pm.hook.before_batch.get_hookimpls()
    assert wrapper.wrapper is True and wrapper.argnames == ()


class Named:
    def __init__(self, name: str) -> None:
        self.plugin_name = name
        self.seen: list = []


class Plain(Named):
    @hookimpl
    def before_batch(self, learn):
        self.seen.append(learn)


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
