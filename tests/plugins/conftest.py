"""Fixtures shared by several files of tests/plugins/ (the shared ``make_learner`` is in
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pluglearn import Learner, Recorder


@pytest.fixture
def budget_learner(make_learner) -> Callable[..., Learner]:
    """The step-budget tests' run (test_budget.py, test_budget_edges.py): the shared tiny Learner
    with the default plugins and a Recorder, 40 shuffled training items in batches of 8 (5
    batches an epoch), 8 validating.

        learn = budget_learner([Checkpoint(tmp_path)])
    """
    return lambda plugins=(): make_learner(
        [Recorder(), *plugins],
        n_train=40,
        n_valid=8,
        bs=8,
        defaults=True,
        data_seed=9,
        from_datasets=True,
        loader_seed=5,
        lr=0.3,
    )
