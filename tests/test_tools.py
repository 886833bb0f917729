"""The developer tools in ``tools/`` name files that exist: every module of
``tools/mutation.py``'s table and every test file it runs against that module (modules and
tests move; a stale entry would be skipped with only a note, and its module left untested)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

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
        for path in [f"{mutation.PACKAGE}/{module}", *(t.split("::")[0] for t in tests)]
        if not (ROOT / path).is_file()
    ]
    assert missing == []
    assert "checkpoint/resume.py" in mutation.MODULES  # the table is the current layout's
