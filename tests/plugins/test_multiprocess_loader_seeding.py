"""The per-batch seed of the multiprocessing loader, checked against an independent derivation.

The documented rule (``MultiprocessLoader``, and the loader's module doc): before batch ``k`` of
epoch ``e`` is made, torch's CPU generator, ``random`` and numpy are seeded with
``seed(e, k) = int.from_bytes(blake2b(f"{base_seed}/{e}/{k}", digest_size=8), "little")``
(numpy with ``seed % 2**32``), where ``base_seed`` is what the loader's ``state_dict()`` saves.

The dataset below returns the random draws it was given, so the expected batch is computed
here from the rule alone: fresh generators seeded with ``seed(e, k)`` replay the draws, item by
item. Comparing with ``n_workers=0`` would prove nothing (it runs the same seeding code); this
derivation does not share a line with the loader, and a seed that ignores the batch index or
the epoch fails it.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import random

import numpy as np
import pytest
import torch
from torch import nn

from pluglearn import DataLoaders, Learner, MultiprocessLoader, hookimpl

needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)


class Draws:
    """Item ``i`` is ``([torch.randn, torch.randn, random.random, np.random.random, i], i % 3)``:
    the draws the item was made with, and its index, so a batch can be replayed from its seed.
    Module-level, so worker processes can unpickle it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(2)
        extra = torch.tensor([random.random(), np.random.random(), float(i)])
        return torch.cat([noise, extra]), torch.tensor(i % 3)


def documented_seed(base_seed: int, epoch: int, batch: int) -> int:
    digest = hashlib.blake2b(f"{base_seed}/{epoch}/{batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def replay(seed: int, indices: list[int]) -> torch.Tensor:
    """The x of a batch of ``Draws`` made under ``seed``, from fresh generators."""
    gen, py = torch.Generator().manual_seed(seed), random.Random(seed)
    npr = np.random.RandomState(seed % 2**32)
    rows = []
    for i in indices:
        noise = torch.randn(2, generator=gen)
        extra = torch.tensor([py.random(), npr.random_sample(), float(i)])
        rows.append(torch.cat([noise, extra]))
    return torch.stack(rows)


class Batches:
    """Keeps every batch of the fit with its loader's base seed."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, int, int, torch.Tensor]] = []

    @hookimpl(tryfirst=True)
    def before_batch(self, learn: Learner) -> None:
        base = learn.dl.state_dict()["base_seed"]
        self.seen.append((learn.epoch, learn.training, learn.iter, base, learn.xb.clone()))


def fit(n_workers: int, epochs: int = 2) -> Batches:
    torch.manual_seed(0)
    dls = DataLoaders.from_datasets(Draws(24), Draws(10), batch_size=4, seed=5)
    batches = Batches()
    learn = Learner(
        nn.Linear(5, 3),
        dls,
        lr=0.1,
        plugins=[MultiprocessLoader(n_workers, start_method="fork"), batches],
        defaults=False,
    )
    learn.fit(epochs)
    return batches


@needs_fork
@pytest.mark.parametrize("n_workers", [2, 0])
def test_every_batch_is_made_under_the_documented_seed(n_workers):
    batches = fit(n_workers)
    assert len(batches.seen) == 2 * (6 + 2)  # 6 training, 2 validation batches (of 8) an epoch
    for epoch, training, k, base, xb in batches.seen:
        indices = xb[:, -1].long().tolist()
        want = replay(documented_seed(base, epoch, k), indices)
        assert torch.equal(xb, want), f"epoch {epoch}, {'train' if training else 'valid'} {k}"


@needs_fork
def test_batches_of_one_epoch_and_of_two_epochs_get_different_draws():
    """Without any derivation: the first item's draws differ between any two batches."""
    batches = fit(2)
    for training in (True, False):
        firsts = [xb[0, :4] for _, t, _, _, xb in batches.seen if t == training]
        for a in range(len(firsts)):
            for b in range(a):
                assert not torch.equal(firsts[a], firsts[b]), (training, a, b)
    train_bases = {base for _, t, _, base, _ in batches.seen if t}
    valid_bases = {base for _, t, _, base, _ in batches.seen if not t}
    assert len(train_bases) == len(valid_bases) == 1 and train_bases != valid_bases


@needs_fork
def test_the_draws_do_not_depend_on_the_number_of_workers_or_the_global_rngs():
    one = fit(1, epochs=1)
    random.seed(7)  # the parent's python and numpy generators do not reach the workers' draws
    np.random.seed(7)
    two = fit(2, epochs=1)
    assert len(one.seen) == len(two.seen) == 8
    for a, b in zip(one.seen, two.seen, strict=True):
        assert a[:4] == b[:4] and torch.equal(a[4], b[4])
