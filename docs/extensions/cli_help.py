"""An MkDocs hook: the ``pluglearn`` command's ``--help`` texts, generated at each build.

A line ``<!-- pluglearn check --help -->`` in a page becomes that command's help, as argparse
prints it, in a code block, so the CLI page cannot drift from the parser. Enabled in
``mkdocs.yml``::

    hooks:
      - docs/extensions/cli_help.py
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from typing import Any

from pluglearn.cli import build_parser

_MARKER = re.compile(r"^<!-- (?P<command>pluglearn(?: [a-z]+)? --help) -->$", re.M)


def help_text(command: str) -> str:
    """What ``command`` (``pluglearn [SUBCOMMAND] --help``) prints, at a width of 100 columns.

    >>> help_text("pluglearn --help").startswith("usage: pluglearn")
    True
    """
    args = shlex.split(command)[1:]
    out = io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: fix it for the page
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            build_parser().parse_args(args)
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    if not out.getvalue():
        raise ValueError(f"{command!r} printed no help: is the subcommand spelled right?")
    return out.getvalue().rstrip()


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace every help marker of a page by the help it names."""
    return _MARKER.sub(
        lambda m: f"```text\n$ {m['command']}\n{help_text(m['command'])}\n```", markdown
    )
