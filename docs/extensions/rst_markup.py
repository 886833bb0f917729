"""A griffe extension: pluglearn's reStructuredText-flavoured docstrings as Markdown.

pluglearn's docstrings are written to be read in an editor and by ``help()``, in the plain
reStructuredText that pytest and pluggy use: ``Example::`` before an indented literal block,
doctest paragraphs (``>>> ...``) and Sphinx roles (``:class:`~pluglearn.DDP```). Markdown, which
mkdocstrings renders, reads the first as a paragraph ending in "::" and the second as nested
block quotes. This extension rewrites each docstring once, after griffe has loaded the package
and before mkdocstrings parses it:

- a literal block becomes a fenced code block (``python`` when it compiles, ``pycon`` for a
  doctest, ``text`` otherwise) and its ``::`` marker is shortened as Sphinx shortens it;
- a doctest paragraph becomes a ``pycon`` fence;
- a role becomes the name in code, linked to its reference entry when the site documents it.

A role naming a pluglearn object that does not exist (a typo, a renamed function) is logged as
a warning, so ``mkdocs build --strict`` fails on it: fix the docstring. Roles naming objects
outside pluglearn (``torch.Tensor``) stay plain code.

Enabled in ``mkdocs.yml``::

    plugins:
      - mkdocstrings:
          handlers:
            python:
              options:
                extensions: [docs/extensions/rst_markup.py:RstMarkup]
"""

from __future__ import annotations

import builtins
import re
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import griffe

_LOGGER = griffe.get_logger("pluglearn.docs")

