"""Bring the hook implementations under mutation (used by ``mutation.py``, on its copy only).

mutmut 3 does not mutate a function that carries a decorator, and every hook implementation of
a plugin carries ``@hookimpl``: its hook bodies (``should_step``, ``before_step``,
``state_dict``, ...) would never be mutated. This rewrites a module so that they are, without
changing what it does:

    class Plugin:                              class Plugin:
        @hookimpl(tryfirst=True)          ->                                  # (blank line)
        def before_step(self, learn): ...          def before_step(self, learn): ...
                                               ...
                                               Plugin.before_step = (
                                                   hookimpl(tryfirst=True))(Plugin.before_step)

The decorator line(s) are blanked, not removed, so every line keeps its number (the survivors
are reported as ``file:line``), and the decorator, with its own arguments, is applied at the
end of the module. mutmut's trampoline wraps the method with ``functools.wraps``; pluggy reads
the hook's argument names through ``inspect.unwrap``, so the plugin registers the same hooks.

Only a method of a top-level class whose one decorator is ``@hookimpl`` or ``@hookimpl(...)``
is rewritten; anything else (``@property``, two decorators, nested classes) is left as it is.
"""

from __future__ import annotations

import ast
from pathlib import Path

MARKER = "hookimpl"


def _is_marker(decorator: ast.expr) -> bool:
    if isinstance(decorator, ast.Call):
        decorator = decorator.func
    return isinstance(decorator, ast.Name) and decorator.id == MARKER


def expose_hooks(source: str) -> tuple[str, list[str]]:
    """``source`` with its ``@hookimpl`` methods undecorated and re-marked at the end, and the
    ``Class.method`` names rewritten."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    appended: list[str] = []
    for cls in tree.body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for method in cls.body:
            if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if len(method.decorator_list) != 1 or not _is_marker(method.decorator_list[0]):
                continue
            if method.name.startswith("__") and not method.name.endswith("__"):
                continue  # a private name is mangled inside the class, not outside it
            decorator = method.decorator_list[0]
            marker = ast.get_source_segment(source, decorator)
            assert marker is not None and decorator.end_lineno is not None
            # the "@" is on the decorator's first line; its arguments may run over several lines
            for i in range(decorator.lineno - 1, decorator.end_lineno):
                lines[i] = "\n"
            target = f"{cls.name}.{method.name}"
            appended.append(f"{target} = ({marker})({target})\n")
    if not appended:
        return source, []
    text = "".join(lines)
    if not text.endswith("\n"):
        text += "\n"
    text += "\n# tools/mutation_hooks.py: the hook markers, applied after mutation\n"
    return text + "".join(appended), [a.split(" = ")[0] for a in appended]


def expose_hooks_in(path: Path) -> list[str]:
    """Rewrite the file ``path`` in place (see ``expose_hooks``); the names rewritten."""
    text, names = expose_hooks(path.read_text())
    if names:
        path.write_text(text)
    return names
