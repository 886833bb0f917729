"""Launching the jobs of tests/jobs (one process, or a group of ranks) and killing them whole,
shared by tests/distributed and ``benchmarks/kill_resume.py --ddp``.

By default a job is forked warm (``tests/warm_start.py``): its ranks get the environment and
the agent store ``torchrun`` gives its workers, without three interpreters importing torch
(0.3 s for a two-rank ddp_job instead of 4.1 s). ``warm=False`` launches the real
``torchrun`` (and ``python`` for one process), as the benchmarks and the tests of what only a
launcher does (restarts, several launchers meeting, the example's command) must."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

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
    out: Path,
    ckpt: Path,
    at_batch: int,
    nproc: int = 2,
    args: tuple[str, ...] = (),
    warm: bool = True,
) -> None:
    """Start the job with a checkpoint every batch and SIGKILL the launcher and all its workers
    once rank 0 has written checkpoint ``at_batch``."""
    # --hold-at: rank 0 waits after the line, so no checkpoint is written before the kill lands
    hold = ("--hold-at", str(at_batch))
    launched = launch(JOB, [out, "--ckpt", ckpt, *args, *hold], nproc, warm, out)
    job = processes.Job(launched.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                        text=True, env=ENV, **launched.options)  # fmt: skip
    child = job.process
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == f"batch {at_batch}":
            if warm:
                job.kill()  # the group's session: the supervisor and every worker at once
            else:
                kill_all(child.pid)  # torchrun's workers sit in sessions of their own
            break
    child.wait(30)
    newest = max(int(p.name.split("-s")[1][:9]) for p in ckpt.glob("*.pt"))
    if newest != at_batch or child.returncode != -signal.SIGKILL:
        raise AssertionError(
            f"killed after checkpoint {at_batch}: the newest is {newest}, the launcher's "
            f"status {child.returncode} (expected -SIGKILL, nothing written after the kill)"
        )


class Launch(NamedTuple):
    command: list[str]
    options: dict[str, Any]  # what processes.run / processes.Job add for a warm start


def launch(
    script: Path, args: list[str | os.PathLike[str]], nproc: int, warm: bool, run_dir: Path
) -> Launch:
    """The command for ``script args`` on ``nproc`` ranks (alone when 1), forked warm or under
    torchrun; ``run_dir`` holds a warm group's torchrun error files."""
    tail = [str(script), *map(str, args)]
    if not warm:
        return Launch(
            [*torchrun(nproc, free_port()), *tail] if nproc > 1 else [sys.executable, *tail], {}
        )
    options: dict[str, Any] = {"warm": True}
    if nproc > 1:
        options.update(ranks=nproc, run_dir=run_dir / ".ranks")
    return Launch([sys.executable, *tail], options)


def run_job(out: Path, *args: str, nproc: int = 2, timeout: float = 90, warm: bool = True) -> dict:
    """Run the job (alone when nproc is 1) to its end; returns rank 0's result."""
    launched = launch(JOB, [out, *args], nproc, warm, out)
    done = processes.run(
        launched.command, capture_output=True, text=True, timeout=timeout, env=ENV,
        **launched.options,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"the job failed:\n{done.stdout[-3000:]}{done.stderr[-5000:]}")
    return torch.load(out / "result.pt", weights_only=False)


def run_group(command: list[str], timeout: float, **options: Any) -> subprocess.CompletedProcess:
    """Run ``command`` (a torchrun launch, or a warm one with ``options``) to its end; on a
    timeout SIGKILL the launcher and every worker, so a hanging two-rank job leaves no process
    behind, then raise."""
    child = processes.popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
        **options,
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
    out: Path,
    case: str,
    *args: str,
    nproc: int = 2,
    timeout: float = 120,
    max_restarts: int = 0,
    warm: bool = True,
) -> list[dict]:
    """Run a case of users_job.py (alone when nproc is 1) to its end; every rank's result.
    Restarts are torchrun's: ``max_restarts`` launches torchrun itself."""
    if max_restarts:
        launched = Launch([*torchrun(nproc, free_port(), max_restarts=max_restarts),
                           str(USERS_JOB), str(out), case, *args], {})  # fmt: skip
    else:
        launched = launch(USERS_JOB, [out, case, *args], nproc, warm, out)
    done = run_group(launched.command, timeout, **launched.options)
    if done.returncode != 0:
        raise AssertionError(f"the job failed:\n{done.stdout[-3000:]}{done.stderr[-5000:]}")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)]