#: a Sphinx role of the Python domain: ``:func:`name```, ``:class:`~a.b.C```, ``:meth:`T <a.b>```
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):`(?P<body>[^`]+)`")
_EXPLICIT_TITLE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")


class UnresolvedName(LookupError):
    """A role's target names no object of the documented package."""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _fence_language(code: str) -> str:
    """``pycon`` for a doctest, ``python`` for code that compiles, ``text`` for anything else."""
    if code.lstrip().startswith(">>>"):
        return "pycon"
    try:
        compile(code, "<docstring>", "exec")
    except (SyntaxError, ValueError):
        return "text"
    return "python"


def _fenced(lines: list[str], indent: int) -> list[str]:
    """``lines`` (dedented to ``indent``) between a pair of backtick fences."""
    code = textwrap.dedent("\n".join(lines))
    pad = " " * indent
    body = [pad + line if line else "" for line in code.splitlines()]
    return [f"{pad}```{_fence_language(code)}", *body, f"{pad}```"]


def _shorten_marker(line: str) -> str | None:
    """The line before a literal block as Sphinx prints it: ``Example::`` -> ``Example:``,
    ``text ::`` -> ``text``, a lone ``::`` -> nothing (None)."""
    stripped = line.rstrip()
    if stripped.strip() == "::":
        return None
    if stripped.endswith(" ::"):
        return stripped[:-3].rstrip()
    return stripped[:-1]


def fence_code_blocks(text: str) -> str:
    """Turn reStructuredText literal blocks and doctest paragraphs into fenced code blocks.

    >>> print(fence_code_blocks("Example::\\n\\n    x = 1\\n\\nDone."))
    Example:
    <BLANKLINE>
    ```python
    x = 1
    ```
    <BLANKLINE>
    Done.
    """
    lines = text.splitlines()
    out: list[str] = []
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            out.append(line)
            i += 1
        elif in_fence:
            out.append(line)
            i += 1
        elif line.lstrip().startswith(">>>"):
            i = _take_doctest(lines, i, out)
        elif line.rstrip().endswith("::") and _literal_block_follows(lines, i):
            i = _take_literal_block(lines, i, out)
        else:
            out.append(line)
            i += 1
    return "\n".join(out)


def _literal_block_follows(lines: list[str], i: int) -> bool:
    """A blank line after line ``i``, then a line indented deeper than line ``i``."""
    j = i + 1
    if j >= len(lines) or lines[j].strip():
        return False
    while j < len(lines) and not lines[j].strip():
        j += 1
    return j < len(lines) and _indent(lines[j]) > _indent(lines[i])


def _take_literal_block(lines: list[str], i: int, out: list[str]) -> int:
    """Append line ``i`` (its marker shortened) and the literal block after it, fenced; return
    the index of the first line after the block."""
    indent = _indent(lines[i])
    marker = _shorten_marker(lines[i])
    if marker is not None and marker.strip():
        out.extend([marker, ""])
    j = i + 1
    block: list[str] = []
    while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
        block.append(lines[j])
        j += 1
    while block and not block[-1].strip():
        block.pop()
    while block and not block[0].strip():
        block.pop(0)
    out.extend(_fenced(block, indent))
    if j < len(lines):
        out.append("")
    return j


def _take_doctest(lines: list[str], i: int, out: list[str]) -> int:
    """Append the doctest paragraph starting at line ``i``, fenced; return the index after it."""
    indent = _indent(lines[i])
    j = i
    while j < len(lines) and lines[j].strip():
        j += 1
    if out and out[-1].strip():
        out.append("")
    out.extend(_fenced(lines[i:j], indent))
    return j


def link_roles(text: str, resolve: Callable[[str], str | None]) -> str:
    """Replace each Sphinx role by its name in code, linked through autorefs when
    ``resolve(target)`` gives a path (an optional link: plain code when the site lacks it).

    >>> link_roles(":class:`~a.B` here", lambda target: target)
    '<autoref identifier="a.B" optional><code>B</code></autoref> here'
    """

    def replace(match: re.Match[str]) -> str:
        body = match["body"].strip()
        if explicit := _EXPLICIT_TITLE.match(body):
            title, target = explicit["title"], explicit["target"]
        else:
            target = body.lstrip("~")
            title = target.rsplit(".", 1)[-1] if body.startswith("~") else target
        path = resolve(target.lstrip("~"))
        code = f"<code>{title}</code>"
        return f'<autoref identifier="{path}" optional>{code}</autoref>' if path else code

    return _ROLE.sub(replace, text)


def resolve_name(obj: griffe.Object, target: str, package: griffe.Module) -> str | None:
    """The path of the object ``target`` names, read in the scope of ``obj`` as Sphinx reads
    it: relative (``.guards``), absolute (``pluglearn.data.batch_ops``) or a name in scope
    (``PluginError``, ``Learner.export``). None for a name outside ``package`` (a dotted path
    whose first part is not in scope, a built-in); raises UnresolvedName for a name inside it
    that does not exist and for a lone name that is not in scope."""
    root = package.name
    if target.startswith("."):
        module = obj.module
        base = module.path if module.is_package else module.parent.path  # type: ignore[union-attr]
        path = base + target
    else:
        head, _, rest = target.partition(".")
        if head == root:
            path = target
        else:
            try:
                path = obj.resolve(head) + (f".{rest}" if rest else "")
            except griffe.NameResolutionError as error:
                # ``torch.ones`` names a module's object as Sphinx allows; ``ValueError`` a
                # built-in; a lone unknown name (``helpr``) is a typo or a stale name
                if rest or hasattr(builtins, head):
                    return None
                raise UnresolvedName(f"{target!r} is not a name in scope") from error
    if path != root and not path.startswith(root + "."):
        return None
    try:
        found = package[path[len(root) + 1 :]] if path != root else package
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError) as error:
        raise UnresolvedName(f"{target!r} ({path}) does not exist") from error
    return found.path if found.is_alias else path


def _documented(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every object defined under it (not the names it imports)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _documented(member)  # type: ignore[arg-type]


class RstMarkup(griffe.Extension):
    """Rewrite every docstring of a loaded package from reStructuredText markup to Markdown.

    Example (``mkdocs.yml``, mkdocstrings' python handler)::

        options:
          extensions: [docs/extensions/rst_markup.py:RstMarkup]
    """

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite the docstrings of ``pkg`` once it is fully loaded (every name resolvable)."""
        for obj in _documented(pkg):
            if obj.docstring is None:
                continue

            def resolve(target: str, obj: griffe.Object = obj) -> str | None:
                try:
                    return resolve_name(obj, target, pkg)
                except UnresolvedName as error:
                    _LOGGER.warning(
                        "%s:%s: (%s) cross-reference %s",
                        obj.relative_filepath,
                        obj.docstring.lineno if obj.docstring else obj.lineno,
                        obj.path,
                        error,
                    )
                    return None

            obj.docstring.value = link_roles(fence_code_blocks(obj.docstring.value), resolve)
