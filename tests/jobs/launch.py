"""Launching tests/jobs/ddp_job.py under torchrun and killing the whole group, shared by
tests/distributed/test_ddp.py and ``benchmarks/kill_resume.py --ddp``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

from tests import processes

JOB = Path(__file__).with_name("ddp_job.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(
    nproc: int, port: int, *, nnodes: int = 1, node_rank: int = 0, max_restarts: int = 0
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--node-rank={node_rank}",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        f"--max-restarts={max_restarts}",
        "--monitor-interval=0.1",
    ]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_all(pid: int) -> None:
    """SIGKILL the launcher and every worker at once, as a preempted machine goes."""
    for victim in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def start_and_kill(
    out: Path, ckpt: Path, at_batch: int, nproc: int = 2, args: tuple[str, ...] = ()
) -> None:
    """Start the job with a checkpoint every batch and SIGKILL the launcher and all its workers
    once rank 0 has written checkpoint ``at_batch``."""
    # --hold-at: rank 0 waits after the line, so no checkpoint is written before the kill lands
    hold = ("--hold-at", str(at_batch))
    child = processes.popen(
        [*torchrun(nproc, free_port()), str(JOB), str(out), "--ckpt", str(ckpt), *args, *hold],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == f"batch {at_batch}":
            kill_all(child.pid)
            break
    child.wait(30)
    newest = max(int(p.name.split("-s")[1][:9]) for p in ckpt.glob("*.pt"))
    if newest != at_batch or child.returncode != -signal.SIGKILL:
        raise AssertionError(
            f"killed after checkpoint {at_batch}: the newest is {newest}, the launcher's "
            f"status {child.returncode} (expected -SIGKILL, nothing written after the kill)"
        )


def run_job(out: Path, *args: str, nproc: int = 2, timeout: float = 90) -> dict:
    """Run the job (alone when nproc is 1) to its end; returns rank 0's result."""
    launcher = torchrun(nproc, free_port()) if nproc > 1 else [sys.executable]
    done = processes.run(
        [*launcher, str(JOB), str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )
    if done.returncode != 0:
        raise AssertionError(f"the job failed:\n{done.stdout[-3000:]}{done.stderr[-5000:]}")
    return torch.load(out / "result.pt", weights_only=False)


def run_group(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``command`` (a torchrun launch) to its end; on a timeout SIGKILL the launcher and
    every worker, so a hanging two-rank job leaves no process behind, then raise."""
    child = processes.popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all(child.pid)
        out, err = child.communicate()
        raise AssertionError(
            f"the job hung for {timeout} s and was killed:\n{err[-5000:]}"
        ) from None
    finally:
        if child.poll() is None:
            kill_all(child.pid)
    return subprocess.CompletedProcess(command, child.returncode, out, err)


USERS_JOB = Path(__file__).with_name("users_job.py")


def run_case(
    out: Path, case: str, *args: str, nproc: int = 2, timeout: float = 120, max_restarts: int = 0
) -> list[dict]:
    """Run a case of users_job.py (alone when nproc is 1) to its end; every rank's result."""
    launcher = (
        torchrun(nproc, free_port(), max_restarts=max_restarts) if nproc > 1 else [sys.executable]
    )
    done = run_group([*launcher, str(USERS_JOB), str(out), case, *args], timeout)
    if done.returncode != 0:
        raise AssertionError(f"the job failed:\n{done.stdout[-3000:]}{done.stderr[-5000:]}")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)]
