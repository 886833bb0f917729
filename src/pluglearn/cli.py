"""The ``pluglearn`` command: the hook reference, the plugins at hand, and a guard check for CI.

    pluglearn hooks                       every hook: arguments, kind, when it fires
    pluglearn hooks after_batch           one hook's full documentation
    pluglearn plugins                     built-in and installed plugins, their hooks, their origin
    pluglearn check mypkg.plugins:GradNorm
                                          run the registration guards on a plugin (a class is
                                          made with no arguments); exit 1 with the guard's
                                          message when it fails or implements no hook (a
                                          function, a class without @hookimpl), e.g. in a
                                          plugin's own CI

Also ``python -m pluglearn.cli ...``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pkgutil
import re
import sys
import textwrap
import warnings
from collections.abc import Sequence
from typing import IO

from .hooks import specs
from .hooks.entrypoints import BLOCK_ENV, DISABLE_ENV, PLUGINS_ENV, installed_plugins
from .hooks.guards import PluginError, PluginWarning, plugin_name
from .hooks.markers import PROJECT_NAME
from .hooks.registry import PluginRegistry

__all__ = ["main"]


def hook_names(plugin: object) -> list[str]:
    """The hooks ``plugin`` (an object or a class) implements, in spec order."""
    cls = plugin if isinstance(plugin, type) else type(plugin)
    marked = {
        name
        for name in dir(cls)
        if getattr(getattr(cls, name, None), f"{PROJECT_NAME}_impl", None) is not None
    }
    if not isinstance(plugin, type):  # a module or an object with hooks of its own
        marked |= {
            name
            for name in dir(plugin)
            if getattr(getattr(plugin, name, None), f"{PROJECT_NAME}_impl", None) is not None
        }
    return [h for h in specs.HOOKS if h in marked] + sorted(marked - set(specs.HOOKS))


#: words whose period ends no sentence ("..." neither, unless it ends the text)
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "cf.", "vs.", "approx.", "resp.", "incl.", "...")


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring, on one line, without ``markup`` or the final period.

    A sentence ends at ``.``, ``!`` or ``?`` followed by a space and a capital letter, a digit
    or nothing, except after an abbreviation or an ellipsis::

        >>> first_sentence("Enter it, e.g. ``torch.autocast``. Then more.")
        'Enter it, e.g. torch.autocast'
    """
    text = " ".join((doc or "").replace("``", "").split())
    for end in re.finditer(r"[.!?](?= |$)", text):
        rest = text[end.end() :].lstrip()
        word = text[: end.end()].rsplit(" ", 1)[-1].lstrip("(").lower()
        if rest and (word.endswith(_ABBREVIATIONS) or not (rest[0].isupper() or rest[0].isdigit())):
            continue
        text = text[: end.end()]
        break
    return text[:-1] if text.endswith(".") and not text.endswith("..") else text


def print_hooks(out: IO[str], name: str | None = None) -> int:
    """Print the hook table (or one hook's documentation); kinds are named as in the README."""
    if name is not None:
        if name not in specs.HOOKS:
            print(f"no hook named {name!r}; `pluglearn hooks` lists them all.", file=sys.stderr)
            return 1
        hook = specs.HOOKS[name]
        kind = specs.KIND_DOCS[hook.kind]
        print(f"{name}({', '.join(hook.args)})  [{kind.title}: {kind.meaning}]", file=out)
        print(
            textwrap.indent(inspect.cleandoc(getattr(specs, name).__doc__ or ""), "    "), file=out
        )
        return 0
    print(f"{'hook':<18} {'arguments':<22} {'kind':<10} when", file=out)
    for hook_name, info in specs.HOOKS.items():
        when = first_sentence(getattr(specs, hook_name).__doc__)
        title = specs.KIND_DOCS[info.kind].title
        print(f"{hook_name:<18} {', '.join(info.args):<22} {title:<10} {when}", file=out)
    print("\nkinds:", file=out)
    for kind in specs.KIND_DOCS.values():
        print(f"  {kind.title:<10} {kind.meaning}", file=out)
    print("`pluglearn hooks NAME` prints one hook's documentation.", file=out)
    return 0


def builtin_plugins() -> list[tuple[str, str, list[str]]]:
    """(class name, module, hooks) of every plugin class defined in ``pluglearn.plugins``."""
    from . import plugins as callbacks

    found = []
    for info in pkgutil.iter_modules(callbacks.__path__, prefix=f"{callbacks.__name__}."):
        module = importlib.import_module(info.name)
        for cls_name, cls in vars(module).items():
            if isinstance(cls, type) and cls.__module__ == module.__name__:
                hooks = hook_names(cls)
                if hooks and not cls_name.startswith("_"):
                    found.append((cls_name, module.__name__, hooks))
    return sorted(found)


