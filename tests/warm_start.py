"""Warm starts for the Python programs the tests launch: a server process imports torch and
pluglearn once, then forks each job from that state instead of starting an interpreter that
imports them again. On this 2-core machine the imports are most of a small job: 1.7 s of a
one-process job's 2.4 s, and 3.3 s of a two-rank job's 4.1 s under ``torchrun`` (a launcher
and two workers, each importing torch).

A job is a script (or ``-m module``) with its arguments, run as ``__main__`` in a forked child
that looks like a fresh interpreter's: its own ``sys.argv``, ``sys.path[0]`` (the script's
folder), environment, working directory, standard streams and default signal handlers, numpy's
global generator reseeded (Python's ``random`` reseeds itself at a fork); the server has run
nothing but imports. Differences from ``python script.py``, none of which a job here reads:
the modules the server imported are already in ``sys.modules``, the hash seed of ``str`` is the
server's, and a traceback starts with this module's frames.

``ranks=N`` forks N workers with the environment ``torchrun --nproc-per-node N`` gives its
workers (the same variables; ``tests/test_warm_start.py`` compares them), a TCP store hosted by
their supervisor as torchrun's agent hosts it (``TORCHELASTIC_USE_AGENT_STORE``), and
torchrun's end: when a worker fails the others get SIGTERM (SIGKILL 5 s later) and the group
exits 1. What only a launcher does (restarts, rendezvous of several launchers, the launcher's
own signals) is tested under ``torchrun`` itself.

This module is the client: :class:`WarmProcess`, a ``subprocess.Popen`` look-alike, through
which ``tests/processes.py`` launches (``run(..., warm=True)``, ``ranks=N``) and which it kills
like any other job. The server is ``tests/warm_server.py``: one per pytest process and per set
of start-up variables, started on first use and alive until that process ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVER = Path(__file__).with_name("warm_server.py")
# read once when the interpreter or a library starts, so a server serves one value of each
START_UP_PREFIXES = ("PYTHON", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "TORCH", "CUDA", "LD_")


class WarmServer:
    """One server process, started with the start-up variables it serves."""

    def __init__(self, start_env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.channel = ours
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER), str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=start_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # never written: a forked job's stdout starts empty
            start_new_session=True,  # out of reach of a job's kill
        )
        theirs.close()
        ours.settimeout(120)
        if ours.recv(16) != b"ready":
            raise RuntimeError("the warm-start server did not start; run tests/warm_start.py")
        ours.settimeout(None)


_servers: dict[tuple[tuple[str, str], ...], WarmServer] = {}


def server_for(env: dict[str, str]) -> WarmServer:
    """The server whose start-up variables are those of ``env`` (started on first use)."""
    start = {k: v for k, v in env.items() if k.startswith(START_UP_PREFIXES)}
    key = tuple(sorted(start.items()))
    if key not in _servers or _servers[key].process.poll() is not None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(START_UP_PREFIXES)}
        _servers[key] = WarmServer({**base, **start})
    return _servers[key]


def split_command(command: Sequence[str | os.PathLike[str]]) -> tuple[str | None, list[str]]:
    """``[python, script, *args]`` or ``[python, -m, module, *args]`` -> (module, argv)."""
    parts = [os.fspath(part) for part in command]
    if len(parts) < 2 or parts[0] != sys.executable:
        raise ValueError(f"a warm start runs `{sys.executable} script ...`, not {parts[:2]}")
    if parts[1] == "-m":
        return parts[2], [parts[2], *parts[3:]]
    if parts[1].startswith("-"):
        raise ValueError(f"a warm start takes no interpreter option ({parts[1]})")
    return None, parts[1:]  # argv[0] as given, as a fresh interpreter keeps it


class WarmProcess:
    """A job forked by the warm server, used as ``subprocess.Popen`` is: ``pid`` (the session
    to kill: the job's, or its group's supervisor's), ``stdin``/``stdout``/``stderr``,
    ``poll``, ``wait``, ``communicate``, ``send_signal``, ``kill``, ``returncode``."""

    def __init__(
        self,
        command: Sequence[str | os.PathLike[str]],
        *,
        env: dict[str, str],
        ranks: int | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        text: bool = False,
        run_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        module, argv = split_command(command)
        self.args, self.text, self.returncode = list(command), text, None
        ends: list[int] = []  # the child's ends, closed here once sent
        child_in, self.stdin = self._pipe(stdin, 0, "w", ends)
        child_out, self.stdout = self._pipe(stdout, 1, "r", ends)
        if stderr == subprocess.STDOUT:
            child_err, self.stderr = child_out, None
        else:
            child_err, self.stderr = self._pipe(stderr, 2, "r", ends)
        self._status, status_end = os.pipe()
        ends.append(status_end)
        request = {
            "argv": argv,
            "module": module,
            "env": env,
            "cwd": os.fspath(cwd or os.getcwd()),
            "ranks": ranks,
            "run_dir": os.fspath(run_dir or ROOT),
        }
        if ranks and run_dir is None:
            raise ValueError("a group of ranks needs run_dir (torchrun's error files go there)")
        socket.send_fds(
            server_for(env).channel,
            [json.dumps(request).encode()],
            [child_in, child_out, child_err, status_end],
        )
        for fd in ends:
            os.close(fd)
        self._pending = b""
        line = self._status_line(timeout=60)
        if line is None or not line.startswith("pids "):
            raise RuntimeError(f"the warm-start server did not start the job ({line!r})")
        supervisor, *self.rank_pids = map(int, line.split()[1:])
        self.pid = supervisor if ranks else self.rank_pids[0]
        self._readers: dict[str, threading.Thread] = {}
        self._read: dict[str, Any] = {}

    def _pipe(self, spec: Any, default: int, mode: str, ends: list[int]) -> tuple[int, Any]:
        """The child's descriptor for one stream, and this side's file (or None)."""
        if spec is None:
            return default, None
        if spec == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR)
            ends.append(fd)
            return fd, None
        if spec == subprocess.PIPE:
            read, write = os.pipe()
            ours, theirs = (write, read) if mode == "w" else (read, write)
            ends.append(theirs)
            return theirs, open(ours, mode + ("" if self.text else "b"))
        if hasattr(spec, "fileno"):
            return spec.fileno(), None
        return int(spec), None

    def _status_line(self, timeout: float | None) -> str | None:
        """The next line from the supervisor; None at EOF (the supervisor was killed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._status], [], [], left)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            chunk = os.read(self._status, 4096)
            if not chunk:
                return None
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode()

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            line = self._status_line(timeout)
            # no exit line: the supervisor died with the job's session, by SIGKILL
            self.returncode = -signal.SIGKILL if line is None else int(line.split()[1])
            os.close(self._status)
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(timeout=0)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:  # a lone job: its process; a group: every worker
            (os.kill if self.pid == self.rank_pids[0] else os.killpg)(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """Send ``input``, read stdout and stderr to their ends and wait for the exit, as
        ``Popen.communicate``; after a TimeoutExpired a second call goes on where it stopped.
        Each stream is read through its file object, by a thread of its own, so what a test
        already took line by line is not read again and what the file buffered is not lost."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
            self.stdin.close()
            self.stdin = None
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None and name not in self._readers:
                self._readers[name] = reader = threading.Thread(
                    target=lambda n=name, s=stream: self._read.__setitem__(n, s.read()),
                    daemon=True,
                )
                reader.start()
        for reader in self._readers.values():
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self._read.get("stdout"), self._read.get("stderr")
