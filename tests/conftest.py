"""Shared test fixtures, and a test session that no installed pluglearn plugin can change.

A package that declares a plugin under the entry-point group ``pluglearn`` (``pip install
./examples/plugin_package``, as the README suggests) joins every ``Learner``, which would add
its metrics and hooks to the suite's own runs. The session therefore starts with
``PLUGLEARN_DISABLE_PLUGIN_AUTOLOAD=1`` and without ``PLUGLEARN_PLUGINS`` /
``PLUGLEARN_BLOCK_PLUGINS`` (subprocesses inherit this); the tests about entry points opt back
in with the ``plugin_autoload`` fixture.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pluglearn.hooks.entrypoints import BLOCK_ENV, DISABLE_ENV, PLUGINS_ENV
from tests.processes import kill_jobs

_AUTOLOAD_VARS = (DISABLE_ENV, PLUGINS_ENV, BLOCK_ENV)
_saved_environment: dict[str, str | None] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Before collection (a test module may build a Learner at import): no installed plugins."""
    _saved_environment.update({var: os.environ.get(var) for var in _AUTOLOAD_VARS})
    for var in (PLUGINS_ENV, BLOCK_ENV):
        os.environ.pop(var, None)
    os.environ[DISABLE_ENV] = "1"
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # one thread per worker (and per process it starts): n workers x all cores would
        # oversubscribe the CPU, and a timing test (the Profiler's) would read the contention
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)


def pytest_unconfigure(config: pytest.Config) -> None:
    for var, value in _saved_environment.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    """The jobs a test started (tests/processes.py) die with it: passed, failed or timed out."""
    yield
    kill_jobs()


@pytest.fixture
def plugin_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opt back in: installed plugins load for this test (as outside the test suite)."""
    for var in _AUTOLOAD_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def shared_mnist_dir() -> Path:
    """The read-only reference MNIST files in ``../shared/data/mnist`` (skips when absent)."""
    path = Path(__file__).parents[1].parent / "shared/data/mnist"
    if not path.is_dir():
        pytest.skip(f"reference MNIST data not found at {path} (../shared/data/mnist of the repo)")
    return path
