"""One import path per name, a top level of what users touch, a layout that cannot go stale."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pluglearn

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "pluglearn"
INTERNALS = {"TensorBatchLoader", "DefaultLoader", "TrainStep", "HookCalls"}


def packages() -> list[str]:
    """pluglearn and every package under it."""
    found = ["pluglearn"]
    for info in pkgutil.walk_packages(pluglearn.__path__, prefix="pluglearn."):
        if info.ispkg:
            found.append(info.name)
    return found


def defining_module(obj: object, name: str) -> str | None:
    """The module that defines ``obj``: a class's or function's ``__module__``, else (an
    instance such as ``hookimpl``) the pluglearn module whose source assigns ``name``."""
    if isinstance(obj, type) or inspect.isfunction(obj):
        return obj.__module__
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py" and re.search(rf"^{name}\s*[:=]", path.read_text(), re.M):
            module = ".".join(("pluglearn", *path.relative_to(PACKAGE).with_suffix("").parts))
            if getattr(importlib.import_module(module), name, None) is obj:
                return module
    return None


def test_every_top_level_name_comes_from_the_module_that_defines_it():
    for name in pluglearn.__all__:
        obj = getattr(pluglearn, name)
        module = importlib.import_module(defining_module(obj, name))
        assert getattr(module, name) is obj, f"pluglearn.{name} is not {module.__name__}.{name}"
        assert module.__name__ != "pluglearn", name
    assert not INTERNALS & set(pluglearn.__all__)
    assert set(pluglearn.__all__) == {
        n for n in dir(pluglearn) if n[0].isupper() or n in ("hookimpl", "load_learner")
    }


def test_no_public_name_is_re_exported_by_two_packages():
    """GradCheck was importable as pluglearn.GradCheck, pluglearn.plugins.GradCheck and from
    its module; now a name has its defining module and at most one package re-exporting it."""
    exporters: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    for package_name in packages():
        package = importlib.import_module(package_name)
        for name, obj in vars(package).items():
            if name.startswith("_") or isinstance(obj, type(pluglearn)):
                continue
            module = defining_module(obj, name)
            if not (module and module.startswith("pluglearn")) or module == package_name:
                continue
            exporters.setdefault(id(obj), []).append(f"{package_name}.{name}")
            names[id(obj)] = name
    twice = {names[k]: v for k, v in exporters.items() if len(v) > 1}
    assert not twice, f"re-exported by more than one package: {twice}"


def readme_layout() -> set[str]:
    """The paths the README's Layout section lists under src/pluglearn/, from its indentation."""
    section = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("      ")]
    paths, parents = set(), []
    for line in lines:
        depth = (len(line) - len(line.lstrip()) - 6) // 2
        name = line.split()[0]
        parents = [*parents[:depth], name]
        paths.add("".join(parents).rstrip("/"))
    return paths


def test_the_readme_layout_lists_every_module_and_package():
    actual = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*")
        if "__pycache__" not in path.parts
        and path.name not in ("__init__.py", "py.typed")
        and (path.is_dir() or path.suffix == ".py")
    }
    listed = readme_layout()
    assert not actual - listed, f"README's Layout section does not list: {sorted(actual - listed)}"
    assert not listed - actual, f"README's Layout lists what is gone: {sorted(listed - actual)}"


def test_every_module_the_architecture_doc_names_exists():
    """docs/architecture.md may group modules by role, but every `name.py` or `dir/` it names
    under src/pluglearn must exist, so a rename or a move cannot leave it stale."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    layout = doc.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\s{4}([a-z_/]+(?:\.py|/))", layout, re.M))
    assert named, "the architecture doc's Layout section names no module"
    missing = sorted(n for n in named if not (PACKAGE / n).exists())
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"
    # and the other way: every folder and every module at the package's root is in it
    tree = {
        p.name + ("/" if p.is_dir() else "")
        for p in PACKAGE.iterdir()
        if p.name not in ("__init__.py", "py.typed", "__pycache__")
        and (p.is_dir() or p.suffix == ".py")
    }
    unnamed = sorted(tree - named)
    assert not unnamed, f"docs/architecture.md's Layout does not name: {unnamed}"
    mentioned = set(re.findall(r"`([a-z_/]+\.py)`", doc))
    gone = sorted(
        m
        for m in mentioned
        if not (PACKAGE / m).exists()
        and not (ROOT / m).exists()
        and not any(PACKAGE.rglob(Path(m).name))
    )
    assert not gone, f"docs/architecture.md mentions files that do not exist: {gone}"
