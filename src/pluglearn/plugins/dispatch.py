"""Fast dispatch: one caller per hook, calling the implementations in pluggy's resolved order.

pluggy spends about a microsecond per hook call. For hooks whose only argument is ``learn`` and
whose implementations have no wrappers, :class:`HookCalls` calls the implementations directly,
and a hook with no implementation is a no-op. Hooks with wrappers fall back to pluggy's own call.
Semantics stay pluggy's: same order, first result wins for steps, the first exception stops the
remaining implementations (except for ``cleanup_*`` and ``on_error``, where every implementation
runs, then the first error is raised).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import CodeType
from typing import Any

import pluggy

from .guards import HOOKS, RUN_ALL_HOOKS


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
