"""The checks at registration: unknown hooks (did-you-mean), arguments a hook lacks, classes and
functions instead of plugins, equal dataclass twins, hook-named methods without ``@hookimpl``."""

from __future__ import annotations

import types
from dataclasses import dataclass

import pytest

from pluglearn import PluginError, PluginWarning, hookimpl
from pluglearn.hooks.guards import plugin_name
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


def test_a_module_registered_as_a_plugin_is_named_by_its_module_name():
    module = types.ModuleType("log_losses")
    module.after_loss = hookimpl(lambda learn: None)
    learn = tiny_learner([module])
    assert [impl.plugin for impl in learn.hooks.impls["after_loss"]] == ["log_losses"]
    assert plugin_name(module) == "log_losses" and plugin_name(Good()) == "Good"


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
