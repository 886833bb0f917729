"""Checkpoint with two processes.

Under DDP (torchrun, 2 gloo ranks): rank 0 alone creates and deletes the files (every rank's own
state gathered to it), and each file holds one record per rank, in rank order, of the same step.
Which process wrote what is seen by a Python audit hook in each rank (``os.replace`` into the
directory, ``os.remove`` in it).

A Ctrl-C on one rank stops both at the next checkpoint they save anyway (the agreement of the
module doc). Those ranks are forked warm (``tests/warm_start.py``) with torchrun's environment,
from a server that imported the package from this checkout's ``src/`` and given this process's
environment (``MUTANT_UNDER_TEST`` included), so under mutmut they run the mutant too.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pluglearn import DataLoaders, Learner
from pluglearn.checkpoint.files import load_checkpoint, parse_name
from pluglearn.checkpoint.plugin import Checkpoint
from tests import processes
from tests.helpers import tiny_data
from tests.jobs import JOBS
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


def one_process_checkpoint_at_step_4(directory):
    """The oracle: one process with the global batch writes the same weights at step 4."""
    x, y = tiny_data(32, seed=2)
    dls = DataLoaders.from_datasets((x, y), None, batch_size=8, seed=1)
    torch.manual_seed(0)
    ckpt = Checkpoint(directory, every_n_batches=2)
    Learner(nn.Linear(4, 3), dls, lr=0.1, plugins=[ckpt]).fit(1)
    return next(p for p in ckpt.saved if parse_name(p).steps == 4)


def two_ranks(tmp_path, at):
    command = [sys.executable, str(JOBS / "checkpoint_ranks_job.py"), str(tmp_path / "ckpt")]
    done = processes.run(
        [*command, str(tmp_path), *([] if at is None else [str(at)])], ranks=2,
        run_dir=tmp_path, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]  # a rank waiting for the other: timeout
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.timeout(240)
@pytest.mark.slow
@pytest.mark.xdist_group("ranks")  # two-rank jobs run one at a time
def test_a_ctrl_c_on_one_rank_stops_both_at_the_next_checkpoint(tmp_path):
    results = two_ranks(tmp_path, at=2)  # rank 1 presses after batch 2 (train_iter 3)
    path = results[0]["latest"]
    assert (parse_name(path).steps, parse_name(path).epoch) == (4, 0)  # the save after batch 3
    for r in results:  # both ranks stop there, naming the one file rank 0 wrote
        assert r == {
            "result": f"interrupted; resume with fit(..., resume_from='{path}')",
            "train_iter": 4,
            "latest": path,
        }
    ranks_state = load_checkpoint(path)["model"]
    one_state = load_checkpoint(one_process_checkpoint_at_step_4(tmp_path / "one"))["model"]
    for key, value in one_state.items():
        torch.testing.assert_close(ranks_state[key], value, rtol=0, atol=1e-6)
    (tmp_path / "calm").mkdir()
    calm = two_ranks(tmp_path / "calm", at=None)  # no Ctrl-C: both finish
    assert [r["result"] for r in calm] == ["finished", "finished"]
