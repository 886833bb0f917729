"""The ``pluglearn`` command, run as users run it: the console script, in a process of its own
(forked warm, ``tests/warm_start.py``; the help test executes the script itself)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from pluglearn.cli import first_sentence
from pluglearn.hooks import specs
from tests import processes

SCRIPT = Path(sys.executable).with_name("pluglearn")
README = Path(__file__).resolve().parents[1] / "README.md"
HOOKS = [name for name, fn in vars(specs).items() if hasattr(fn, "pluglearn_spec")]

PLUGINS = """
from pluglearn import hookimpl

class Good:
    @hookimpl
    def after_batch(self, learn):
        pass

class Ported:
    @hookimpl
    def on_train_batch_end(self, learn):
        pass

class WrongArg:
    @hookimpl
    def after_batch(self, learner):
        pass

class Unmarked:
    def after_batch(self, learn):
        pass

class UnmarkedPorted:
    def on_train_batch_end(self, learn):
        pass

class NeedsArgs:
    def __init__(self, size):
        self.size = size

class NoHooks:
    def helper(self):
        pass

def a_function(learn):
    pass

GOOD = Good()
"""

MOSTLY_MARKED = """
from pluglearn import hookimpl

class MostlyMarked:
    @hookimpl
    def after_batch(self, learn):
        pass

    def before_batch(self, learn):
        pass
"""


def pluglearn(*args: str, cwd: Path | None = None, env: dict | None = None, exec: bool = False):
    """``pluglearn args``: the console script run by the interpreter, or ``exec``uted by its
    ``#!`` line as a shell runs it."""
    assert SCRIPT.exists(), f"no console script at {SCRIPT}: reinstall with pip install -e ."
    return processes.run(
        [str(SCRIPT), *args] if exec else [sys.executable, str(SCRIPT), *args],
        warm=not exec,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def plugin_dir(tmp_path):
    (tmp_path / "my_plugins.py").write_text(PLUGINS)
    return tmp_path


def hooks_table() -> dict[str, dict[str, str]]:
    """`pluglearn hooks` as {hook: {"arguments": ..., "kind": ..., "when": ...}}, cut at the
    header's column starts (a kind may hold a space: "run all")."""
    result = pluglearn("hooks")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    starts = [header.index(c) for c in ("hook", "arguments", "kind", "when")]
    rows = {}
    for line in lines[: lines.index("")]:
        hook, args, kind, when = (
            line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)
        )
        rows[hook] = {"arguments": args, "kind": kind, "when": when}
    return rows


def readme_hook_kinds() -> dict[str, str]:
    table = README.read_text().split("<!-- hooks:start -->")[1].split("<!-- hooks:end -->")[0]
    rows = [r.strip("|").split("|") for r in table.strip().splitlines()[2:]]
    return {hook.strip().strip("`"): kind.strip() for hook, _, kind, *_ in rows}


@pytest.mark.slow
def test_hooks_lists_every_hook_with_its_arguments_and_the_readmes_kind():
    rows = hooks_table()
    assert list(rows) == HOOKS
    assert rows["make_dataloader"]["arguments"] == "learn, dataset, train"
    assert {hook: row["kind"] for hook, row in rows.items()} == readme_hook_kinds()
    assert rows["cleanup_fit"]["kind"] == "run all" and rows["compute_loss"]["kind"] == "step"


@pytest.mark.slow
def test_hooks_legend_explains_every_kind_it_prints():
    legend = pluglearn("hooks").stdout.split("\nkinds:\n")[1]
    for kind in set(readme_hook_kinds().values()):
        assert re.search(rf"^  {kind} +\S", legend, re.M), kind


@pytest.mark.slow
def test_hooks_shows_each_descriptions_whole_first_sentence():
    rows = hooks_table()
    assert rows["forward_context"]["when"] == (
        "Return a context manager (or None) to enter around predict, after_pred and "
        'compute_loss of every batch, e.g. torch.autocast("cpu", torch.bfloat16)'
    )
    for hook in ("backward", "step", "zero_grad"):  # more than the qualifier "Training only"
        assert (
            rows[hook]["when"].startswith("Training only") and "return True" in rows[hook]["when"]
        )
    assert rows["before_fit"]["when"] == "Start of fit"
    for hook, row in rows.items():
        assert not re.search(r"\b(e\.g|i\.e|etc)$", row["when"]), hook


@pytest.mark.parametrize(
    ("doc", "sentence"),
    [
        ("Fires once, e.g. after a fit. Then more.", "Fires once, e.g. after a fit"),
        ("The loss, i.e. a scalar. More.", "The loss, i.e. a scalar"),
        ("Needs torch 2.1.0 or later. More.", "Needs torch 2.1.0 or later"),
        (
            "Reads learn.opt, learn.batch, ... and more. Next.",
            "Reads learn.opt, learn.batch, ... and more",
        ),
        ("Lr of 0.5. Then.", "Lr of 0.5"),
        ("``learn.opt`` exists.\n    Second line.", "learn.opt exists"),
        ("Wait... or not", "Wait... or not"),
        ("", ""),
    ],
)
def test_first_sentence_does_not_stop_at_abbreviations_ellipses_or_numbers(doc, sentence):
    assert first_sentence(doc) == sentence


