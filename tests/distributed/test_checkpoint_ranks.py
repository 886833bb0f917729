"""Checkpoints under DDP (torchrun, 2 gloo ranks): rank 0 alone creates and deletes the files
(every rank's own state gathered to it), and each file holds one record per rank, in rank
order, of the same step. Which process wrote what is seen by a Python audit hook in each rank
(``os.replace`` into the directory, ``os.remove`` in it)."""

from __future__ import annotations

import pytest
import torch

from pluglearn.checkpoint.files import parse_name
from tests.jobs.launch import run_case

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_rank_0_alone_writes_each_file_and_it_holds_every_ranks_record(tmp_path):
    ckpt = tmp_path / "ckpt"
    rank0, rank1 = run_case(tmp_path / "out", "checkpoints", "--ckpt", str(ckpt))
    assert rank1["written"] == []  # rank 1 created and deleted nothing in the directory
    created = [name for what, name in rank0["written"] if what == "created"]
    deleted = [name for what, name in rank0["written"] if what == "deleted"]
    files = sorted(p.name for p in ckpt.glob("*.pt"))
    # every 2 of 15 batches and each epoch's end (named after the next epoch): 10 files
    assert len(created) == len(set(created)) == 10 and len(files) == 2  # keep_last=2
    assert sorted(set(created) - set(deleted)) == files
    for name in files:
        state = torch.load(ckpt / name, weights_only=True)
        assert state["world_size"] == 2
        tags = [record["plugins"]["Tag"] for record in state["ranks"]]
        assert [t["rank"] for t in tags] == [0, 1]
        assert tags[0]["steps"] == tags[1]["steps"] == parse_name(ckpt / name).steps
        assert state["ranks"][0]["loader"]["cursor"] == state["ranks"][1]["loader"]["cursor"]
