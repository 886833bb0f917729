"""What collecting the suite imports. Every xdist worker imports every test module before its
first test, so a library imported at a test module's top (or by a ``tests.`` module it imports)
is paid once per worker: mlflow, wandb, torchmetrics and scikit-learn took 3.4 s of each
worker's 6.3 s of collection. The tests that use them import them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# about a second or more each to import on this machine; none is needed to define a test
HEAVY = ("mlflow", "wandb", "torchmetrics", "sklearn")


def imported_at_top(tree: ast.Module) -> set[str]:
    """The modules a module imports when it is imported: its top-level ``import``s, those in
    top-level ``if``/``try`` blocks, and ``pytest.importorskip`` calls there; not those in
    functions or classes (they run when called)."""
    found: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, (ast.If, ast.Try)):
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                pending.extend(node.orelse)  # imports for annotations only never run
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    pending.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
        elif isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Call):
            call = node.value
            named = bool(call.args) and isinstance(call.args[0], ast.Constant)
            if getattr(call.func, "attr", None) == "importorskip" and named:
                found.add(str(call.args[0].value))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_when_collected(path: Path) -> dict[str, list[str]]:
    """Every module importing ``path`` imports, following the suite's own ``tests.`` modules:
    module name -> the chain of test modules that brings it in."""
    chains: dict[str, list[str]] = {}
    seen: set[Path] = set()
    queue = [(path, [str(path.relative_to(ROOT))])]
    while queue:
        current, chain = queue.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in imported_at_top(ast.parse(current.read_text(), str(current))):
            chains.setdefault(name, chain)
            if name.split(".")[0] == "tests":
                for candidate in _source_of(name):
                    queue.append((candidate, [*chain, str(candidate.relative_to(ROOT))]))
    return chains


def _source_of(name: str) -> list[Path]:
    base = ROOT.joinpath(*name.split("."))
    return [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()]


def test_collecting_a_test_module_imports_none_of_the_heavy_libraries():
    offenders: dict[str, None] = {}  # in order, once each
    for path in sorted(TESTS.rglob("*.py")):
        for name, chain in imports_when_collected(path).items():
            if (package := name.split(".")[0]) in HEAVY:
                offenders[f"{' -> '.join(chain)} imports {package}"] = None
    assert not offenders, (
        "import these inside the tests that use them (and mark the module with "
        "tests.helpers.needs(...) to skip without the library):\n" + "\n".join(offenders)
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import mlflow", {"mlflow"}),
        ("from torchmetrics.classification import F1", {"torchmetrics"}),
        ("pytest.importorskip('wandb')", {"wandb"}),
        ("x = pytest.importorskip('sklearn')", {"sklearn"}),
        ("try:\n    import wandb\nexcept ImportError:\n    import mlflow", {"wandb", "mlflow"}),
        ("if True:\n    import sklearn", {"sklearn"}),
        ("if TYPE_CHECKING:\n    import mlflow", set()),
        ("def f():\n    import mlflow", set()),
        ("class A:\n    import wandb", set()),
    ],
)
def test_what_counts_as_imported_when_a_module_is_imported(source, expected):
    packages = {name.split(".")[0] for name in imported_at_top(ast.parse(source))}
    assert packages & set(HEAVY) == expected
