"""The developer tools in ``tools/``: every module of ``tools/mutation.py``'s table and every
test file it runs against that module exist (modules and tests move; a stale entry would be
skipped with only a note, and its module left untested), and its many-mutants-per-process
recheck (``mutation_batch.py``) gives each mutant the verdict of a process of its own."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import needs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mutation(monkeypatch):
    """``tools/mutation.py`` as a module (it imports ``mutation_hooks`` from its own folder)."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    return importlib.import_module("mutation")


def test_every_module_and_test_file_of_the_mutation_table_exists(mutation):
    missing = [
        path
        for module, tests in mutation.MODULES.items()
        for path in [f"{mutation.PACKAGE}/{module}", *tests]
        if not (ROOT / path).is_file()
    ]
    assert missing == []
    assert "checkpoint/resume.py" in mutation.MODULES  # the table is the current layout's


# Tests run by the batch plugin below: a "mutant" is a name in the switch file. One test kills
# mutant "m.in_process" in the pytest process; one kills "m.in_a_job" only inside a job started
# with an environment copied when the module was imported, as tests/jobs/launch.py's ENV is.
BATCHED_TESTS = """
import os, subprocess, sys

ENV = dict(os.environ)
READ = "print(open(__import__('os').environ['PLUGLEARN_MUTANT_FILE']).read())"

def test_in_process():
    assert open(os.environ["PLUGLEARN_MUTANT_FILE"]).read() != "m.in_process"

def test_in_a_job():
    seen = subprocess.run([sys.executable, "-c", READ], env=ENV, capture_output=True, text=True)
    assert seen.stdout.strip() != "m.in_a_job"
"""


def run_batch(folder: Path, tests: str, mutants: list[str]) -> subprocess.CompletedProcess:
    """pytest with the batch plugin on ``tests`` (a test module's text), in ``folder``."""
    (folder / "test_batched.py").write_text(textwrap.dedent(tests))
    (folder / "mutants.txt").write_text("\n".join(mutants) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tools"), "PLUGLEARN_MUTANT_FILE": "mutant"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-p", "mutation_batch", "--mutants=mutants.txt", "--verdicts=verdicts.txt",
         "test_batched.py"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_batch_gives_each_mutant_the_verdict_a_process_of_its_own_would(tmp_path):
    mutants = ["m.survives", "m.in_a_job", "m.in_process", "m.in_a_job"]
    done = run_batch(tmp_path, BATCHED_TESTS, mutants)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (tmp_path / "verdicts.txt").read_text().splitlines()
    assert lines[0] == "# the tests pass unmutated"
    said = [line.split()[:3] for line in lines[1:]]
    assert said == [
        ["m.survives", "survived", "-"],
        ["m.in_a_job", "killed", "test_batched.py::test_in_a_job"],
        ["m.in_process", "killed", "test_batched.py::test_in_process"],
        ["m.in_a_job", "killed", "test_batched.py::test_in_a_job"],
    ]
    assert (tmp_path / "mutant").read_text() == "pluglearn.__no_mutant__"  # left unmutated


def test_a_batch_refuses_tests_that_fail_unmutated(tmp_path):
    done = run_batch(tmp_path, "def test_fails():\n    assert False\n", ["m.any"])
    assert done.returncode != 0
    told = (tmp_path / "verdicts.txt").read_text()
    assert told.startswith("# test_batched.py::test_fails fails unmutated:")
    assert "m.any" not in told  # no verdict from tests that cannot tell


SWITCHED = """
import mutation_switch
from mutmut.mutation import trampoline

mutation_switch.install()
seen = [trampoline.get_mutant_under_test()]
for name in ("pluglearn.a.x_f__mutmut_1", "pluglearn.a.x_f__mutmut_2"):
    mutation_switch.choose("mutant", name)
    seen += [trampoline.get_mutant_under_test(), trampoline.get_mutant_under_test()]
print(seen)
"""


@needs("mutmut", "-e '.[mutation]'")
def test_mutmuts_trampolines_read_the_mutant_from_the_switch_file_each_time_it_changes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tools"), "PLUGLEARN_MUTANT_FILE": "mutant"}
    env["MUTANT_UNDER_TEST"] = "pluglearn.a.x_f__mutmut_9"  # the environment's is not read
    done = subprocess.run(
        [sys.executable, "-c", SWITCHED], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    first, second = "pluglearn.a.x_f__mutmut_1", "pluglearn.a.x_f__mutmut_2"
    assert done.stdout.strip() == repr(["", first, first, second, second])
