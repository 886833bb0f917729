"""A pytest plugin that runs many mutants in one pytest process: ``tools/mutation.py --recheck``'s
fast path, for modules whose tests start jobs (the two-rank tests).

Run as a separate pytest process per mutant, a recheck pays pytest's start, the collection and
the warm-start server's imports (``tests/warm_start.py``) every time: about 5 s on two cores,
most of a killed mutant's cost. Here one process collects once and, for each mutant, names it
in the file every process reads (``mutation_switch.py``: mutmut's trampolines ask at every
call, and the jobs the tests start read the same file), runs the tests until one fails, and
tears every fixture down before the next mutant. The tests that killed a mutant move to the
front, so the next mutant meets first the test most likely to kill it.

    pytest -p mutation_batch --mutants FILE --verdicts FILE [pytest's own arguments] TESTS

``--mutants`` lists one mutant name per line; ``--verdicts`` gets a line per mutant as it ends:
``name killed|survived test-id seconds``, after a first line saying the control passed. The
first mutant run is a control, a name no function has: every test must pass on it, else the
run stops (the tests fail unmutated, and every mutant would look killed). The control runs
again last: a failure then means some mutant left state behind in this process (a cache, a
module's global), so the kills are suspect; it is written to the verdicts as a line starting
``#``. A mutant that hangs is ended by pytest-timeout's limit (a failed test, so a kill, as
mutmut counts a timeout).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from _pytest.runner import runtestprotocol
from mutation_switch import VARIABLE, choose

CONTROL = "pluglearn.__no_mutant__"  # a module no trampoline belongs to: the code unmutated
CONTROL_PASSED = "# the tests pass unmutated"  # the verdicts' first line, once it did


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mutation_batch")
    group.addoption("--mutants", help="a file with one mutant name per line")
    group.addoption("--verdicts", help="the file each mutant's verdict is appended to")


def _run_until_a_failure(
    session: pytest.Session, items: list[pytest.Item]
) -> tuple[pytest.Item, pytest.TestReport] | None:
    """Run ``items`` in order; the first that fails (set-up, call or teardown) and its report,
    else None. Every fixture is torn down at the end, so the next mutant starts from nothing."""
    for i, item in enumerate(items):
        following = items[i + 1] if i + 1 < len(items) else None
        reports = runtestprotocol(item, nextitem=following, log=False)
        if failed := next((report for report in reports if report.failed), None):
            session._setupstate.teardown_exact(None)
            return item, failed
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    config = session.config
    listed = config.getoption("--mutants")
    if listed is None:
        return None  # not asked for: pytest runs the tests as usual
    verdicts = Path(config.getoption("--verdicts"))
    switch = os.environ.get(VARIABLE)
    if not switch:
        raise pytest.UsageError(f"mutation_batch: {VARIABLE} is unset (tools/mutation.py sets it)")
    mutants = [line.strip() for line in Path(listed).read_text().splitlines() if line.strip()]
    items = list(session.items)
    if not items:
        raise pytest.UsageError("mutation_batch: no test collected")
    with verdicts.open("a") as out:
        for n, mutant in enumerate([CONTROL, *mutants, CONTROL]):
            choose(switch, mutant)
            start = time.monotonic()
            failure = _run_until_a_failure(session, items)
            seconds = time.monotonic() - start
            if mutant == CONTROL:
                if failure is not None:
                    item, report = failure
                    after = " after the mutants" if n else ""  # a mutant left state behind
                    out.write(f"# {item.nodeid} fails unmutated{after}:\n{report.longreprtext}\n")
                    raise session.Failed(f"mutation_batch: {item.nodeid} fails unmutated{after}")
                if not n:
                    out.write(CONTROL_PASSED + "\n")
                continue
            killer = "-" if failure is None else failure[0].nodeid
            verdict = "survived" if failure is None else "killed"
            out.write(f"{mutant} {verdict} {killer} {seconds:.1f}\n")
            out.flush()
            if failure is not None:  # the likeliest killer of the next mutant first
                items.remove(failure[0])
                items.insert(0, failure[0])
    choose(switch, CONTROL)
    return True
