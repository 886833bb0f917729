"""Elastic restarts (torchrun --max-restarts 3, 2 gloo ranks): a script that calls
``fit(3, resume_from=dir, missing_ok=True)`` with ``Checkpoint(every_n_batches=1)`` and whose
workers die twice during the fit (rank 1 by ``os._exit`` at training batch 5, then rank 0 by
SIGKILL at batch 11, after torchrun restarted them) ends with the uninterrupted run's weights,
and every step trains on the uninterrupted run's items."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from tests.jobs.launch import run_case

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


def last_items_per_step(log: Path) -> tuple[dict[int, tuple], set[str]]:
    """Each step's items as last trained (a step redone after a restart replaces the first
    try), and the restart counts seen."""
    steps, restarts = {}, set()
    for line in log.read_text().splitlines():
        restart, step = line.split(" ", 1)
        epoch, train_iter, items = ast.literal_eval(step)
        steps[train_iter] = (epoch, items)
        restarts.add(restart)
    return steps, restarts


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_job_restarted_twice_ends_with_the_uninterrupted_runs_weights_and_items(tmp_path):
    plain = run_case(tmp_path / "plain", "elastic", "--ckpt", str(tmp_path / "plain_ckpt"))
    kills = ("--kill", "1:5", "--kill", "0:11")
    killed = run_case(
        tmp_path / "killed",
        "elastic",
        "--ckpt",
        str(tmp_path / "killed_ckpt"),
        *kills,
        max_restarts=3,
        timeout=420,
    )
    for key, value in plain[0]["weights"].items():
        assert torch.equal(killed[0]["weights"][key], value), key
    for rank in (0, 1):
        steps, restarts = last_items_per_step(tmp_path / "killed" / f"steps{rank}.txt")
        assert restarts == {"0", "1", "2"}  # killed twice, restarted twice
        expected = {train_iter: (epoch, items) for epoch, train_iter, items in plain[rank]["seen"]}
        assert steps == expected
