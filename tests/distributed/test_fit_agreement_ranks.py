"""At a fit's start the ranks agree on its settings and its loader seed (torchrun, 2 gloo ranks
on 127.0.0.1): a setting that differs between the ranks is refused on every rank, naming it and
both values, where the ranks used to train apart silently or wait on each other until gloo's
30-minute timeout; and rank 0's shuffling generator is every rank's, so the ranks train on one
permutation however each was seeded, as one process seeded like rank 0 does."""

from __future__ import annotations

import pytest
import torch

from tests.jobs.launch import run_case

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

#: per setting: the line of the refusal that names it, with rank 0's and rank 1's values
EXPECTED = {
    "lr": "lr: 0.1 on rank 0, 0.3 on rank 1",
    "batch_size": "batch_size: 8 on rank 0, 4 on rank 1",
    "epochs": "epochs: 2 on rank 0, 3 on rank 1",
    "max_steps": "max_steps: 4 on rank 0, 5 on rank 1",
    "train data": "train data: '40 items' on rank 0, '36 items' on rank 1",
    "valid data": "valid data: '23 items' on rank 0, '20 items' on rank 1",
    "plugins": "'DefaultLoader', 'Device'] on rank 0, ['DDP', 'Accuracy', 'AvgLoss'",
    "EarlyStopping(patience=)": "EarlyStopping(patience=): 2 on rank 0, 3 on rank 1",
    "loss reduction": "loss reduction: 'mean' on rank 0, 'sum' on rank 1",
    "optimizer": "optimizer: 'torch.optim.sgd.SGD' on rank 0, 'torch.optim.adam.Adam' on rank 1",
}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_setting_that_differs_between_the_ranks_is_refused_on_every_rank_naming_both(tmp_path):
    ranks = run_case(tmp_path, "mismatch", timeout=240)
    for said in ranks:
        for setting, line in EXPECTED.items():
            message = said[setting]
            assert message is not None, f"{setting}: the fit was not refused"
            assert message.startswith("DDP: the ranks' fits differ"), message
            assert line in message, (setting, message)
        # the whole refusal, for the case that changes one setting alone
        assert said["lr"] == (
            "DDP: the ranks' fits differ in what every rank must share (each rank trains its "
            "slice of one run):\n  lr: 0.1 on rank 0, 0.3 on rank 1\nGive every rank the same "
            "settings: a value computed from the rank (or drawn from a per-rank seed) makes "
            "ranks disagree."
        )
        # the group survives the refusals: a fit with equal settings trains on both ranks
        assert said["agreed"] == ranks[0]["agreed"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ranks_seeded_apart_train_on_rank_0s_permutation_like_one_process(tmp_path):
    one = run_case(tmp_path / "one", "seed", nproc=1)[0]  # one process seeded as rank 0
    two = run_case(tmp_path / "two", "seed")
    rank0, rank1 = two[0]["seen"], two[1]["seen"]
    assert len(one["seen"]) == len(rank0) == len(rank1) == 10  # 5 steps x 2 epochs
    for whole, a, b in zip(one["seen"], rank0, rank1, strict=True):
        assert a[:2] == b[:2] == whole[:2]
        assert a[2] + b[2] == whole[2]  # the two halves of one process's batch
    for epoch in (0, 1):  # every item once per epoch
        items = [i for step in rank0 + rank1 if step[0] == epoch for i in step[2]]
        assert sorted(items) == list(range(40))
    for key, value in one["weights"].items():
        assert (two[0]["weights"][key] - value).abs().max().item() <= 1e-10, key
