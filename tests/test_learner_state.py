"""docs/learner_state.md lists every public attribute of a Learner, and only real ones; the
hooks it names see what it says; a guessed name gets the real one in its AttributeError."""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path

import pytest
import torch

from pluglearn import AvgLoss, Learner, hookimpl
from pluglearn.diagnostics.attribute_suggestions import GUESSES
from tests.helpers import tiny_learner

DOC = Path(__file__).resolve().parents[1] / "docs/learner_state.md"


def section(name: str) -> str:
    return DOC.read_text().split(f"<!-- {name}:start -->")[1].split(f"<!-- {name}:end -->")[0]


def documented_attributes() -> list[str]:
    rows = [r for r in section("state").strip().splitlines()[2:] if r.startswith("|")]
    return [r.strip("|").split("|")[0].strip().strip("`") for r in rows]


def is_method(name: str) -> bool:
    return inspect.isfunction(inspect.getattr_static(Learner, name, None))


def public_state(learn: Learner) -> set[str]:
    """Public instance attributes and properties; methods are listed separately."""
    names = {n for n in vars(learn) if not n.startswith("_")}
    names |= {n for n in dir(Learner) if not n.startswith("_") and not is_method(n)}
    return names


def test_the_table_lists_every_public_attribute_of_a_fitted_learner_and_only_those():
    learn = tiny_learner()
    learn.fit(1)
    rows = documented_attributes()
    assert len(rows) == len(set(rows)), "a row is listed twice"
    missing = public_state(learn) - set(rows)
    assert not missing, f"docs/learner_state.md does not document: {sorted(missing)}"
    stale = set(rows) - public_state(learn)
    assert not stale, f"docs/learner_state.md lists what a Learner does not have: {sorted(stale)}"


def test_the_methods_listed_exist():
    listed = re.findall(r"`(\w+)\(", section("methods"))
    assert "fit" in listed and "validate" in listed
    for name in listed:
        assert is_method(name), f"docs/learner_state.md lists Learner.{name}(), which is gone"


class Probe:
    """Checks, in the hooks the table names, that the attributes hold what it says."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    @hookimpl
    def after_create_opt(self, learn):
        assert learn.opt is not None and learn.n_epochs == 2
        self.seen.add("after_create_opt")

    @hookimpl
    def before_train(self, learn):
        assert learn.training and learn.dl is learn.dls.train and learn.n_iter == 2
        assert learn.metrics == {"epoch": learn.epoch}
        self.seen.add("before_train")

    @hookimpl
    def before_batch(self, learn):
        assert learn.xb is learn.batch[0] and learn.yb is learn.batch[1]
        assert 0 <= learn.iter < learn.n_iter
        self.seen.add("before_batch")

    @hookimpl
    def after_pred(self, learn):
        assert learn.preds.shape == (len(learn.xb), 3)
        self.seen.add("after_pred")

    @hookimpl
    def after_loss(self, learn):
        assert learn.loss.ndim == 0
        if learn.training:
            assert learn.will_step
        self.seen.add("after_loss")

    @hookimpl
    def after_batch(self, learn):
        if learn.training:
            assert learn.train_iter == learn.epoch * 2 + learn.iter + 1
            assert learn.opt_steps == learn.train_iter
        self.seen.add("after_batch")

    @hookimpl
    def before_validate(self, learn):
        assert not learn.training and learn.dl is learn.dls.valid and "train_loss" in learn.metrics
        self.seen.add("before_validate")

    @hookimpl
    def report(self, learn, metrics):
        assert {"epoch", "train_loss", "valid_loss", "time"} <= set(metrics)
        assert learn.run.entries == ["fit"]
        self.seen.add("report")


def test_the_hooks_the_table_names_see_what_it_says():
    probe = Probe()
    learn = tiny_learner([probe, AvgLoss()])
    learn.fit(2)
    assert len(probe.seen) == 8
    assert learn.stop_reason is None and learn.epoch == 1 and learn.train_iter == 4


@pytest.mark.parametrize(
    ("guess", "real"),
    [("optimizer", "opt"), ("optim", "opt"), ("epochs", "n_epochs"), ("criterion", "loss_func")],
)
def test_a_guessed_name_gets_the_real_one(guess, real):
    learn = tiny_learner()
    with pytest.raises(AttributeError, match=rf"no attribute '{guess}': use learn\.{real}\b"):
        getattr(learn, guess)


def test_a_typo_gets_a_did_you_mean_and_an_unknown_name_only_the_pointer():
    learn = tiny_learner()
    with pytest.raises(AttributeError, match=r"did you mean learn\.training\?"):
        learn.trainning  # noqa: B018
    with pytest.raises(AttributeError) as raised:
        learn.frobnicate  # noqa: B018
    assert "did you mean" not in str(raised.value)
    assert "docs/learner_state.md" in str(raised.value)


def test_every_guess_points_to_a_real_attribute():
    learn = tiny_learner()
    for guess, (real, _) in GUESSES.items():
        assert real in dir(learn), f"GUESSES sends {guess!r} to learn.{real}, which is gone"
        assert guess not in dir(learn), f"{guess!r} is a real attribute now: drop the guess"


def test_private_names_fail_plainly_and_copy_still_works():
    learn = tiny_learner()
    with pytest.raises(AttributeError) as raised:
        learn._no_such_thing  # noqa: B018
    assert str(raised.value) == "'Learner' object has no attribute '_no_such_thing'"
    assert not hasattr(learn, "__deepcopy__")
    twin = copy.copy(learn)
    assert twin.model is learn.model and twin.opt is learn.opt


def test_a_property_that_raises_attribute_error_keeps_its_own_message():
    learn = tiny_learner()
    learn.run = torch.nn.Identity()  # a wrong run state: reading the position fails inside
    with pytest.raises(AttributeError, match="has no attribute 'pos'"):
        learn.epoch  # noqa: B018
