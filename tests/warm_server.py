"""The warm-start server (``tests/warm_start.py`` is the client and says why): it imports
torch and every pluglearn module once, then forks, for each request, a supervisor that forks
the job's processes, reports their pids and waits for their exit status.

    python tests/warm_server.py FD     # FD: its end of the client's socket pair

A request is one SOCK_SEQPACKET message (JSON: argv, module, env, cwd, ranks, run_dir) with
four descriptors: the job's stdin, stdout, stderr and the status pipe, where the supervisor
writes ``pids SUPERVISOR PID...`` and then ``exit CODE``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# the modules a job imports anyway (torch._dynamo: torch's optimizers import it at their first
# parameter group, 1 s); every pluglearn module is imported too
PRELOAD = ("numpy", "torch", "torch._dynamo", "torch.nn.parallel", "optree", "fastcore.all")
GRACE = 5.0  # seconds between the SIGTERM and the SIGKILL of a failed group's other workers
STREAMS = 3  # stdin, stdout, stderr; then the status pipe


def serve(channel: socket.socket) -> None:
    """Fork a supervisor per request until the client closes the channel."""
    import importlib
    import pkgutil

    sys.path[0] = str(ROOT / "src")  # not tests/ (a job's own folder replaces it); as the
    # jobs do, the checkout's pluglearn
    for name in PRELOAD:
        importlib.import_module(name)
    import pluglearn

    for module in pkgutil.walk_packages(pluglearn.__path__, "pluglearn."):
        importlib.import_module(module.name)

    channel.send(b"ready")
    while True:
        message, fds, _, _ = socket.recv_fds(channel, 1 << 20, STREAMS + 1)
        if not message:
            return
        while _reap_any():
            pass
        if os.fork() == 0:
            channel.close()
            supervise(json.loads(message), fds)  # ends this process, never returns
        for fd in fds:
            os.close(fd)


def _reap_any() -> bool:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return pid != 0


def supervise(request: dict[str, Any], fds: list[int]) -> None:
    """Fork the job's processes, report their pids, wait for them, report the exit code."""
    status = fds[STREAMS]
    nproc = request["ranks"] or 1
    if request["ranks"]:
        os.setsid()  # the group's session: killing it kills this supervisor and every worker
        port = _free_port()
    pids = []
    for rank in range(nproc):
        pid = os.fork()
        if pid == 0:
            os.close(status)
            if not request["ranks"]:
                os.setsid()  # a lone job leads its own session, as start_new_session would
            env = dict(request["env"])
            if request["ranks"]:
                env.update(torchrun_variables(rank, nproc, port, request["run_dir"]))
            become(request, env, fds[:STREAMS])
        pids.append(pid)
    for fd in fds[:STREAMS]:
        os.close(fd)
    # the pids first: whatever happens next, the client can kill what was started
    os.write(status, f"pids {os.getpid()} {' '.join(map(str, pids))}\n".encode())
    try:
        if request["ranks"]:
            # after the forks: the store's threads must not be copied into a worker
            from torch.distributed import TCPStore

            store = TCPStore("localhost", port, nproc + 1, True, wait_for_workers=False)  # noqa: F841
        code = wait_for(pids, group=bool(request["ranks"]))
    except BaseException as error:  # the workers would wait for a store that never came
        print(f"warm start: the group's supervisor failed: {error!r}", file=sys.stderr)
        _signal_each(set(pids), signal.SIGKILL)
        code = 1
    os.write(status, f"exit {code}\n".encode())
    os._exit(0)


def torchrun_variables(rank: int, nproc: int, port: int, run_dir: str) -> dict[str, str]:
    """What ``torchrun --nproc-per-node nproc`` (one node, c10d) sets in worker ``rank``."""
    error_file = Path(run_dir) / f"attempt_0/{rank}/error.json"
    error_file.parent.mkdir(parents=True, exist_ok=True)
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "GROUP_RANK": "0",
        "ROLE_RANK": str(rank),
        "ROLE_NAME": "default",
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "GROUP_WORLD_SIZE": "1",
        "ROLE_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "localhost",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        "TORCHELASTIC_RUN_ID": "none",
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_ERROR_FILE": str(error_file),
        "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pids: list[int], group: bool) -> int:
    """A lone job's exit code (negative: the signal that ended it); a group's as torchrun
    gives it: 0, or 1 once a worker failed and the others were stopped."""
    codes: dict[int, int] = {}
    stop_at = None
    while len(codes) < len(pids):
        pid, status = os.waitpid(-1, os.WNOHANG if stop_at else 0)
        if pid in pids:
            codes[pid] = os.waitstatus_to_exitcode(status)
            if codes[pid] != 0 and group and stop_at is None:
                stop_at = time.monotonic() + GRACE
                _signal_each(set(pids) - set(codes), signal.SIGTERM)
        elif pid == 0:
            if time.monotonic() > stop_at:  # type: ignore[operator]
                _signal_each(set(pids) - set(codes), signal.SIGKILL)
            time.sleep(0.02)
    if not group:
        return codes[pids[0]]
    return int(any(codes.values()))


def _signal_each(pids: set[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def become(request: dict[str, Any], env: dict[str, str], streams: list[int]) -> None:
    """Turn this forked process into the job (``python script args`` as a fresh interpreter
    runs it) and end the process as the interpreter would."""
    import runpy

    for target, fd in enumerate(streams):
        os.dup2(fd, target)
    for fd in set(streams) - {0, 1, 2}:  # stderr may be stdout's descriptor (STDOUT)
        os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(request["cwd"])
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()  # fresh entropy, as a new interpreter would draw
    sys.argv = list(request["argv"])
    try:
        if request["module"]:
            sys.path[0] = os.getcwd()
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        else:
            sys.path[0] = str(Path(request["argv"][0]).resolve().parent)  # (cwd is set)
            runpy.run_path(request["argv"][0], run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except KeyboardInterrupt:  # as the interpreter ends on one: by SIGINT, after atexit
        sys.excepthook(*sys.exc_info())
        _finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    _finish()
    os._exit(code)


def _exit_code(code: object) -> int:
    """The exit status ``SystemExit(code)`` gives: None 0, an int itself, else printed, 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish() -> None:
    """The interpreter's end without tearing down its modules (a second or more with torch
    loaded, which a fresh interpreter would spend as well): non-daemon threads joined, atexit
    handlers (``weakref.finalize`` and multiprocessing's included) run, streams flushed."""
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
