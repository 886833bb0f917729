"""The plugin registry: the Learner's ordered plugins, mirrored into a pluggy manager.

pluggy calls the *last* registered implementation first (and, within ``trylast``, the first).
pluglearn wants ``plugins=[a, b]`` to run ``a`` then ``b`` for every hook, so the registry keeps
its own ordered list, registers it into a fresh ``pluggy.PluginManager`` whenever the list changes,
and sorts each hook's implementations into ``tryfirst`` / plain / ``trylast`` groups, list order
within each group. Registration is rare; hook calls happen a dozen times a batch. Guards live in
:mod:`.guards`, the fast callers in :mod:`.dispatch`.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import specs
from .dispatch import HookCalls, Impl
from .guards import (
    HOOKS,
    RUN_ALL_HOOKS,
    PluginError,
    PluginWarning,
    check_plugin,
    plugin_name,
)
from .markers import PROJECT_NAME

__all__ = [
    "HOOKS",
    "RUN_ALL_HOOKS",
    "HookCalls",
    "Impl",
    "PluginError",
    "PluginRegistry",
    "PluginWarning",
    "check_plugin",
    "load_entry_point_plugins",
    "plugin_name",
]


class PluginRegistry:
    """The ordered plugins of one Learner, mirrored into a pluggy manager."""

    def __init__(self) -> None:
        self._plugins: list[object] = []
        self._names: list[str] = []
        self.calls = self._rebuild()

    def __iter__(self) -> Iterator[object]:
        return iter(list(self._plugins))

    def __len__(self) -> int:
        return len(self._plugins)

    def __contains__(self, plugin: object) -> bool:
        return any(p is plugin for p in self._plugins)

    def get(self, name: str) -> object:
        """The plugin registered under ``name``."""
        if name not in self._names:
            raise KeyError(f"no plugin named {name!r}; registered: {', '.join(self._names)}")
        return self._plugins[self._names.index(name)]

    def add(self, plugin: object, index: int | None = None) -> str:
        """Register ``plugin`` (at the end, or at ``index``); returns its unique name."""
        check_plugin(plugin, self._plugins)
        base = plugin_name(plugin)
        name, n = base, 2
        while name in self._names:
            name, n = f"{base}_{n}", n + 1
        at = len(self._plugins) if index is None else index
        self._plugins.insert(at, plugin)
        self._names.insert(at, name)
        try:
            self.calls = self._rebuild()
        except Exception:
            del self._plugins[at], self._names[at]
            self.calls = self._rebuild()
            raise
        return name

    def remove(self, plugin: object | str) -> object:
        """Unregister a plugin given as the object or its name; returns the plugin."""
        at = (
            self._names.index(plugin) if isinstance(plugin, str) and plugin in self._names else None
        )
        if at is None:
            at = self._index(plugin)
        removed = self._plugins.pop(at)
        del self._names[at]
        self.calls = self._rebuild()
        return removed

    def _index(self, plugin: object) -> int:
        for i, p in enumerate(self._plugins):
            if p is plugin:
                return i
        raise ValueError(
            f"plugin {plugin!r} is not registered; registered: {', '.join(self._names)}"
        )

    def _rebuild(self) -> HookCalls:
        pm = pluggy.PluginManager(PROJECT_NAME)
        pm.add_hookspecs(specs)
        for plugin, name in zip(reversed(self._plugins), reversed(self._names), strict=True):
            pm.register(plugin, name=name)
        pm.check_pending()
        self._order_hooks(pm)
        return HookCalls(pm)

    def _order_hooks(self, pm: pluggy.PluginManager) -> None:
        """Put every hook's implementations in (tryfirst, plain, trylast) x list order.

        pluggy calls plain and tryfirst implementations last-registered-first but trylast ones
        first-registered-first, so no single registration order gives list order in all three
        groups; the registry sorts pluggy's list itself (kept back to front, as pluggy calls it).
        """
        position = {name: i for i, name in enumerate(self._names)}

        def key(impl: Any) -> tuple[int, int]:
            group = 0 if impl.tryfirst else 2 if impl.trylast else 1
            return group, position[impl.plugin_name]

        for hook in HOOKS:
            caller = getattr(pm.hook, hook)
            impls = caller.get_hookimpls()
            plain = sorted((i for i in impls if not (i.hookwrapper or i.wrapper)), key=key)
            wrappers = sorted((i for i in impls if i.hookwrapper or i.wrapper), key=key)
            caller._hookimpls[:] = [*reversed(plain), *reversed(wrappers)]

    def describe(self) -> str:
        """The resolved call order of every hook, one line each."""
        lines = []
        for hook, impls in self.calls.impls.items():
            tags = ["first result wins"] if HOOKS[hook][1] else []
            names = [
                i.plugin + (" (tryfirst)" if i.tryfirst else " (trylast)" if i.trylast else "")
                for i in impls
            ]
            suffix = f"  [{', '.join(tags)}]" if tags else ""
            lines.append(f"{hook:<18} {' -> '.join(names) or '-'}{suffix}")
        return "\n".join(lines)


def load_entry_point_plugins(group: str = "pluglearn") -> list[object]:
    """Plugins advertised by installed packages under the entry-point ``group``.

    A package exposes one with ``[project.entry-points.pluglearn] name = "pkg.module:Plugin"``;
    a class is instantiated without arguments, any other object is used as is.
    """
    found = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        obj = ep.load()
        found.append(obj() if isinstance(obj, type) else obj)
    return found
