"""The global random states (python, numpy, torch) captured and set back: the draws after equal
the draws before, and the numpy key is a tensor a safe load reads."""

from __future__ import annotations

import random

import numpy as np
import torch

from pluglearn.checkpoint.resume import rng_state, set_rng_state


def test_the_random_states_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = rng_state()
    first = (random.random(), np.random.rand(), np.random.randn(), torch.rand(1))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    set_rng_state(state)
    again = (random.random(), np.random.rand(), np.random.randn(), torch.rand(1))
    assert first[:3] == again[:3] and torch.equal(first[3], again[3])
    assert state["numpy"][1].dtype == torch.int64  # the key, safe to save as a tensor
