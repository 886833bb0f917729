"""The plugin registry: the Learner's ordered plugins, mirrored into a pluggy manager.

pluggy calls the *last* registered implementation first (and, within ``trylast``, the first).
pluglearn wants ``plugins=[a, b]`` to run ``a`` then ``b`` for every hook, so the registry keeps
its own ordered list, registers it into a fresh ``pluggy.PluginManager`` whenever the list changes
(pluggy validates the implementations against the specs), reads each hook's implementations
through pluggy's public ``get_hookimpls()`` and orders them itself into ``tryfirst`` / plain /
``trylast`` groups, list order within each group. Nothing is written into pluggy's state, and
nothing calls pluggy's hook callers: the :class:`~.dispatch.Dispatcher` does every call.
Registration is rare; hook calls happen a dozen times a batch. Guards live in :mod:`.guards`.

The registry extension points (``wrap_hook_calls``, ``instrument_hooks``: declared in
:mod:`.specs`, checked by :mod:`.guards`) are read from the plugins that implement them with
``@hookimpl``, and kept out of pluggy, which knows only hooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pluggy

from . import specs
from .dispatch import Dispatcher, Impl
from .guards import check_plugin, plugin_name
from .markers import PROJECT_NAME
from .specs import EXTENSION_POINTS, HOOKS


class _Manager(pluggy.PluginManager):
    """pluggy's manager, blind to the registry extension points (they are no hooks)."""

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        if name in EXTENSION_POINTS:
            return None
        return super().parse_hookimpl_opts(plugin, name)


def implements(plugin: object, point: str) -> bool:
    """True when ``plugin`` implements the registry extension point ``point`` (with
    ``@hookimpl``, as :mod:`.guards` checked)."""
    method = getattr(plugin, point, None)
    return callable(method) and getattr(method, f"{PROJECT_NAME}_impl", None) is not None


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

    def _rebuild(self) -> Dispatcher:
        pm = _Manager(PROJECT_NAME)
        pm.add_hookspecs(specs)
        for plugin, name in zip(self._plugins, self._names, strict=True):
            pm.register(plugin, name=name)
        pm.check_pending()
        position = {name: i for i, name in enumerate(self._names)}

        def order(impl: Any) -> tuple[int, int]:
            group = 0 if impl.tryfirst else 2 if impl.trylast else 1
            return group, position[impl.plugin_name]

        impls = {
            hook: [
                Impl(
                    plugin=i.plugin_name,
                    hook=hook,
                    function=i.function,
                    argnames=tuple(i.argnames),
                    tryfirst=i.tryfirst,
                    trylast=i.trylast,
                    wrapper=i.wrapper,
                )
                for i in sorted(getattr(pm.hook, hook).get_hookimpls(), key=order)
            ]
            for hook in HOOKS
        }
        instrument, wrap_calls = self._chained("instrument_hooks"), self._chained("wrap_hook_calls")
        return Dispatcher(impls, instrument, wrap_calls)

    def _chained(self, point: str) -> Any:
        """The registry extension point ``point`` of every registered plugin implementing it,
        composed in registration order (the last one outermost); None when there is none, so
        a Learner without such a plugin compiles the bare callers.

        ``instrument_hooks(impl, fn)`` wraps each implementation (the
        :class:`~pluglearn.plugins.profiler.Profiler`); ``wrap_hook_calls(hook, call)`` wraps
        the whole call of a hook, wrappers included (:class:`~pluglearn.distributed.ddp.DDP`)."""
        if point not in EXTENSION_POINTS:
            raise KeyError(f"{point!r} is no registry extension point: {list(EXTENSION_POINTS)}")
        found = [getattr(p, point) for p in self._plugins if implements(p, point)]
        if len(found) <= 1:
            return found[0] if found else None

        def chained(key: Any, fn: Any) -> Any:
            for wrap in found:
                fn = wrap(key, fn)
            return fn

        return chained

    def describe(self) -> str:
        """The resolved call order of every hook, one line each."""
        lines = []
        wrappers = [
            name
            for p, name in zip(self._plugins, self._names, strict=True)
            if implements(p, "wrap_hook_calls")
        ]
        for hook, impls in self.calls.impls.items():
            kind = HOOKS[hook].kind
            tags = [] if kind == "event" else [{"first": "first result wins"}.get(kind, kind)]
            if hook in self.calls.wrapped_calls:
                tags.append(f"whole call wrapped by {', '.join(wrappers)}")
            names = [
                i.plugin
                + (" (wrapper)" if i.wrapper else "")
                + (" (tryfirst)" if i.tryfirst else " (trylast)" if i.trylast else "")
                for i in impls
            ]
            suffix = f"  [{', '.join(tags)}]" if tags else ""
            lines.append(f"{hook:<18} {' -> '.join(names) or '-'}{suffix}")
        return "\n".join(lines)
