"""Fixtures the checkpoint tests share."""

from __future__ import annotations

from functools import partial

import pytest


@pytest.fixture
def small_learner(make_learner):
    """The shared tiny Learner with the default plugins: 32 shuffled training items of
    ``tiny_data(40, seed=2)`` in batches of 8 (4 an epoch), 8 validating."""
    return partial(
        make_learner,
        n_train=32,
        n_valid=8,
        bs=8,
        defaults=True,
        data_seed=2,
        from_datasets=True,
        loader_seed=1,
    )
