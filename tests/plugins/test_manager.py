"""Registration guards, names, wrappers and entry points of the plugin registry."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pluglearn import PluginError, PluginWarning, hookimpl
from pluglearn.hooks.registry import PluginRegistry
from pluglearn.hooks.specs import HOOKS
from tests.helpers import tiny_learner


class Good:
    @hookimpl
    def before_batch(self, learn):
        pass


def test_unknown_hook_name_is_refused_with_did_you_mean():
    class Typo:
        @hookimpl
        def before_bacth(self, learn):
            pass

    with pytest.raises(PluginError, match=r"Typo: 'before_bacth'.*Did you mean 'before_batch'\?"):
        tiny_learner([Typo()])


def test_argument_the_hook_lacks_is_refused():
    class ExtraArg:
        @hookimpl
        def after_loss(self, learn, loss):
            pass

    with pytest.raises(PluginError, match=r"ExtraArg: hook 'after_loss' has argument\(s\) 'loss'"):
        tiny_learner([ExtraArg()])


def test_a_class_instead_of_an_instance_is_refused():
    with pytest.raises(PluginError, match=r"Good is a class.*pass Good\(\) \(forgot the \(\)\?\)"):
        tiny_learner([Good])


def test_the_same_object_twice_is_refused_but_two_instances_are_fine():
    plugin = Good()
    with pytest.raises(PluginError, match="Good is already registered"):
        tiny_learner([plugin, plugin])
    learn = tiny_learner([Good(), Good()])
    assert [type(p).__name__ for p in learn.plugins].count("Good") == 2


def test_equal_dataclass_plugins_get_the_eq_false_fix():
    @dataclass
    class Scale:
        factor: float = 2.0

        @hookimpl
        def after_loss(self, learn):
            pass

    with pytest.raises(PluginError, match=r"@dataclass\(eq=False\)"):
        tiny_learner([Scale(), Scale()])

    @dataclass(eq=False)
    class ScaleOk:
        factor: float = 2.0

        @hookimpl
        def after_loss(self, learn):
            pass

    assert len(tiny_learner([ScaleOk(), ScaleOk()]).plugins) == 5  # and 3 providers


def test_a_function_passed_as_a_plugin_is_refused_with_what_a_plugin_is():
    def log_loss(learn):
        print(learn.loss)

    for function in (log_loss, print, Good().before_batch):
        with pytest.raises(PluginError, match=r"is a function, not a plugin: .*plugins=\[LogLoss"):
            tiny_learner([function])


def test_hook_named_method_without_hookimpl_warns():
    class Forgot:
        def after_batch(self, learn):
            pass

        def after_bach(self, learn):  # a misspelling without the marker
            pass

    with pytest.warns(PluginWarning) as record:
        tiny_learner([Forgot()])
    messages = [str(r.message) for r in record]
    assert any("'after_batch' is named like a hook but lacks @hookimpl" in m for m in messages)
    assert any(
        "'after_bach' lacks @hookimpl and looks like a misspelled 'after_batch'" in m
        for m in messages
    )


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


def test_every_hook_is_documented_with_its_call_order():
    from pluglearn.hooks import specs

    for hook in HOOKS:
        doc = getattr(specs, hook).__doc__
        assert doc and len(doc.split()) >= 5, f"hook {hook} needs a docstring"
        if hook not in ("state_dict", "load_state_dict", "make_dataloader", "on_error"):
            assert hook in specs.__doc__, f"the call order in specs' docstring lacks {hook}"
