"""Guards at registration: each refusal names the plugin, the hook and the fix.

Checked before pluggy sees a plugin: a function or a class instead of an instance ("forgot the
()?"), the same object twice, two equal ``@dataclass`` plugins (pluggy compares plugins with
``==``), ``@hookimpl`` on a name that is neither a hook nor a registry extension point (with a
did-you-mean), an argument the hook does not provide, an extension point (``wrap_hook_calls``,
``instrument_hooks``: :data:`~.specs.EXTENSION_POINTS`) with other arguments than declared or
with an ordering option. A method named like a hook or an extension point, within a typo of a
hook, or named like another framework's hook (``on_train_batch_end``), that lacks ``@hookimpl``
only warns.
"""

from __future__ import annotations

import difflib
import inspect
import types
import warnings
from collections.abc import Callable
from typing import Any

from .foreign_names import COMMON_METHOD_NAMES, suggest
from .markers import PROJECT_NAME
from .specs import EXTENSION_POINTS, HOOKS


class PluginError(TypeError):
    """A plugin breaks the contract; raised at registration, naming the plugin, hook and fix."""


class PluginWarning(UserWarning):
    """A plugin looks wrong but may be intended (a hook-like method without ``@hookimpl``)."""


def plugin_name(plugin: object) -> str:
    """A plugin's display name: its ``plugin_name`` attribute when set, else its class name (a
    module's own name for a module registered as a plugin, not ``module``)."""
    name = getattr(plugin, "plugin_name", None)
    if isinstance(name, str) and name:
        return name
    return plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__name__


def _did_you_mean(name: str) -> str:
    foreign = suggest(name)  # fastai / Lightning / Keras names: the real equivalent
    if foreign:
        return f" {foreign}"
    close = difflib.get_close_matches(name, [*HOOKS, *EXTENSION_POINTS], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def check_plugin(plugin: object, registered: list[object]) -> None:
    """Raise :class:`PluginError` (or warn) if ``plugin`` cannot join ``registered``."""
    if isinstance(plugin, type):
        raise PluginError(
            f"{plugin.__name__} is a class, not a plugin instance: pass {plugin.__name__}() "
            "(forgot the ()?)."
        )
    if inspect.isroutine(plugin):  # plugins=[log_loss]: pluggy would register it and call nothing
        name = getattr(plugin, "__qualname__", None) or repr(plugin)
        raise PluginError(
            f"{name} is a function, not a plugin: a plugin is an instance of a class whose methods "
            "carry @hookimpl and are named after hooks, e.g. `class LogLoss:` with `@hookimpl` "
            "on `def after_batch(self, learn): ...`, passed as plugins=[LogLoss()]. "
            "`pluglearn hooks` lists the hooks."
        )
    label = plugin_name(plugin)
    for other in registered:
        if other is plugin:
            raise PluginError(
                f"plugin {label} is already registered: remove it first, or create a second "
                f"instance ({type(plugin).__name__}(...)) if you want it twice."
            )
        if type(other) is type(plugin) and other == plugin:
            raise PluginError(
                f"plugin {label} compares equal to the registered {plugin_name(other)}, and pluggy "
                "cannot hold two equal plugins (a @dataclass compares by value): declare it "
                "with @dataclass(eq=False)."
            )
    impl_attr = f"{PROJECT_NAME}_impl"
    for attr in dir(plugin):
        if attr.startswith("__"):
            continue
        try:
            value = inspect.getattr_static(plugin, attr)
        except AttributeError:
            continue
        func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if not callable(func):
            continue
        if getattr(func, impl_attr, None) is None:
            _warn_if_hook_like(label, attr)
            continue
        opts = getattr(func, impl_attr)
        if attr in EXTENSION_POINTS:
            _check_extension_point(label, attr, getattr(plugin, attr), opts)
            continue
        if attr not in HOOKS:
            raise PluginError(
                f"plugin {label}: '{attr}' is marked @hookimpl but no hook or registry extension "
                f"point has that name, so it would never run.{_did_you_mean(attr)} The hooks "
                "and extension points are listed in pluglearn.hooks.specs."
            )
        if opts.get("hookwrapper"):
            raise PluginError(
                f"plugin {label}: '{attr}' uses the old-style @hookimpl(hookwrapper=True), which "
                "pluglearn does not call: use @hookimpl(wrapper=True), a generator whose "
                "`result = yield` receives the hook's result (or raises its exception), and "
                "which returns the result."
            )
        allowed = HOOKS[attr].args
        bound = getattr(plugin, attr)
        params = [
            p.name
            for p in inspect.signature(bound).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        extra = [p for p in params if p not in allowed]
        if extra:
            raise PluginError(
                f"plugin {label}: hook '{attr}' has argument(s) {', '.join(map(repr, extra))} that "
                f"the hook does not provide; it provides {', '.join(allowed)}. Rename or remove "
                "them (hooks are called by keyword)."
            )


def _check_extension_point(
    label: str, attr: str, bound: Callable[..., Any], opts: dict[str, Any]
) -> None:
    """A registry extension point takes exactly its declared arguments (the registry passes
    them by position) and no ordering option (every one is composed in registration order)."""
    declared = EXTENSION_POINTS[attr]
    params = tuple(inspect.signature(bound).parameters)
    if params != declared:
        raise PluginError(
            f"plugin {label}: the registry extension point '{attr}' takes "
            f"({', '.join(declared)}), but it is defined with ({', '.join(params)}): the "
            f"registry calls it as {attr}({', '.join(declared)}). Define "
            f"`def {attr}(self, {', '.join(declared)})` (see pluglearn.hooks.specs.{attr})."
        )
    ordering = [o for o in ("tryfirst", "trylast", "wrapper", "hookwrapper") if opts.get(o)]
    if ordering:
        raise PluginError(
            f"plugin {label}: the registry extension point '{attr}' is marked "
            f"@hookimpl({ordering[0]}=True), which does not apply to it: every plugin's "
            f"{attr} is composed in registration order (the last registered outermost). Use "
            "a plain @hookimpl, and register the plugins in the order you need."
        )


def _warn_if_hook_like(label: str, attr: str) -> None:
    if attr.startswith("_"):
        return
    mark = "decorate it with @hookimpl (from pluglearn import hookimpl)."
    foreign = suggest(attr) if attr not in COMMON_METHOD_NAMES else None
    if attr in EXTENSION_POINTS:
        message = (
            f"'{attr}' is named like a registry extension point but lacks @hookimpl, so the "
            f"registry never calls it: {mark}"
        )
    elif attr in HOOKS:
        message = f"'{attr}' is named like a hook but lacks @hookimpl, so it never runs: {mark}"
    elif foreign:  # a ported plugin: name the hook that does its job, not a near spelling
        message = f"{foreign} Without @hookimpl it never runs: rename it to that hook and {mark}"
    elif close := difflib.get_close_matches(attr, HOOKS, n=1, cutoff=0.85):
        message = f"'{attr}' lacks @hookimpl and looks like a misspelled '{close[0]}': {mark}"
    else:
        return
    warnings.warn(f"plugin {label}: {message}", PluginWarning, stacklevel=4)