@pytest.mark.slow
def test_hooks_name_prints_one_hooks_documentation_and_an_unknown_name_fails():
    result = pluglearn("hooks", "before_batch")
    assert result.returncode == 0
    assert result.stdout.startswith("before_batch(learn)")
    assert "learn.batch" in result.stdout
    result = pluglearn("hooks", "before_bacth")
    assert result.returncode == 1 and "no hook named 'before_bacth'" in result.stderr


@pytest.mark.slow
def test_plugins_lists_built_in_and_installed_plugins_with_hooks_and_origin(tmp_path):
    (tmp_path / "cli_fake_plugin.py").write_text(PLUGINS)
    info = tmp_path / "cli_fake_plugin-2.5.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cli-fake-plugin\nVersion: 2.5\n")
    (info / "entry_points.txt").write_text("[pluglearn]\ngood = cli_fake_plugin:Good\n")
    result = pluglearn("plugins", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["Recorder"])
    assert lines[at].split()[1] == "pluglearn.plugins.recorder"
    assert "before_batch, after_batch, report" in lines[at + 1]
    at = lines.index("  good = cli_fake_plugin:Good (cli-fake-plugin 2.5)")
    assert lines[at + 1].split() == ["hooks:", "after_batch"]


@pytest.mark.slow
def test_check_passes_a_good_plugin_class_or_object(plugin_dir):
    for spec in ("my_plugins:Good", "my_plugins:GOOD"):
        result = pluglearn("check", spec, cwd=plugin_dir)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"OK {spec}: hooks after_batch"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("my_plugins:Ported", "in pluglearn use 'after_batch'"),
        ("my_plugins:WrongArg", "'learner' that the hook does not provide"),
    ],
)
@pytest.mark.slow
def test_check_fails_with_the_guards_message(plugin_dir, spec, message):
    result = pluglearn("check", spec, cwd=plugin_dir)
    assert result.returncode == 1
    assert result.stderr.startswith(f"FAILED {spec}: ") and message in result.stderr


@pytest.mark.slow
def test_check_warns_and_strict_turns_warnings_into_failures(tmp_path):
    (tmp_path / "mostly.py").write_text(MOSTLY_MARKED)
    result = pluglearn("check", "mostly:MostlyMarked", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "'before_batch' is named like a hook but lacks @hookimpl" in result.stderr
    result = pluglearn("check", "--strict", "mostly:MostlyMarked", cwd=tmp_path)
    assert result.returncode == 1 and "--strict" in result.stderr


@pytest.mark.parametrize(
    ("spec", "problem", "fix"),
    [
        ("os:system", "system is a function, not a plugin", "a class whose methods carry"),
        ("my_plugins:a_function", "is a function, not a plugin", "@hookimpl"),
        (
            "my_plugins:Unmarked",
            "Unmarked implements no hook, so pluglearn would never call it",
            "'after_batch' is named like a hook but lacks @hookimpl, so it never runs: decorate "
            "it with @hookimpl",
        ),
        (
            "my_plugins:UnmarkedPorted",
            "UnmarkedPorted implements no hook",
            "'on_train_batch_end' is a Lightning / Keras hook name; in pluglearn use 'after_batch'",
        ),
        (
            "my_plugins:NoHooks",
            "NoHooks implements no hook, so pluglearn would never call it",
            "mark its hook methods with @hookimpl",
        ),
    ],
)
@pytest.mark.slow
def test_check_refuses_what_is_not_a_plugin_with_the_reason_and_the_fix(
    plugin_dir, spec, problem, fix
):
    result = pluglearn("check", spec, cwd=plugin_dir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"FAILED {spec}: ")
    assert problem in result.stderr and fix in result.stderr
    assert "OK" not in result.stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("my_plugins", "is not module:Object"),
        ("no_such_module:Thing", "ModuleNotFoundError"),
        ("my_plugins:Missing", "has no 'Missing'"),
        ("my_plugins:NeedsArgs", "cannot be made with no arguments"),
    ],
)
@pytest.mark.slow
def test_check_names_what_could_not_be_loaded(plugin_dir, spec, message):
    result = pluglearn("check", spec, cwd=plugin_dir)
    assert result.returncode == 2
    assert f"cannot load {spec}" in result.stderr and message in result.stderr


@pytest.mark.slow
def test_ctrl_c_ends_the_command_with_one_line_and_status_130(tmp_path):
    (tmp_path / "slow_plugin.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during its import\n"
    )
    result = pluglearn("check", "slow_plugin:Plugin", cwd=tmp_path)
    assert result.returncode == 130, result.stderr
    assert result.stderr == "pluglearn: interrupted (it saves nothing: run it again)\n"


@pytest.mark.slow
def test_help_lists_the_three_commands():
    result = pluglearn("--help", exec=True)  # the script as the shell runs it, by its #! line
    assert result.returncode == 0
    for command in ("hooks", "plugins", "check"):
        assert command in result.stdout
