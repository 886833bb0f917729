"""Metrics reduce across processes and reporters print on rank 0 only (two gloo processes)."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pluglearn.distributed.ranks import is_main_process, reduce_sum
from tests.jobs import dist_worker


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.timeout(120)
@pytest.mark.slow
@pytest.mark.xdist_group("ranks")  # two-rank jobs run one at a time
def test_metrics_are_averaged_over_every_process_and_only_rank_0_reports(tmp_path):
    ctx = mp.get_context("spawn")
    ranks = [
        ctx.Process(target=dist_worker.run, args=(r, 2, str(tmp_path / "store"), str(tmp_path)))
        for r in range(2)
    ]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(100)
    assert [p.exitcode for p in ranks] == [0, 0]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # the oracle: the per-item average over all 9 items, computed in one process
    x = torch.cat([dist_worker.shard(r)[0] for r in range(2)])
    y = torch.cat([dist_worker.shard(r)[1] for r in range(2)])
    preds = dist_worker.model()(x)
    loss = F.cross_entropy(preds, y).item()
    accuracy = (preds.argmax(1) == y).float().mean().item()
    for result in results:
        assert result["valid_loss"] == pytest.approx(loss, rel=1e-6)
        assert result["accuracy"] == pytest.approx(accuracy, rel=1e-6)
    assert "epoch 1/1" in results[0]["printed"] and results[1]["printed"] == ""


def test_on_one_process_reduction_is_the_identity():
    assert is_main_process()
    assert reduce_sum(2.5, 4.0) == [2.5, 4.0]


def test_unsharded_reads_a_distributed_samplers_dataset_whole_in_order_with_its_batches():
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from pluglearn.distributed.ranks import unsharded

    ds = TensorDataset(torch.arange(7.0), torch.arange(7))
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=0)

    def collate(items):
        return tuple(torch.stack(column) * 10 for column in zip(*items, strict=True))

    sharded = DataLoader(ds, batch_size=3, sampler=sampler, collate_fn=collate)
    whole = unsharded(sharded)
    assert [yb.tolist() for _, yb in whole] == [[0, 10, 20], [30, 40, 50], [60]]
    plain = DataLoader(ds, batch_size=3)
    assert unsharded(plain) is plain and unsharded([1, 2]) == [1, 2]

    # its workers as they were: as many, pinning memory or not, started the same way
    def start(worker: int) -> None:
        torch.manual_seed(worker)

    for workers, pin in ((2, True), (0, False)):
        loader = DataLoader(ds, 3, sampler=sampler, num_workers=workers, pin_memory=pin,
                            worker_init_fn=start if workers else None)  # fmt: skip
        whole = unsharded(loader)
        assert (whole.num_workers, whole.pin_memory) == (workers, pin)
        assert whole.worker_init_fn is loader.worker_init_fn


def test_alone_rank_local_mode_nests_and_a_rendezvous_needs_nobody():
    from pluglearn import dist

    with dist.local():
        with dist.local():
            assert dist.rank() == 0 and dist.world_size() == 1
        assert not dist.is_local()  # one process: nothing is local to it
    assert dist.rendezvous("alone", timeout=0.1)
