"""The type checker's configuration stays true to the package: mypy is strict on exactly the
public modules (pyproject.toml), the package ships ``py.typed``, and the dispatcher declares
every fast caller it sets. ``.ci/run`` runs mypy itself."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pluglearn
import pluglearn.scratch
from pluglearn.hooks.dispatch import Dispatcher
from pluglearn.hooks.specs import HOOKS

ROOT = Path(__file__).parents[1]
# the loop's machinery, strict beside the modules that define the public names
MACHINERY = (
    "pluglearn",
    "pluglearn.learner",
    "pluglearn.loop",
    "pluglearn.hooks.*",
    "pluglearn.run.*",
)


def strict_patterns() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    strict = [o for o in config["overrides"] if o.get("disallow_untyped_defs")]
    assert len(strict) == 1, "one override block holds the strict flags"
    return list(strict[0]["module"])


def public_modules() -> set[str]:
    """The modules that define the names of ``pluglearn.__all__`` and ``scratch.__all__``."""
    found = set()
    for package in (pluglearn, pluglearn.scratch):
        for name in package.__all__:
            module = getattr(getattr(package, name), "__module__", None) or ""
            if module.split(".")[0] == "pluglearn":
                found.add(module)
    return found


def package_modules() -> set[str]:
    src = ROOT / "src"
    return {
        ".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        for p in (src / "pluglearn").rglob("*.py")
    }


def test_mypy_is_strict_on_every_public_module_and_the_loops_machinery():
    patterns = strict_patterns()
    wanted = public_modules() | {
        m for m in package_modules() for p in MACHINERY if fnmatch.fnmatch(m, p)
    }
    uncovered = sorted(m for m in wanted if not any(fnmatch.fnmatch(m, p) for p in patterns))
    assert not uncovered, f"add these modules to the strict block of [tool.mypy]: {uncovered}"


def test_mypy_is_strict_on_no_module_beyond_them():
    # the public names' modules, the machinery, and scratch (all of it public API by design)
    allowed = public_modules() | {
        "pluglearn.exceptions",
        "pluglearn.scratch",
        "pluglearn.scratch.*",
    }
    allowed |= set(MACHINERY)
    extra = [p for p in strict_patterns() if p not in allowed]
    assert not extra, f"strict patterns naming no public module: {extra}"
    modules = package_modules()
    stale = [p for p in strict_patterns() if not any(fnmatch.fnmatch(m, p) for m in modules)]
    assert not stale, f"strict patterns matching no module of src/: {stale}"


def test_the_package_ships_py_typed():
    assert (ROOT / "src/pluglearn/py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["pluglearn"]


def test_the_dispatcher_declares_each_fast_caller_it_sets():
    fast = {hook for hook, spec in HOOKS.items() if spec.args == ("learn",)}
    declared = {
        name
        for name, kind in Dispatcher.__annotations__.items()
        if kind == "Caller" and not name.startswith("_")
    }
    assert declared == fast, (
        f"declare in Dispatcher: {sorted(fast - declared)}; remove: {sorted(declared - fast)}"
    )
