"""The plugin registry: guards at registration, list order, and a fast dispatcher over pluggy.

pluggy calls the *last* registered implementation first (and, within ``trylast``, the first).
pluglearn wants ``plugins=[a, b]`` to run ``a`` then ``b`` for every hook, so the registry keeps
its own ordered list, registers it into a fresh ``pluggy.PluginManager`` whenever the list changes,
and sorts each hook's implementations into ``tryfirst`` / plain / ``trylast`` groups, list order
within each group. Registration is rare; hook calls happen a dozen times a batch.

Dispatch: pluggy spends about a microsecond per hook call. For hooks whose only argument is
``learn`` and whose implementations have no wrappers, :class:`HookCalls` calls the implementations
directly in pluggy's resolved order, and a hook with no implementation is a no-op. Hooks with
wrappers fall back to pluggy's own call. Semantics stay pluggy's: same order, first result wins
for steps, the first exception stops the remaining implementations (except for ``cleanup_*`` and
``on_error``, where pluglearn runs every implementation, then raises the first error).
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import CodeType
from typing import Any

import pluggy

from . import specs
from .markers import PROJECT_NAME


class PluginError(TypeError):
    """A plugin breaks the contract; raised at registration, naming the plugin, hook and fix."""


class PluginWarning(UserWarning):
    """A plugin looks wrong but may be intended (a hook-like method without ``@hookimpl``)."""


def _spec_table() -> dict[str, tuple[tuple[str, ...], bool]]:
    table = {}
    for name, fn in vars(specs).items():
        opts = getattr(fn, f"{PROJECT_NAME}_spec", None)
        if opts is not None:
            table[name] = (tuple(inspect.signature(fn).parameters), bool(opts["firstresult"]))
    return table


#: hook name -> (argument names, first result wins)
HOOKS: dict[str, tuple[tuple[str, ...], bool]] = _spec_table()
#: hooks whose every implementation runs even when one raises
RUN_ALL_HOOKS = frozenset(h for h in HOOKS if h.startswith("cleanup_") or h == "on_error")


def plugin_name(plugin: object) -> str:
    """A plugin's display name: its ``plugin_name`` attribute when set, else its class name."""
    name = getattr(plugin, "plugin_name", None)
    return name if isinstance(name, str) and name else type(plugin).__name__


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def check_plugin(plugin: object, registered: list[object]) -> None:
    """Raise :class:`PluginError` (or warn) if ``plugin`` cannot join ``registered``."""
    if isinstance(plugin, type):
        raise PluginError(
            f"{plugin.__name__} is a class, not a plugin instance: pass {plugin.__name__}() "
            "(forgot the ()?)."
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
        if attr not in HOOKS:
            raise PluginError(
                f"plugin {label}: '{attr}' is marked @hookimpl but no hook has that name, so it "
                f"would never run.{_did_you_mean(attr)} The hooks are listed in "
                "pluglearn.plugins.specs."
            )
        allowed = HOOKS[attr][0]
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


def _warn_if_hook_like(label: str, attr: str) -> None:
    if attr.startswith("_"):
        return
    if attr in HOOKS:
        message = f"'{attr}' is named like a hook but lacks @hookimpl, so it never runs"
    else:
        close = difflib.get_close_matches(attr, HOOKS, n=1, cutoff=0.85)
        if not close:
            return
        message = f"'{attr}' lacks @hookimpl and looks like a misspelled '{close[0]}'"
    warnings.warn(
        f"plugin {label}: {message}: decorate it with @hookimpl (from pluglearn import hookimpl).",
        PluginWarning,
        stacklevel=4,
    )


@dataclass(frozen=True)
class Impl:
    """One implementation of one hook, as resolved for calling."""

    plugin: str
    hook: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    tryfirst: bool
    trylast: bool
    wrapper: bool

    def call(self, kwargs: dict[str, Any]) -> Any:
        return self.function(*(kwargs[a] for a in self.argnames))


def _noop(learn: Any) -> None:
    return None


def _learn_caller(impl: Impl) -> Callable[[Any], Any]:
    if impl.argnames == ("learn",):
        return impl.function
    function = impl.function
    return lambda learn: function()  # an implementation may take no argument at all


class HookCalls:
    """Callers for every hook of one registry state: ``calls.before_batch(learn)``, ..."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.impls: dict[str, list[Impl]] = {}
        self.code_owner: dict[CodeType, list[Impl]] = {}
        for hook, (argnames, firstresult) in HOOKS.items():
            caller = getattr(pm.hook, hook)
            impls = [
                Impl(
                    plugin=i.plugin_name,
                    hook=hook,
                    function=i.function,
                    argnames=tuple(i.argnames),
                    tryfirst=i.tryfirst,
                    trylast=i.trylast,
                    wrapper=i.hookwrapper or i.wrapper,
                )
                for i in reversed(caller.get_hookimpls())  # pluggy calls the list back to front
            ]
            self.impls[hook] = impls
            for impl in impls:
                code = getattr(getattr(impl.function, "__func__", impl.function), "__code__", None)
                if code is not None:  # generated methods may share one code object
                    self.code_owner.setdefault(code, []).append(impl)
            if argnames == ("learn",):
                setattr(self, hook, self._fast(impls, firstresult, hook in RUN_ALL_HOOKS, caller))

    @staticmethod
    def _fast(
        impls: list[Impl], firstresult: bool, run_all: bool, caller: Any
    ) -> Callable[[Any], Any]:
        if any(i.wrapper for i in impls):
            return lambda learn: caller(learn=learn)
        fns = [_learn_caller(i) for i in impls]
        if not fns:
            return _noop
        if len(fns) == 1:
            return fns[0]
        if run_all:

            def every(learn: Any) -> None:
                first_error: Exception | None = None
                for fn in fns:
                    try:
                        fn(learn)
                    except Exception as error:
                        first_error = first_error or error
                if first_error is not None:
                    raise first_error

            return every
        if firstresult:

            def first(learn: Any) -> Any:
                for fn in fns:
                    result = fn(learn)
                    if result is not None:
                        return result
                return None

            return first

        def each(learn: Any) -> None:
            for fn in fns:
                fn(learn)

        return each

    def call(self, hook: str, **kwargs: Any) -> Any:
        """Call any hook through pluggy (results as pluggy returns them)."""
        return getattr(self.pm.hook, hook)(**kwargs)

    def call_each(self, hook: str, **kwargs: Any) -> Iterator[tuple[Impl, Any]]:
        """Yield ``(impl, result)`` for every implementation, in call order."""
        for impl in self.impls[hook]:
            yield impl, impl.call(kwargs)

    def call_all(self, hook: str, **kwargs: Any) -> None:
        """Run every implementation even if some raise; then raise the first error."""
        impls = self.impls[hook]
        if any(i.wrapper for i in impls):
            self.call(hook, **kwargs)
            return
        first_error: Exception | None = None
        for impl in impls:
            try:
                impl.call(kwargs)
            except Exception as error:
                if first_error is None:
                    first_error = error
        if first_error is not None:
            raise first_error

    def owner_of(self, error: BaseException) -> list[Impl]:
        """The innermost hook implementation on ``error``'s traceback (several candidates when
        one function implements several hooks), or an empty list."""
        owner: list[Impl] = []
        tb = error.__traceback__
        while tb is not None:
            owner = self.code_owner.get(tb.tb_frame.f_code, owner)
            tb = tb.tb_next
        return owner


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

    def name_of(self, plugin: object) -> str:
        return self._names[self._index(plugin)]

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
