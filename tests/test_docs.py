"""The API reference site: every public name on a page, and a build with no warning.

The site is ``mkdocs.yml`` and ``docs/``; its pages name objects with mkdocstrings' ``:::``
directives. The fast tests read those directives; the slow one builds the site as CI does
(``mkdocs build --strict``) and checks the rendered anchors, so a name that is listed but does
not render, or a docstring griffe warns about, fails here.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

import pluglearn
import pluglearn.scratch
from pluglearn.hooks import specs
from tests import processes

ROOT = Path(__file__).resolve().parents[1]
API_PAGES = ROOT / "docs" / "api"
EXTENSIONS = ROOT / "docs" / "extensions"
#: modules documented as modules, by their own path: the hook catalogue and the command line
MODULE_PAGES = {"pluglearn.hooks.specs", "pluglearn.cli", "pluglearn.scratch"}
DIRECTIVE = re.compile(r"^::: (\S+)\s*$", re.M)


def directives() -> dict[str, str]:
    """Every ``::: path`` of the API pages -> the page naming it."""
    found: dict[str, str] = {}
    for page in sorted(API_PAGES.glob("*.md")):
        for path in DIRECTIVE.findall(page.read_text()):
            assert path not in found, f"{path} is documented twice: {found[path]}, {page.name}"
            found[path] = page.name
    return found


def public_paths() -> set[str]:
    """The paths users import: ``pluglearn.<name>`` and ``pluglearn.scratch.<name>``."""
    return {f"pluglearn.{n}" for n in pluglearn.__all__} | {
        f"pluglearn.scratch.{n}" for n in pluglearn.scratch.__all__
    }


def load_extension(name: str) -> ModuleType:
    """A module of ``docs/extensions`` (build code, not part of the package)."""
    spec = importlib.util.spec_from_file_location(f"docs_{name}", EXTENSIONS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_has_a_directive_on_an_api_page():
    missing = sorted(public_paths() - set(directives()))
    assert not missing, f"add these to a page under docs/api/: {missing}"


def test_api_pages_name_objects_through_the_package_that_exports_them():
    """``::: pluglearn.Learner``, not ``pluglearn.learner.Learner``: the pages survive a move of
    the internal modules, which griffe follows from the re-export."""
    internal = sorted(set(directives()) - public_paths() - MODULE_PAGES)
    assert not internal, f"refer to these through pluglearn or pluglearn.scratch: {internal}"
    for module in MODULE_PAGES:
        importlib.import_module(module)


def test_every_page_in_the_nav_exists_and_every_page_is_in_the_nav():
    nav = set(
        re.findall(r"^\s+- (?:[^:\n]+: )?(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    )
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert nav == pages, f"only in the nav: {nav - pages}; not in the nav: {pages - nav}"


def python_blocks(page: Path) -> list[str]:
    """The ```` ```python ```` blocks of a page, in order."""
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)


@pytest.mark.slow
def test_the_notebook_page_runs_in_order_as_a_notebook_does(capsys):
    """Its snippets build on one another; each checks what it shows with an assert."""
    page = ROOT / "docs" / "notebook_to_learner.md"
    blocks = python_blocks(page)
    assert len(blocks) >= 6, "the page lost its snippets"
    namespace: dict[str, object] = {}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{page.name}, python block {number}", "exec"), namespace)
    assert "accuracy by hand" in capsys.readouterr().out


# --------------------------------------------------------------------- the build, strictly

HAVE_DOCS_EXTRA = all(importlib.util.find_spec(m) for m in ("mkdocs", "mkdocstrings", "material"))
needs_docs_extra = pytest.mark.skipif(
    not HAVE_DOCS_EXTRA,
    reason="mkdocs is not installed: pip install -c constraints.txt -e '.[docs]' (dev has it)",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built as CI builds it, warnings as errors, into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # not --quiet: it drops warnings before --strict counts them, and the build passes
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    done = processes.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}"
    return out


@pytest.mark.slow
@needs_docs_extra
def test_the_site_builds_strictly_with_every_public_name_and_hook_rendered(site: Path):
    html = "".join(p.read_text() for p in (site / "api").rglob("index.html"))
    anchors = set(re.findall(r'id="(pluglearn[\w.]*)"', html))
    assert not public_paths() - anchors, sorted(public_paths() - anchors)
    hooks = {f"pluglearn.hooks.specs.{name}" for name in specs.HOOKS}
    assert not hooks - anchors, f"hooks without a section on the Hooks page: {hooks - anchors}"
    assert "usage: pluglearn check" in (site / "api" / "cli" / "index.html").read_text()


# --------------------------------------------------- the docstring markup, as the site reads it

needs_griffe = pytest.mark.skipif(
    importlib.util.find_spec("griffe") is None,
    reason="griffe (mkdocstrings[python]) is not installed",
)


@needs_griffe
def test_literal_blocks_and_doctests_become_fences_in_their_language():
    fence = load_extension("rst_markup").fence_code_blocks
    text = "Call order::\n\n    before_fit\n      before_epoch\n\nThen ::\n\n    x = 1\n"
    assert fence(text) == (
        "Call order:\n\n```text\nbefore_fit\n  before_epoch\n```\n\nThen\n\n```python\nx = 1\n```"
    )
    assert fence("A sum.\n\n>>> 1 + 1\n2\n\nMore.") == (
        "A sum.\n\n```pycon\n>>> 1 + 1\n2\n```\n\nMore."
    )
    assert fence("::\n\n    a = 1") == "```python\na = 1\n```"
    untouched = "Not a block:: here\n\n```\nx::\n\n    y\n```"
    assert fence(untouched) == untouched


@needs_griffe
def test_roles_become_code_linked_only_where_the_name_resolves():
    link = load_extension("rst_markup").link_roles
    paths = {"DDP": "pluglearn.DDP", "a.b.run": "a.b.run"}
    text = ":class:`DDP`, :func:`~a.b.run`, :meth:`T.x <a.b.run>`, :mod:`torch`"
    assert link(text, paths.get) == (
        '<autoref identifier="pluglearn.DDP" optional><code>DDP</code></autoref>, '
        '<autoref identifier="a.b.run" optional><code>run</code></autoref>, '
        '<autoref identifier="a.b.run" optional><code>T.x</code></autoref>, <code>torch</code>'
    )


@needs_griffe
def test_a_role_naming_a_missing_object_is_a_warning_naming_the_docstring(tmp_path, caplog):
    import griffe

    package = tmp_path / "tinypkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        '"""Uses :func:`helper`, :class:`~tinypkg.core.Thing`, :mod:`.core`, :func:`torch.ones`\n'
        'and :func:`helpr`."""\nfrom .core import Thing\n\n\ndef helper():\n    """Help."""\n'
    )
    (package / "core.py").write_text(
        'class Thing:\n    """See :meth:`run`."""\n\n    def run(self):\n        pass\n'
    )
    extension = load_extension("rst_markup").RstMarkup()
    loaded = griffe.load(
        "tinypkg", search_paths=[tmp_path], extensions=griffe.load_extensions(extension)
    )
    assert loaded.docstring.value == (
        'Uses <autoref identifier="tinypkg.helper" optional><code>helper</code></autoref>, '
        '<autoref identifier="tinypkg.core.Thing" optional><code>Thing</code></autoref>, '
        '<autoref identifier="tinypkg.core" optional><code>.core</code></autoref>, '
        "<code>torch.ones</code>\nand <code>helpr</code>."
    )
    assert "tinypkg.core.Thing.run" in loaded["core.Thing"].docstring.value
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "(tinypkg) cross-reference 'helpr'" in warnings[0], warnings


@needs_griffe
@pytest.mark.parametrize("name", ["rst_markup", "cli_help"])
def test_the_examples_in_the_extensions_docstrings_hold(name: str):
    assert doctest.testmod(load_extension(name), raise_on_error=False).failed == 0
