"""A mid-epoch resume with a user's own loader, in a fresh process: exact, or refused.

Oracle: the uninterrupted run of the same job. Each job logs the items of every training step,
so a resume that restarted the epoch, or drew another order, shows in the log and not only in
the weights; the weights must be bit-identical too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import processes
from tests.jobs import JOBS

JOB = JOBS / "loader_resume_job.py"
STEPS_PER_EPOCH = 5  # 40 items, batches of 8


def job(kind: str, tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    """Run the job to its exit. Its output goes to files, not pipes: the loader workers of a
    job that died (``--die-after``) hold its streams until they notice, up to 5 s later."""
    out = tmp_path / f"{name}.pt"
    streams = tmp_path / f"{name}.stdout", tmp_path / f"{name}.stderr"
    with streams[0].open("w") as stdout, streams[1].open("w") as stderr:
        done = processes.run(
            [sys.executable, str(JOB), kind, str(tmp_path / f"{name}-ckpt"), str(out), *args],
            warm=True, stdout=stdout, stderr=stderr, timeout=240,
        )  # fmt: skip
    done.stdout, done.stderr = (path.read_text() for path in streams)
    return done


def uninterrupted(kind: str, tmp_path: Path) -> tuple[list[torch.Tensor], list[str]]:
    done = job(kind, tmp_path, "whole")
    assert done.returncode == 0, done.stderr
    return torch.load(tmp_path / "whole.pt"), (tmp_path / "whole.items").read_text().splitlines()


def killed_and_resumed(kind: str, tmp_path: Path, step: int) -> subprocess.CompletedProcess:
    died = job(kind, tmp_path, "cut", "--die-after", str(step))
    assert died.returncode == 3, died.stderr
    return job(kind, tmp_path, "cut", "--resume")


def fetched(tmp_path: Path) -> int:
    """Items the resumed process fetched."""
    return len((tmp_path / "cut.resumed.fetched").read_text().split())


def assert_exact(kind: str, tmp_path: Path, step: int) -> None:
    weights, steps = uninterrupted(kind, tmp_path)
    resumed = killed_and_resumed(kind, tmp_path, step)
    assert resumed.returncode == 0, resumed.stderr
    log = (tmp_path / "cut.items").read_text().splitlines()
    assert log == steps  # the same items at every step: no restart, no new order
    assert len(steps) == 3 * STEPS_PER_EPOCH
    again = torch.load(tmp_path / "cut.pt")
    assert all(torch.equal(a, b) for a, b in zip(weights, again, strict=True))


@pytest.mark.parametrize("kind", ["shuffle", "generator"])
@pytest.mark.slow
def test_a_torch_dataloader_resumed_mid_epoch_trains_the_uninterrupted_runs_items(kind, tmp_path):
    assert_exact(kind, tmp_path, step=STEPS_PER_EPOCH + 2)  # inside the second epoch
    # replayed: the 2 batches before the cut are fetched again, then the 8 steps after it
    assert fetched(tmp_path) == (2 + 3 * STEPS_PER_EPOCH - (STEPS_PER_EPOCH + 2)) * 8


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["workers", "iterable"])
def test_loaders_replayed_or_checked_resume_exactly(kind, tmp_path):
    assert_exact(kind, tmp_path, step=STEPS_PER_EPOCH + 3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["stateful0", "stateful2"])
def test_a_stateful_dataloader_resumes_in_constant_time_and_exactly(kind, tmp_path):
    pytest.importorskip("torchdata.stateful_dataloader")
    assert_exact(kind, tmp_path, step=STEPS_PER_EPOCH + 3)
    after_cut = (3 * STEPS_PER_EPOCH - (STEPS_PER_EPOCH + 3)) * 8
    if kind == "stateful0":  # O(1): only the items of the steps after the cut are fetched
        assert fetched(tmp_path) == after_cut
    else:  # its workers fast-forward from their last snapshots: at most the epoch's done part
        assert after_cut <= fetched(tmp_path) <= after_cut + 3 * 8


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, why",
    [
        ("private", "its order or its items depend on state pluglearn cannot put back"),
        ("persistent", "its order or its items depend on state pluglearn cannot put back"),
        # persistent workers drew their seed at the first epoch: a replay draws it again
        ("persistent_plain", "its order or its items depend on state pluglearn cannot put back"),
    ],
)
def test_a_loader_whose_epoch_cannot_be_reproduced_is_refused_naming_the_fix(kind, why, tmp_path):
    resumed = killed_and_resumed(kind, tmp_path, step=STEPS_PER_EPOCH + 3)
    assert resumed.returncode != 0
    assert why in resumed.stderr
    assert "StatefulDataLoader" in resumed.stderr and "DataLoaders.from_datasets" in resumed.stderr
