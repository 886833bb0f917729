"""A resume that cannot reproduce the interrupted epoch is refused, in the process that resumes,
naming the loader, the batch and what to use instead; the digest that checks an unknown
loader's replay reads the whole batch structure, the same with or without numpy."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from torch import nn

from pluglearn import Checkpoint, DataLoaders, Learner
from pluglearn.checkpoint.files import CheckpointError, checkpoints_in
from pluglearn.run.replay import USE_INSTEAD, fingerprint
from tests.helpers import CrashAt, batches, tiny_data


class Stream:
    """An iterable without length or state: a loader pluglearn knows nothing about."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __iter__(self):
        yield from self.items


def _learner(train, plugins=()) -> Learner:
    torch.manual_seed(0)
    x, y = tiny_data(12)
    dls = train if isinstance(train, DataLoaders) else DataLoaders(train, batches(x[8:], y[8:], 2))
    return Learner(nn.Linear(4, 3), dls, lr=0.1, plugins=plugins, defaults=False)


def _cut_mid_epoch(tmp_path, train) -> None:
    """A run of ``train`` killed in batch 2 of epoch 0 (its last checkpoint: after batch 1)."""
    with pytest.raises(RuntimeError, match="killed"):
        _learner(train, [Checkpoint(tmp_path, every_n_batches=1)]).fit(2, plugins=[CrashAt(0, 2)])


def _train_batches(seed: int = 0, n: int = 8) -> list:
    x, y = tiny_data(n, seed=seed)
    return batches(x, y, 2)


def test_a_stream_that_yields_other_batches_at_the_resume_is_refused_naming_the_batch(tmp_path):
    _cut_mid_epoch(tmp_path, Stream(_train_batches()))
    with pytest.raises(CheckpointError) as refused:
        _learner(Stream(_train_batches(seed=1))).fit(2, resume_from=tmp_path)
    assert str(refused.value) == (
        "the training loader (Stream) cannot be resumed mid-epoch exactly: read again from the "
        "start of the interrupted epoch, its batch 1 differs from the one the saved run trained "
        "on (its order or its items depend on state pluglearn cannot put back: an "
        "IterableDataset, a sampler with a private generator, random transforms, persistent "
        f"workers). To resume, {USE_INSTEAD}."
    )


def test_a_stream_that_ends_before_the_cut_is_refused_naming_both_counts(tmp_path):
    _cut_mid_epoch(tmp_path, Stream(_train_batches()))
    with pytest.raises(CheckpointError) as refused:
        _learner(Stream(_train_batches()[:1])).fit(2, resume_from=tmp_path)
    assert str(refused.value) == (
        "the training loader (Stream) yielded 1 batches in the resumed epoch, and the checkpoint "
        "was written after 2: the loader or its dataset changed; resume with the data the run "
        "was saved with."
    )


def test_the_same_stream_resumes(tmp_path):
    _cut_mid_epoch(tmp_path, Stream(_train_batches()))
    resumed = _learner(Stream(_train_batches()))
    with pytest.warns(UserWarning, match="replays 2 batches"):
        resumed.fit(2, resume_from=tmp_path)
    assert resumed.train_iter == 8


def test_a_loader_without_state_cannot_resume_a_stateful_loaders_cut(tmp_path):
    x, y = tiny_data(8)
    _cut_mid_epoch(tmp_path, DataLoaders.from_datasets((x, y), (x[:4], y[:4]), batch_size=2))
    assert checkpoints_in(tmp_path)
    with pytest.raises(CheckpointError) as refused:
        _learner(_train_batches()).fit(2, resume_from=tmp_path)
    assert str(refused.value) == (
        "the checkpoint was written 2 batches into an epoch by a run whose training loader "
        "(list) has no state_dict, and it does not record the random states that epoch started "
        f"from, so its order cannot be reproduced: {USE_INSTEAD}."
    )


@dataclasses.dataclass
class Item:
    x: torch.Tensor
    names: list


@pytest.mark.parametrize(
    "a, b",
    [
        ({"x": torch.ones(2)}, {"y": torch.ones(2)}),  # a key
        ((torch.ones(2), torch.zeros(2)), (torch.zeros(2), torch.ones(2))),  # the order
        ((torch.ones(2),), [torch.ones(2)]),  # the container
        (torch.ones(2), torch.ones(2, 1)),  # the shape
        (torch.ones(2), torch.ones(2, dtype=torch.float64)),  # the dtype
        (torch.tensor([True, False]), torch.tensor([False, True])),  # booleans
        (Item(torch.ones(1), ["a"]), Item(torch.ones(1), ["b"])),  # a dataclass's field
        ((torch.ones(1), ["a", "b"]), (torch.ones(1), ["b", "a"])),  # per-item strings
    ],
)
def test_the_digest_tells_batches_apart_by_structure_and_every_leaf(a, b):
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) == fingerprint(a)


def test_the_digest_is_the_same_without_numpy(monkeypatch):
    batch = (torch.arange(6.0).reshape(2, 3), torch.tensor([True, False]), {"k": ["a"]})
    with_numpy = fingerprint(batch)
    monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy raises ImportError
    assert fingerprint(batch) == with_numpy
