"""Child processes started by tests, each job killed whole when its test ends or times out.

A test that launches a command (a ``torchrun`` job, an example script, a process that starts a
worker pool) starts it through :func:`run` or :func:`popen`, drop-in forms of ``subprocess.run``
and ``subprocess.Popen``. Each launch is a :class:`Job`: it runs in a session of its own, and
every process it starts inherits ``PLUGLEARN_TEST_JOB=<token>`` in its environment. That mark
is what finds the whole job: torchrun starts its workers in sessions of their own, and a worker
whose launcher was killed is re-parented away from it, so neither the process group nor the
process tree still holds it; the environment does (``/proc/PID/environ``).

``tests/conftest.py`` kills, after each test, every job the test started (``kill_jobs``), so
a test that fails, or that pytest-timeout interrupts, leaves no process behind (before this,
an orphaned two-rank job waited for gloo's 30-minute timeout).

Example::

    done = run([*torchrun(2, free_port()), str(JOB), str(out)], capture_output=True, timeout=90)
    child = popen([sys.executable, "job.py"], stdout=subprocess.PIPE, text=True)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.warm_start import WarmProcess

MARK = "PLUGLEARN_TEST_JOB"
_counter = itertools.count()
_live: list[Job] = []  # the jobs started and not yet killed, in this process


def marked(token: str) -> list[int]:
    """The pids of the live processes whose environment carries ``MARK=token`` (a zombie's
    environment reads empty: it has exited and holds nothing)."""
    prefix, wanted = f"{MARK}=".encode(), token.encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = environ.read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        for variable in variables:
            if variable.startswith(prefix) and wanted in variable[len(prefix) :].split(b":"):
                found.append(int(environ.parent.name))
    return found


def in_session(sid: int) -> list[int]:
    """The pids of the live (not zombie) processes in session ``sid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(stat.parent.name))
    return found


class Job:
    """One launched command: its own session, its processes marked (see the module doc).
    ``kill()`` SIGKILLs every process of the job and waits until none is left.

    Example::

        with Job([sys.executable, "-c", "import time; time.sleep(60)"]) as job:
            ...  # leaving the block (or an error in it) kills the job
        assert job.survivors() == []
    """

    def __init__(
        self,
        command: Sequence[str | os.PathLike[str]],
        *,
        env: dict[str, str] | None = None,
        warm: bool = False,
        ranks: int | None = None,
        **popen: Any,
    ) -> None:
        if popen.pop("start_new_session", True) is not True or "process_group" in popen:
            raise ValueError("a test's job always runs in a session of its own")
        self.token = f"{os.getpid()}-{next(_counter)}-{secrets.token_hex(4)}"
        child_env = dict(os.environ if env is None else env)
        # a job started inside another job (a test of this helper) carries both marks
        child_env[MARK] = ":".join(filter(None, (child_env.get(MARK), self.token)))
        self.process: subprocess.Popen | WarmProcess
        if warm or ranks:
            self.process = WarmProcess(command, env=child_env, ranks=ranks, **popen)
        else:
            self.process = subprocess.Popen(command, env=child_env, start_new_session=True, **popen)
        _live.append(self)

    def survivors(self) -> list[int]:
        """The job's processes still alive: every one in its session (a forked job's processes
        carry no mark in /proc, since the mark was set after their start) and every marked one."""
        return sorted(set(marked(self.token)) | set(in_session(self.process.pid)))

    def kill(self, within: float = 10.0) -> None:
        """SIGKILL the job's session and every marked process until none is left; reap the
        launcher. Raises when a process outlives ``within`` seconds of killing."""
        deadline = time.monotonic() + within
        if self.process.poll() is None:  # not reaped: its pid still names its session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        while True:
            left = self.survivors()  # again: a process may have forked meanwhile
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self.process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(0.05)
            if not left and self.process.returncode is not None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes {left} of a test's job survived SIGKILL")
            time.sleep(0.02)
        with contextlib.suppress(ValueError):
            _live.remove(self)

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def popen(command: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(command, **kwargs)`` as a :class:`Job`, killed whole at the test's end."""
    return Job(command, **kwargs).process


def run(
    command: Sequence[str | os.PathLike[str]],
    *,
    input: str | bytes | None = None,
    capture_output: bool = False,
    timeout: float | None = None,
    check: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess:
    """``subprocess.run`` as a :class:`Job`: on a timeout (and on any error while waiting) the
    whole job is killed, not just the launcher, before the exception goes on; after a normal
    end, processes the command left behind are killed too."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    with Job(command, **kwargs) as job:
        try:
            out, err = job.process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            job.kill()
            expired.output, expired.stderr = job.process.communicate()
            raise
    done = subprocess.CompletedProcess(job.process.args, job.process.returncode, out, err)
    if check:
        done.check_returncode()
    return done


def kill_jobs() -> None:
    """Kill every job still alive (``tests/conftest.py`` calls this after each test)."""
    for job in list(_live):
        job.kill()
