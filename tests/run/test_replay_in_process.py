"""A loader without state resumed mid-epoch in one process: the epoch's batches replayed to the
cut from the random states the epoch started from (a warning says how many and the fix), with
or without a length, bit-identical to the uninterrupted run."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from pluglearn import DataLoaders, Learner, hookimpl
from pluglearn.checkpoint.files import (
    save_checkpoint,
)
from pluglearn.checkpoint.plugin import Checkpoint
from tests.helpers import CrashAt, batches, tiny_data
from tests.support.checkpoints import checkpoint, learner


def test_a_loader_without_state_replays_to_the_cut_with_a_warning(tmp_path):
    def learner(directory=tmp_path):
        torch.manual_seed(0)
        x, y = tiny_data(40, n_in=4)
        dls = DataLoaders(batches(x[:32], y[:32], 4), batches(x[32:], y[32:], 4))
        return Learner(nn.Linear(4, 3), dls, plugins=[Checkpoint(directory, every_n_batches=1)])

    reference = learner(tmp_path / "reference")
    reference.fit(2)

    class Die:
        @hookimpl
        def after_batch(self, learn):
            if learn.training and learn.train_iter == 11:
                raise RuntimeError("die")

    with pytest.raises(RuntimeError):
        learner().fit(2, plugins=[Die()])
    resumed = learner()
    with pytest.warns(UserWarning, match="replays 2 batches"):  # saved at step 10 = 8 + 2
        resumed.fit(2, resume_from=tmp_path)
    for a, b in zip(reference.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_loader_without_state_warns_how_many_batches_it_replays_and_the_fix(tmp_path):
    state = checkpoint(tmp_path, ready=True)
    path = save_checkpoint(state, tmp_path / "ready.pt")
    with pytest.warns(UserWarning, match=re.escape(
        "the training loader (list) has no state_dict, so the resume replays 2 batches to reach "
        "the cut (their order drawn again from the random states the epoch started from); "
        "DataLoaders.from_datasets or torchdata's StatefulDataLoader resume in O(1)."
    )):  # fmt: skip
        learner(ready=True).fit(3, resume_from=path)


@pytest.mark.slow
def test_a_stateless_loader_without_a_length_replays_to_the_cut_with_a_warning(tmp_path):
    from pluglearn import DataLoaders, Learner

    batches = list(learner(ready=True).dls.train)

    class NoLen:
        def __iter__(self):
            return iter(batches)

    def no_len(plugins=()):
        import torch
        from torch import nn

        torch.manual_seed(0)
        return Learner(nn.Linear(4, 3), DataLoaders(NoLen()), lr=0.1, plugins=plugins)

    with pytest.raises(RuntimeError, match="killed"):
        no_len([Checkpoint(tmp_path, every_n_batches=1)]).fit(3, plugins=[CrashAt(1, 2)])
    with pytest.warns(UserWarning, match=re.escape(
        "the training loader (NoLen) has no state_dict, so the resume replays 2 batches"
    )):  # fmt: skip
        no_len().fit(3, resume_from=tmp_path)
