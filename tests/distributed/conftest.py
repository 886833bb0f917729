"""Every test here launches two-rank jobs (torchrun, gloo): with ``-n`` they run one at a time,
on one worker (``--dist loadgroup``, in pyproject's addopts), so two jobs never share the CPUs
or race for ports; the other workers run the rest of the suite meanwhile."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.xdist_group("ranks"))