def print_plugins(out: IO[str]) -> int:
    print("built-in (pluglearn.plugins):", file=out)
    for name, module, hooks in builtin_plugins():
        print(f"  {name:<22} {module}\n  {'':<22} hooks: {', '.join(hooks)}", file=out)
    installed = installed_plugins()
    print(
        f"\ninstalled (entry-point group '{PROJECT_NAME}'; ${DISABLE_ENV}, ${PLUGINS_ENV}, "
        f"${BLOCK_ENV} control them):",
        file=out,
    )
    if not installed:
        print("  none", file=out)
    failed = 0
    for plugin in installed:
        print(f"  {plugin.describe()}", file=out)
        try:
            print(f"  {'':<22} hooks: {', '.join(hook_names(plugin.load())) or '-'}", file=out)
        except PluginError as error:
            failed = 1
            print(f"  {'':<22} FAILED TO LOAD: {error}", file=out)
    return failed


def load_object(spec: str) -> object:
    """Import ``module:Object`` (``Object`` may be dotted); a class is made with no arguments."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"{spec!r} is not module:Object; write e.g. mypkg.plugins:GradNorm "
            "(the module to import, a colon, the plugin class or object in it)."
        )
    if os.getcwd() not in sys.path:  # `pluglearn check mine:Plugin` in the plugin's folder
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no {attr!r} (no attribute {part!r}).")
        obj = getattr(obj, part)
    if isinstance(obj, type):
        try:
            obj = obj()
        except TypeError as error:
            raise ValueError(
                f"{spec} is a class that cannot be made with no arguments ({error}); point to an "
                "instance instead (e.g. mypkg.plugins:DEFAULT = GradNorm(every=10))."
            ) from error
    return obj


def check(spec: str, out: IO[str], strict: bool) -> int:
    try:
        plugin = load_object(spec)
    except Exception as error:  # the plugin's own import may raise anything
        reason = f"{type(error).__name__}: {error}"
        print(f"pluglearn check: cannot load {spec}: {reason}", file=sys.stderr)
        return 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)
        try:
            PluginRegistry().add(plugin)
        except (PluginError, ValueError) as error:
            print(f"FAILED {spec}: {error}", file=sys.stderr)
            return 1
    problems = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    hooks = hook_names(plugin)
    if not hooks:  # registers, but no hook would ever call it
        label = plugin.__name__ if inspect.ismodule(plugin) else plugin_name(plugin)
        fix = " ".join(p.removeprefix(f"plugin {label}: ") for p in problems) or (
            "mark its hook methods with @hookimpl (from pluglearn import hookimpl); "
            "`pluglearn hooks` lists the hooks."
        )
        print(
            f"FAILED {spec}: {label} implements no hook, so pluglearn would never call it: {fix}",
            file=sys.stderr,
        )
        return 1
    for problem in problems:
        print(f"WARNING {spec}: {problem}", file=sys.stderr)
    if problems and strict:
        print(f"FAILED {spec}: warnings count as failures with --strict", file=sys.stderr)
        return 1
    print(f"OK {spec}: hooks {', '.join(hooks)}", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pluglearn", description="pluglearn's hooks and plugins, and a plugin check for CI."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    hooks = sub.add_parser("hooks", help="the hook reference, from pluglearn.hooks.specs")
    hooks.add_argument("name", nargs="?", help="print this hook's full documentation")
    sub.add_parser("plugins", help="built-in and installed plugins, with their hooks and origin")
    chk = sub.add_parser("check", help="run the registration guards on a plugin, without training")
    chk.add_argument("plugin", help="module:Object, e.g. mypkg.plugins:GradNorm")
    chk.add_argument("--strict", action="store_true", help="fail on warnings too")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pluglearn`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    out = sys.stdout
    try:
        if args.command == "hooks":
            return print_hooks(out, args.name)
        if args.command == "plugins":
            return print_plugins(out)
        return check(args.plugin, out, args.strict)
    except BrokenPipeError:  # `pluglearn hooks | head`: the reader left, nothing went wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # Ctrl-C, e.g. while an installed plugin imports: no traceback
        print("pluglearn: interrupted (it saves nothing: run it again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
