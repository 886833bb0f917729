"""Whether a plugin may cancel is derived from its hooks' code (pluglearn.hooks.cancels):
a reference to a cancel exception or to ``learn.run.stop``, in the hook, in what it defines, in
module-level helpers of its module and in methods of its class; a declaration overrides it."""

from __future__ import annotations

import pytest

import pluglearn
from pluglearn import (
    Accuracy,
    CancelEpochException,
    CancelFitException,
    Checkpoint,
    EarlyStopping,
    GradientAccumulation,
    GradientClipping,
    MixedPrecision,
    ProgressBar,
    Recorder,
    TerminateOnNaN,
    hookimpl,
)
from pluglearn.exceptions import CancelException
from pluglearn.hooks.cancels import function_may_cancel, impl_may_cancel, plugin_may_cancel
from pluglearn.plugins.budget import StepBudget
from pluglearn.plugins.train_step import TrainStep
from tests.helpers import tiny_learner

Stop = CancelFitException  # another name for a cancel


def _stop_here(message: str) -> None:
    raise CancelEpochException(message)


def _indirect(message: str) -> None:
    _stop_here(message)


class Quiet:
    @hookimpl
    def after_epoch(self, learn) -> None:
        print(learn.metrics)


class Direct:
    @hookimpl
    def after_epoch(self, learn) -> None:
        if learn.metrics["valid_loss"] > 1:
            raise CancelFitException("diverged")


class Aliased:
    @hookimpl
    def after_batch(self, learn) -> None:
        raise Stop("under another name")


class ByAttribute:
    @hookimpl
    def after_batch(self, learn) -> None:
        raise pluglearn.CancelTrainException("pluglearn.CancelTrainException")


class ThroughHelpers:
    @hookimpl
    def after_batch(self, learn) -> None:
        _indirect("two module-level calls away")


class ThroughAMethod:
    @hookimpl
    def after_batch(self, learn) -> None:
        self._check(learn)

    def _check(self, learn) -> None:
        if learn.iter > 100:
            learn.run.stop("ThroughAMethod: too long")
            raise CancelException()


class InALambda:
    @hookimpl
    def before_fit(self, learn) -> None:
        self.stop = lambda: (_ for _ in ()).throw(CancelFitException("from a lambda"))


class Declared:
    may_cancel = True  # its cancel comes from a module pluglearn does not read

    @hookimpl
    def after_batch(self, learn) -> None:
        print(learn.iter)


class Denied(Direct):
    may_cancel = False


def test_plugins_whose_code_names_no_cancel_may_not_cancel():
    assert not plugin_may_cancel(Quiet())


@pytest.mark.parametrize(
    "plugin", [Direct(), Aliased(), ByAttribute(), ThroughHelpers(), ThroughAMethod(), InALambda()]
)
def test_a_cancel_named_in_the_hook_or_what_it_calls_in_its_module_or_class_is_found(plugin):
    assert plugin_may_cancel(plugin)


def test_a_declaration_wins_over_the_derivation_either_way():
    assert plugin_may_cancel(Declared()) and not plugin_may_cancel(Denied())


def test_pluglearns_stopping_plugins_may_cancel_and_the_others_may_not():
    stopping = [EarlyStopping(), TerminateOnNaN(), StepBudget(10)]
    assert all(plugin_may_cancel(p) for p in stopping)
    others = [
        Accuracy(),
        ProgressBar(),
        Recorder(),
        TrainStep(),
        GradientAccumulation(2),
        GradientClipping(1.0),
        MixedPrecision(),
        Checkpoint("unused"),
    ]
    assert not any(plugin_may_cancel(p) for p in others)


def test_code_that_cannot_be_read_may_cancel():
    assert function_may_cancel(print)  # a builtin: no code to read


def test_each_implementation_is_judged_on_its_own_hook():
    learn = tiny_learner([Direct(), Quiet()])
    judged = {i.plugin: impl_may_cancel(i) for i in learn.hooks.impls["after_epoch"]}
    assert judged == {"Direct": True, "Quiet": False}
