"""A rendezvous through the group's store (three gloo processes): a rank that gives up takes its
arrival back, so the ranks that come later do not meet it; each call of a name meets the same
call of the others, whatever came before."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest
import torch.distributed as dist

from tests.jobs import rendezvous_worker


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.timeout(120)
@pytest.mark.slow
@pytest.mark.xdist_group("ranks")  # several-rank jobs run one at a time
def test_ranks_that_come_after_one_gave_up_do_not_meet_it_and_the_next_call_meets(tmp_path):
    world = 3  # two latecomers: without the take-back they would make up the count
    ctx = mp.get_context("spawn")
    ranks = [
        ctx.Process(
            target=rendezvous_worker.run, args=(r, world, str(tmp_path / "store"), str(tmp_path))
        )
        for r in range(world)
    ]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(100)
    assert [p.exitcode for p in ranks] == [0] * world
    met = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert met == [[False, True, True]] * world
