"""tests/processes.py: a job a test starts dies whole with the test, passed, failed or timed out,
the ranks of a two-rank torchrun job included (torchrun starts them in sessions of their own)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import process_alive, wait_dead
from tests.jobs import JOBS
from tests.jobs.launch import free_port, torchrun
from tests.processes import Job, marked, run

ROOT = Path(__file__).parents[1]
FAILING = JOBS / "failing_rank_job.py"
_GRANDCHILD = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
    " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(child.pid, flush=True)\n"
)


def rank_pids(out: Path, within: float = 60.0) -> list[int]:
    """The pids of both ranks, once rank 1 has failed (its pid file is written just before)."""
    deadline = time.monotonic() + within
    files = [out / f"rank{r}.pid" for r in (0, 1)]
    while not all(f.is_file() and f.read_text() for f in files):
        if time.monotonic() > deadline:
            raise AssertionError("the two-rank job did not start within a minute")
        time.sleep(0.1)
    return [int(f.read_text()) for f in files]


def test_a_command_that_ends_leaves_nothing_it_started_in_another_session():
    done = run([sys.executable, "-c", _GRANDCHILD], capture_output=True, text=True, timeout=60)
    grandchild = int(done.stdout)
    assert wait_dead([grandchild], within=5), "the grandchild outlived the command that started it"


@pytest.mark.slow  # waits out its 3 s timeout
def test_a_command_that_times_out_is_killed_with_everything_it_started():
    with pytest.raises(subprocess.TimeoutExpired) as expired:
        run(
            [sys.executable, "-c", _GRANDCHILD + "time.sleep(120)"],
            capture_output=True,
            text=True,
            timeout=3,
        )
    grandchild = int(expired.value.output)
    assert wait_dead([grandchild], within=5)


@pytest.mark.slow
@pytest.mark.xdist_group("ranks")
def test_killing_only_the_launcher_orphans_the_ranks_and_killing_the_job_ends_them(tmp_path):
    with Job(
        [*torchrun(2, free_port()), str(FAILING), str(tmp_path)], stderr=subprocess.DEVNULL
    ) as job:
        ranks = rank_pids(tmp_path)
        job.process.kill()  # what subprocess.run does at its timeout: the launcher alone
        job.process.wait(10)
        time.sleep(0.5)
        assert all(process_alive(p) for p in ranks), "the ranks died with their launcher"
        assert set(ranks) <= set(job.survivors())
    assert wait_dead(ranks, within=5)
    assert job.survivors() == []


@pytest.mark.slow
@pytest.mark.xdist_group("ranks")
def test_a_failing_test_with_a_two_rank_job_failing_on_one_rank_leaves_no_process_behind(
    tmp_path,
):
    # a test run by pytest under the suite's own conftest fixture: it starts the job, waits
    # until rank 1 has failed, and fails itself while the job still runs
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import _no_process_outlives_its_test  # noqa: F401\n"
    )
    (tmp_path / "test_fails.py").write_text(
        "import subprocess\n"
        "from pathlib import Path\n"
        "from tests.jobs.launch import free_port, torchrun\n"
        "from tests.processes import Job\n"
        "from tests.test_processes import FAILING, rank_pids\n\n"
        "def test_fails_on_purpose():\n"
        "    out = Path(__file__).parent\n"
        "    job = Job([*torchrun(2, free_port()), str(FAILING), str(out)],"
        " stderr=subprocess.DEVNULL)\n"
        "    (out / 'token').write_text(job.token)\n"
        "    rank_pids(out)\n"
        "    assert False, 'fails on purpose'\n"
    )
    pytest_command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    with Job(
        [*pytest_command, "-p", "no:xdist", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    ) as pytest_run:
        out, _ = pytest_run.process.communicate(timeout=120)
        assert "1 failed" in out and "fails on purpose" in out, out[-3000:]
        # checked before this Job's own end, which would kill what its test left
        ranks = [int((tmp_path / f"rank{r}.pid").read_text()) for r in (0, 1)]
        assert wait_dead(ranks, within=5), "a rank of the failed test's job is still alive"
        assert marked((tmp_path / "token").read_text()) == []
