"""The README's hook reference and set-up commands stay in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

from pluglearn.plugins.specs import HOOKS, KIND_DOCS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_hook_reference_matches_the_specs():
    text = README.read_text()
    table = text.split("<!-- hooks:start -->")[1].split("<!-- hooks:end -->")[0]
    rows = [r for r in table.strip().splitlines()[2:] if r.startswith("|")]
    documented = {}
    for row in rows:
        hook, args, kind = (c.strip() for c in row.strip("|").split("|")[:3])
        documented[hook.strip("`")] = (tuple(a.strip() for a in args.split(",")), kind)
    assert list(documented) == list(HOOKS), "README's hook table must list every hook, in order"
    for hook, spec in HOOKS.items():
        assert documented[hook][0] == spec.args, f"README gives {hook} the wrong arguments"
        assert documented[hook][1] == KIND_DOCS[spec.kind].title, hook


def test_readme_explains_every_kind_by_the_name_pluglearn_hooks_prints():
    text = README.read_text()
    explained = text.split("## Hook reference")[1].split("<!-- hooks:start -->")[0]
    assert set(KIND_DOCS) == {spec.kind for spec in HOOKS.values()}
    for kind in KIND_DOCS.values():
        assert f"*{kind.title}*" in explained, (
            f"the README does not explain the kind {kind.title!r}"
        )


def test_readme_names_the_two_setup_commands_that_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci/run").read_text()
    install = re.search(r"^python3 -m venv .*$", text, re.M).group(0)
    assert "-c constraints.txt" in install and "examples/train_mlp.py" in install
    assert ".venv/bin/python -m pytest" in text
    assert "-c constraints.txt" in ci and "-m pytest" in ci
