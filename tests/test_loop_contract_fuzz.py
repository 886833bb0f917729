"""The loop's contract under random plugins that cancel or fail at random points (hypothesis).

Random sets of plugins implement random hooks (plain, tryfirst or trylast) and raise a cancel or
a RuntimeError at random (hook, epoch, batch) points. A recorder, first of all and ``tryfirst``
on every event, logs each hook call; the raisers log what they raise. ``check_log`` replays that
log against the contract of :mod:`pluglearn.hooks.specs` with a stack of open phases and the
exception in flight, and says how ``fit`` must end.

The contract for a cancel no running phase matches: a ``CancelXException`` ends phase X only
when raised in ``before_X``, X's body (its sub-phases, their cleanups included) or ``after_X``.
Raised anywhere else (CancelTrain in a validation batch, CancelBatch outside a batch, CancelX
from ``cleanup_X`` itself) it crosses every phase above, running their cleanups without
``on_error``, and ``fit`` turns it into a ``RuntimeError`` that says where it was raised and why
no phase took it. An error raised by ``cleanup_fit`` itself is reported (note and ``on_error``)
after the cleanups, since no phase is left to catch it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pluglearn import (
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
    DataLoaders,
    Learner,
    hookimpl,
)
from tests.helpers import BATCH_EVENTS, EVENTS, EventLog, batches, tiny_data

RAISING_HOOKS = [e for e in EVENTS if e != "on_error"]
ERRORS = [
    CancelBatchException,
    CancelTrainException,
    CancelValidateException,
    CancelEpochException,
    CancelFitException,
    RuntimeError,
]
CANCEL_OF = {
    "fit": CancelFitException,
    "epoch": CancelEpochException,
    "train": CancelTrainException,
    "validate": CancelValidateException,
    "batch": CancelBatchException,
}
PARENTS = {
    "fit": (None,),
    "epoch": ("fit",),
    "train": ("epoch",),
    "validate": ("epoch", "batch"),  # "batch": learn.validate() from a training hook
    "batch": ("train", "validate"),
}
STEPS = {"train": ["pred", "loss", "backward", "before_step", "step"], "validate": ["pred", "loss"]}
X, Y = tiny_data(16)


# ------------------------------------------------------------------------ the plugins


def recorder(log: list) -> object:
    """A plugin that logs every event as ``("call", hook, epoch, batch, training)``."""

    def method(event):
        if event == "on_error":
            return lambda self, error: log.append(("on_error", event, type(error)))
        return lambda self, learn: log.append(
            ("call", event, learn.epoch, learn.iter, learn.training)
        )

    hooks = {e: hookimpl(tryfirst=True)(method(e)) for e in EVENTS}
    return type("Recorder", (), hooks)()


@dataclass
class Spec:
    hooks: dict[str, str]  # hook -> "plain" | "tryfirst" | "trylast"
    points: list[tuple[str, int, int, bool, type[BaseException]]]
    fit_scoped: bool
    wrapper: bool = False  # new-style wrappers: they raise after the inner call succeeded
    validate_at: tuple[int, int] | None = None  # (epoch, batch): learn.validate() in after_loss


def raiser(spec: Spec, log: list) -> object:
    """A plugin of ``spec``: it raises at its points (hook, epoch, batch, training)."""

    def method(hook):
        in_batch = hook in BATCH_EVENTS

        def call(self, learn):
            for at_hook, epoch, batch, training, error in spec.points:
                if (
                    at_hook == hook
                    and epoch == learn.epoch
                    and (not in_batch or (batch, training) == (learn.iter, learn.training))
                ):
                    log.append(("raise", hook, error))
                    raise error(f"{error.__name__} at {hook}, epoch {epoch}, batch {batch}")

        def wrap(self, learn):
            result = yield
            call(self, learn)
            return result

        return hookimpl(
            tryfirst=spec.hooks[hook] == "tryfirst",
            trylast=spec.hooks[hook] == "trylast",
            wrapper=spec.wrapper,
        )(wrap if spec.wrapper else call)

    hooks = {h: method(h) for h in spec.hooks}
    if spec.validate_at is not None:
        own = hooks.get("after_loss")

        def after_loss(self, learn):
            if own is not None:
                own(self, learn)
            if learn.training and (learn.epoch, learn.iter) == spec.validate_at:
                learn.validate()  # re-entrant: a nested validation inside a training batch

        if not spec.wrapper:
            hooks["after_loss"] = hookimpl(after_loss)
    return type("Fuzz", (), hooks)()


@st.composite
def specs(draw) -> Spec:
    hooks = draw(
        st.dictionaries(
            st.sampled_from(RAISING_HOOKS),
            st.sampled_from(["plain", "tryfirst", "trylast"]),
            min_size=1,
            max_size=6,
        )
    )
    point = st.tuples(
        st.sampled_from(sorted(hooks)),
        st.integers(0, 2),
        st.integers(0, 1),
        st.booleans(),
        st.sampled_from(ERRORS),
    )
    validate_at = draw(st.none() | st.tuples(st.integers(0, 2), st.integers(0, 1)))
    return Spec(
        hooks,
        draw(st.lists(point, max_size=2)),
        draw(st.booleans()),
        draw(st.booleans()),
        validate_at,
    )


# ------------------------------------------------------------------------ the contract


@dataclass
class Phase:
    name: str
    index: int  # the epoch of an epoch, the batch index of a batch
    steps: list[str] = field(default_factory=list)
    children: list[Phase] = field(default_factory=list)
    after: bool = False


@dataclass
class Outcome:
    raised: type[BaseException] | None  # what fit must raise (None: return)
    origin: str | None  # the hook that raised it
    on_errors: int
    cancelled: set[str]  # the phases whose own cancel ended them


def check_log(log: list, n_epochs: int, n_batches: dict[str, int]) -> Outcome:
    stack: list[Phase] = []
    flying: type[BaseException] | None = None  # the exception propagating now
    origin, reported, on_errors, done = None, False, 0, False
    cancelled: set[str] = set()
    opened = False  # a phase was entered (after_create_opt runs before any)
    for kind, hook, *rest in log:
        late = (kind, hook) == ("raise", "cleanup_fit") or (
            kind == "on_error" and origin == "cleanup_fit"
        )
        assert not done or late, f"{hook} after cleanup_fit"
        if kind == "raise":
            if flying is None:
                flying, origin, reported = rest[0], hook, False
            else:  # only cleanups run while an exception flies; theirs become notes on it
                assert hook.startswith("cleanup_"), hook
            continue
        if kind == "on_error":
            assert flying is rest[0] and not issubclass(flying, CancelException), "on_error"
            assert not reported, "on_error called twice for one error"
            reported, on_errors = True, on_errors + 1
            continue
        if hook == "after_create_opt":  # before the fit phase: no phase is open yet
            assert not opened and flying is None, hook
            continue
        opened = True
        stage, name = hook.split("_", 1)
        epoch, index = rest[0], rest[1]
        if stage in ("before", "after"):
            assert flying is None, f"{hook} ran while {flying.__name__} was in flight"
            assert not stack or not stack[-1].after, f"{hook} after after_{stack[-1].name}"
        if hook == "before_step":  # a step of a training batch that steps
            assert stack[-1].name == "batch", hook
            stack[-1].steps.append(hook)
        elif stage == "before":
            assert (stack[-1].name if stack else None) in PARENTS[name], hook
            stack.append(Phase(name, epoch if name == "epoch" else index))
        elif stage == "after" and name in CANCEL_OF:
            assert stack[-1].name == name, hook
            stack[-1].after = True
        elif stage == "after":  # a step of the batch: pred, loss, backward, step
            assert stack[-1].name == "batch", hook
            stack[-1].steps.append(name)
        else:  # cleanup_X: phase X ends
            phase = stack.pop()
            assert phase.name == name, f"{hook} closes {phase.name}"
            if flying is not None and not issubclass(flying, CancelException):
                assert reported, f"{hook} ran before on_error"
            indexes = [c.index for c in phase.children if c.name in ("epoch", "batch")]
            assert indexes == list(range(len(indexes))), f"{name}: epochs or batches out of order"
            if flying is None:  # a normal end passes through after_X, after all of X
                assert phase.after, f"{hook} without after_{name}"
                check_complete(phase, stack, n_epochs, n_batches)
            if flying is CANCEL_OF[name]:  # handled: the loop goes on after X
                flying = None
                cancelled.add(name)
            if stack:
                stack[-1].children.append(phase)
            done = name == "fit"
    assert not stack, "a phase never ended"
    assert done or (flying is not None and not opened), "the fit never ended"
    return Outcome(flying, origin, on_errors, cancelled)


def check_complete(phase: Phase, stack: list[Phase], n_epochs: int, n_batches: dict) -> None:
    names = [c.name for c in phase.children]
    if phase.name == "batch":
        assert phase.steps == STEPS[stack[-1].name], phase.steps
    elif phase.name in ("train", "validate"):
        assert len(names) == n_batches[phase.name], f"{phase.name} skipped batches"
    elif phase.name == "epoch":
        assert names == ["train", "validate"], names
    else:
        assert len(names) == n_epochs, "fit skipped epochs"


# ------------------------------------------------------------------------ the tests


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    plugin_specs=st.lists(specs(), min_size=1, max_size=5),
    n_epochs=st.integers(2, 3),
    n_valid=st.integers(1, 2),
)
@pytest.mark.slow
def test_random_plugins_keep_the_contract(plugin_specs, n_epochs, n_valid):
    """Random plugins, plain or new-style wrappers, some validating from inside a training
    batch, raising cancels and errors at random points, keep the contract."""
    log: list = []
    plugins = [raiser(spec, log) for spec in plugin_specs]
    own = [p for p, s in zip(plugins, plugin_specs, strict=True) if not s.fit_scoped]
    scoped = [p for p, s in zip(plugins, plugin_specs, strict=True) if s.fit_scoped]
    dls = DataLoaders(batches(X[:8], Y[:8], 4), batches(X[8 : 8 + 4 * n_valid], Y[8:], 4))
    learn = Learner(nn.Linear(4, 3), dls, plugins=[recorder(log), *own], defaults=False)
    registered = learn.plugins
    error: BaseException | None = None
    try:
        learn.fit(n_epochs, plugins=scoped)
    except Exception as raised:
        error = raised
    outcome = check_log(log, n_epochs, {"train": 2, "validate": n_valid})
    if outcome.raised is None:
        assert error is None, f"fit raised {error!r}"
    elif issubclass(outcome.raised, CancelException):  # a cancel no phase took: an error
        assert type(error) is RuntimeError and type(error.__cause__) is outcome.raised, error
        assert "raised in plugin 'Fuzz" in str(error) and outcome.origin in str(error)
    else:
        assert type(error) is outcome.raised, f"fit raised {error!r}, not {outcome.raised}"
    assert outcome.on_errors <= 1
    if outcome.raised is RuntimeError:
        assert outcome.on_errors == 1
        assert any(n.startswith("pluglearn: raised in plugin 'Fuzz") for n in error.__notes__)
    else:
        assert outcome.on_errors == 0
    if "fit" in outcome.cancelled:
        assert learn.stop_reason.startswith("Fuzz")
    assert learn.plugins == registered  # the fit-scoped plugins are gone, even after an error


@pytest.mark.parametrize(
    ("raise_at", "error"),
    [
        (("after_loss", 0, 0), CancelTrainException),  # also in the validation batch: escapes
        (("before_train", 0, None), CancelBatchException),
        (("before_validate", 0, None), CancelTrainException),
        (("cleanup_epoch", 0, None), CancelEpochException),
        (("cleanup_fit", 1, None), CancelFitException),
    ],
)
def test_a_cancel_no_running_phase_matches_is_an_error_saying_where(raise_at, error):
    """The contract for stray cancels (see the module doc), pinned by hand-picked cases."""
    log = EventLog(raise_at, error())
    learn = Learner(
        nn.Linear(4, 3),
        DataLoaders(batches(X[:8], Y[:8], 4), batches(X[8:12], Y[8:12], 4)),
        plugins=[log],
        defaults=False,
    )
    with pytest.raises(RuntimeError, match=f"{error.__name__} raised in plugin 'EventLog'") as info:
        learn.fit(2)
    assert type(info.value.__cause__) is error and "no " in str(info.value)
    assert not any(isinstance(e, tuple) for e in log.events)  # no on_error for a cancel
    assert log.events[-1] == "cleanup_fit"  # every cleanup ran on the way out
    assert log.events.count("before_epoch") == log.events.count("cleanup_epoch")
