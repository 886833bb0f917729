"""tests/warm_start.py: a job forked warm runs as a fresh interpreter runs it (argv, path, cwd,
environment, exit status, streams, atexit), its ranks see what torchrun's workers see, a failed
rank ends its group as torchrun ends it, and killing a job leaves nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import processes
from tests.helpers import wait_dead
from tests.jobs.launch import ENV, free_port, torchrun

PROBE = """\
import atexit, json, os, sys
import numpy as np
atexit.register(lambda: print("atexit ran", flush=True))
names = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "GROUP_RANK",
         "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "OMP_NUM_THREADS"}
print(json.dumps({
    "argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(), "name": __name__,
    "asked": os.environ.get("ASKED"), "draw": float(np.random.rand()),
    "env": {k: v for k, v in os.environ.items() if k in names},
    "elastic": sorted(k for k in os.environ if k.startswith(("TORCHELASTIC", "TORCH_NCCL"))),
    "store": os.environ.get("TORCHELASTIC_USE_AGENT_STORE"),
}), flush=True)
"""


def write(tmp_path: Path, code: str, name: str = "probe.py") -> Path:
    script = tmp_path / name
    script.write_text(code)
    return script


def outputs(done: subprocess.CompletedProcess) -> list[dict]:
    return sorted(
        (json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")),
        key=lambda seen: seen["env"].get("RANK", ""),
    )


@pytest.mark.slow  # a fresh interpreter, and the server's start
def test_a_warm_job_sees_the_argv_path_cwd_and_environment_a_fresh_interpreter_sees(tmp_path):
    script = write(tmp_path, PROBE)
    env = {**ENV, "ASKED": "yes"}
    command = [sys.executable, "probe.py", "a b", "--c"]
    fresh = processes.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    warm = [
        processes.run(command, warm=True, cwd=tmp_path, env=env, capture_output=True, text=True)
        for _ in range(2)
    ]
    (expected,), (first,), (second,) = map(outputs, [fresh, *warm])
    for key in ("argv", "path0", "cwd", "name", "asked", "env"):
        assert first[key] == second[key] == expected[key], key
    assert first["argv"] == ["probe.py", "a b", "--c"] and first["path0"] == str(script.parent)
    assert first["draw"] != second["draw"]  # numpy's global generator drawn afresh, as a new one
    assert [done.stdout.splitlines()[-1] for done in (fresh, *warm)] == ["atexit ran"] * 3


@pytest.mark.slow  # a fresh interpreter each
@pytest.mark.parametrize(
    ("code", "status", "says"),
    [
        ("import sys; sys.exit(3)", 3, ""),
        ("import sys; sys.exit('no data here')", 1, "no data here"),
        ("raise ValueError('planted')", 1, "ValueError: planted"),
        ("raise KeyboardInterrupt", -signal.SIGINT, "KeyboardInterrupt"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL, ""),
        ("import sys; sys.stdout.write('unflushed')", 0, ""),
    ],
)
def test_a_warm_job_ends_with_the_status_and_output_a_fresh_interpreter_gives(
    tmp_path, code, status, says
):
    script = write(tmp_path, code)
    runs = [
        processes.run([sys.executable, str(script)], warm=warm, capture_output=True, text=True)
        for warm in (False, True)
    ]
    assert [done.returncode for done in runs] == [status, status]
    assert says in runs[1].stderr
    assert runs[0].stdout == runs[1].stdout


@pytest.mark.slow  # the server's start
def test_a_warm_job_reads_its_input_and_answers_a_module_run_with_dash_m(tmp_path):
    write(tmp_path, "import sys; print(sys.stdin.read().upper(), __name__)", "shout.py")
    done = processes.run(
        [sys.executable, "-m", "shout"], warm=True, input="hello", cwd=tmp_path,
        capture_output=True, text=True,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "HELLO __main__\n")
    with pytest.raises(ValueError, match="no interpreter option"):
        processes.run([sys.executable, "-c", "pass"], warm=True)


@pytest.mark.slow
@pytest.mark.xdist_group("ranks")  # a torchrun job
def test_warm_ranks_see_the_variables_and_agent_store_of_torchrun_workers(tmp_path):
    script = write(tmp_path, PROBE)
    under_torchrun = processes.run(
        [*torchrun(2, free_port()), str(script)], env=ENV, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    warm = processes.run(
        [sys.executable, str(script)], ranks=2, run_dir=tmp_path, env=ENV,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert under_torchrun.returncode == warm.returncode == 0, warm.stderr
    expected, seen = outputs(under_torchrun), outputs(warm)
    assert [s["env"] for s in seen] == [e["env"] for e in expected]
    assert [s["elastic"] for s in seen] == [e["elastic"] for e in expected]
    assert {s["store"] for s in seen} == {"True"}  # the workers join the launcher's store


@pytest.mark.slow  # the server's start
def test_a_failed_rank_ends_its_group_at_once_with_status_1_as_torchrun_does(tmp_path):
    script = write(
        tmp_path,
        "import os, time\n"
        "if os.environ['RANK'] == '1': raise ValueError('planted failure on rank 1')\n"
        "time.sleep(120)\n",
    )
    start = time.monotonic()
    done = processes.run(
        [sys.executable, str(script)], ranks=2, run_dir=tmp_path, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "ValueError: planted failure on rank 1" in done.stderr
    assert time.monotonic() - start < 20  # rank 0 got SIGTERM, not its two minutes


@pytest.mark.slow  # the server's start
def test_killing_a_warm_group_leaves_no_process_behind(tmp_path):
    script = write(tmp_path, "import time; print('up', flush=True); time.sleep(120)")
    job = processes.Job(
        [sys.executable, str(script)], ranks=2, run_dir=tmp_path, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert job.process.stdout is not None
    assert [job.process.stdout.readline() for _ in range(2)] == ["up\n", "up\n"]
    pids = [job.process.pid, *job.process.rank_pids]
    assert job.survivors() == sorted(pids)
    job.kill()
    assert wait_dead(pids, within=5) and job.survivors() == []
    assert job.process.returncode == -signal.SIGKILL
