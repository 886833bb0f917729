"""Hook names from other frameworks get the pluglearn equivalent, not a misleading did-you-mean."""

from __future__ import annotations

import pytest

from pluglearn import PluginError, PluginWarning, hookimpl
from pluglearn.hooks import specs
from pluglearn.hooks.foreign_names import FOREIGN_HOOKS, suggest

REAL_HOOKS = {name for name, fn in vars(specs).items() if hasattr(fn, "pluglearn_spec")}


@pytest.fixture
def learner_with(make_learner):
    """The shared tiny Learner, the default plugins included, with ``plugin`` registered."""
    return lambda plugin: make_learner([plugin], defaults=True)


def plugin_with_hook(name: str) -> object:
    def method(self, learn):
        pass

    method.__name__ = name
    return type("Ported", (), {name: hookimpl(method)})()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("on_train_batch_end", "'after_batch'"),
        ("on_epoch_end", "'after_epoch'"),
        ("on_validation_epoch_end", "'after_validate'"),
        ("before_backward", "'after_loss'"),
        ("on_after_backward", "'after_backward'"),
        ("on_before_optimizer_step", "'before_step'"),
        ("after_cancel_batch", "'cleanup_batch'"),
        ("training_step", "'predict' or 'compute_loss'"),
        ("on_train_begin", "'before_fit'"),
    ],
)
def test_a_foreign_hook_name_gets_its_pluglearn_equivalent_at_registration(
    name, expected, learner_with
):
    with pytest.raises(PluginError) as info:
        learner_with(plugin_with_hook(name))
    message = str(info.value)
    assert f"'{name}' is a " in message and f"in pluglearn use {expected}" in message
    assert "Did you mean" not in message  # on_train_batch_end is not 'before_batch'


def test_a_plain_typo_still_gets_a_did_you_mean(learner_with):
    with pytest.raises(PluginError, match="Did you mean 'after_batch'"):
        learner_with(plugin_with_hook("after_bacth"))


def test_real_hooks_are_not_foreign_and_every_suggestion_is_a_real_hook():
    assert not set(FOREIGN_HOOKS) & REAL_HOOKS
    for name in ("before_step", "after_create_opt", "should_step", "forward_context"):
        assert suggest(name) is None  # pluglearn's own hooks, whatever fastai means by them
    for name, hook in FOREIGN_HOOKS.items():
        unknown = [h for h in hook.hooks if h not in REAL_HOOKS]
        assert not unknown, f"{name} suggests {unknown}, which are not pluglearn hooks"


def test_a_method_named_like_a_real_hook_registers(learner_with):
    learner_with(plugin_with_hook("before_fit"))  # no error: fastai's name is ours too


def plugin_with_method(name: str) -> object:
    """A ported plugin that kept its old method, without @hookimpl (so nothing would call it)."""

    def method(self, learn):
        pass

    method.__name__ = name
    return type("Ported", (), {name: method})()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("on_train_batch_end", "'after_batch'"),
        ("before_backward", "'after_loss'"),
        ("on_epoch_end", "'after_epoch'"),
        ("on_validation_epoch_end", "'after_validate' or 'report'"),
        ("training_step", "'predict' or 'compute_loss'"),
        ("on_train_begin", "'before_fit'"),
    ],
)
def test_a_foreign_hook_name_without_hookimpl_warns_with_its_pluglearn_equivalent(
    name, expected, learner_with
):
    with pytest.warns(PluginWarning) as record:
        learn = learner_with(plugin_with_method(name))
    (message,) = [str(r.message) for r in record if issubclass(r.category, PluginWarning)]
    assert message.startswith(f"plugin Ported: '{name}' is a ")
    assert f"in pluglearn use {expected}" in message and "never runs" in message
    assert "@hookimpl" in message and "Did you mean" not in message
    learn.fit(1)  # it is a warning: the plugin registered, and the fit runs


@pytest.mark.parametrize("name", ["setup", "teardown", "get_loss"])
def test_a_foreign_name_that_is_also_a_common_method_name_does_not_warn(
    name, recwarn, learner_with
):
    learner_with(plugin_with_method(name))
    assert not [r for r in recwarn if issubclass(r.category, PluginWarning)]
