"""Shared test fixtures, and a test session that no installed pluglearn plugin can change.

Where things are (docs/testing.md, "How the suite is organised"): ``tests/`` mirrors
``src/pluglearn/``, the tests of ``pluglearn/X/Y.py`` in ``tests/X/test_Y.py`` (or
``test_Y_<behaviour>.py`` when they are many); beside them

- ``tests/helpers.py``: tiny data, the tiny Learner (``tiny_learner``, also the ``make_learner``
  fixture below), the event-recording plugin and crash plugins;
- ``tests/jobs/``: the programs the tests start as child processes (``*_job.py`` scripts,
  ``torchrun`` jobs, ``*_worker.py`` functions that spawned ranks run), ``launch.py`` (how a
  test starts and kills a torchrun job) and what only the jobs import; ``tests.jobs.JOBS`` is
  the folder, so a test names a job ``JOBS / "resume_job.py"``;
- ``tests/support/``: modules the tests and their child processes both import, so they must
  be importable by name (``tests.support.<module>``): datasets that worker processes unpickle by
  reference, models a fresh process rebuilds, the experiment trackers' plugins, a Jupyter kernel
  runner.

A package that declares a plugin under the entry-point group ``pluglearn`` (``pip install
./examples/plugin_package``, as the README suggests) joins every ``Learner``, which would add
its metrics and hooks to the suite's own runs. The session therefore starts with
``PLUGLEARN_DISABLE_PLUGIN_AUTOLOAD=1`` and without ``PLUGLEARN_PLUGINS`` /
``PLUGLEARN_BLOCK_PLUGINS`` (subprocesses inherit this); the tests about entry points opt back
in with the ``plugin_autoload`` fixture.
"""

from __future__ import annotations

import atexit
import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from pluglearn import Learner
from pluglearn.hooks.entrypoints import BLOCK_ENV, DISABLE_ENV, PLUGINS_ENV
from tests.helpers import tiny_learner
from tests.processes import kill_jobs

# At exit the interpreter's last garbage collections walk every object the session made: 4 to
# 7 s on an xdist worker after the whole suite, and the run waits for its workers. Those objects
# live until the process ends anyway; frozen first (atexit runs this after the handlers that
# libraries register later), the walks have nothing to visit.
atexit.register(gc.freeze)

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
    elif config.getoption("dist", "no") == "loadgroup" and _groups_ignored():
        raise pytest.UsageError(
            f"pytest {pytest.__version__} with pytest-xdist {_xdist_version()} ignores every "
            "xdist_group (xdist writes the group into item._nodeid, which pytest 9.2 no longer "
            "reads): two-rank jobs would run side by side. Install with -c constraints.txt "
            "(pytest<9.2)."
        )


def _xdist_version() -> str:
    from importlib.metadata import version

    return version("pytest-xdist")


def _groups_ignored() -> bool:
    """Whether this pytest and pytest-xdist drop the groups of ``--dist loadgroup``."""
    xdist = tuple(int(part) for part in _xdist_version().split(".")[:3] if part.isdigit())
    return pytest.version_tuple[:2] >= (9, 2) and xdist <= (3, 8, 0)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker under ``--dist loadgroup``, every test marked ``xdist_group`` must
    carry its group in its id by now (pytest-xdist appends ``@group``): a pytest that reads the
    id elsewhere (9.2 with xdist 3.8.0) ignores every group without a word, and two-rank jobs
    then run side by side."""
    if not getattr(config.option, "loadgroup", False):
        return
    ignored = [
        i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid
    ]
    if ignored:
        raise pytest.UsageError(
            f"pytest-xdist's groups are ignored ({ignored[0]} has no @group in its id): this "
            "pytest and pytest-xdist do not work together; install with -c constraints.txt"
        )


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


@pytest.fixture
def make_learner() -> Callable[..., Learner]:
    """The factory of tiny Learners every test shares (``tests.helpers.tiny_learner``).

    ``make_learner(plugins=(), n_train=8, n_valid=4, bs=4, defaults=False, **options)``: a
    ``nn.Linear(4, 3)`` on ``n_train`` training and ``n_valid`` validation items of
    ``tiny_data``, in ready batches of ``bs``, seeded (``torch.manual_seed(0)``) before the model
    is made. The options (``data_seed``, ``model``, ``from_datasets``, ``loader_seed``, ...) are
    in ``tiny_learner``'s doc; a test that needs a learner they cannot express keeps its own
    factory and says why.

        def test_two_epochs(make_learner):
            learn = make_learner([Recorder()], n_train=16)
            learn.fit(2)
    """
    return tiny_learner
