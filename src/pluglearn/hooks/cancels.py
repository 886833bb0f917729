"""May a hook implementation raise a ``CancelXException``? Derived from its code, not declared.

Under ``DDP`` the ranks agree on cancels only where some plugin may raise one (each agreement is
a collective), so the registry needs to know which implementations may cancel. It reads their
code: an implementation may cancel when its code, or the code of what it calls that pluglearn
can follow, refers to a cancel exception (``CancelFitException``, ... or ``CancelException``,
by any name bound to them) or to ``learn.run.stop``. It follows:

* the functions and lambdas defined inside it (nested code objects);
* module-level functions of its own module that it names (``_stop(learn)``), recursively;
* methods of its plugin's class (and base classes) that it names (``self._cancel(learn)``);
* functions in its closure.

Calls to anything else (torch, another module, ``learn.loss_func``) are taken not to cancel:
following every call would find a possible cancel everywhere. Where it cannot read code at
all (a builtin or a callable object as the implementation) it answers "may cancel".

A plugin whose cancel this cannot see (raised by a helper from another module) declares it once
with the class attribute ``may_cancel = True``; ``may_cancel = False`` says the opposite for a
plugin whose code names a cancel it never raises. A plugin judged unable to cancel that cancels
anyway is refused by ``DDP`` with an error naming it and this attribute.

>>> from pluglearn import EarlyStopping, ProgressBar
>>> plugin_may_cancel(EarlyStopping()), plugin_may_cancel(ProgressBar())
(True, False)
"""

from __future__ import annotations

import builtins
import inspect
import types
from typing import Any

from .. import exceptions
from ..exceptions import CancelException
from .markers import PROJECT_NAME

#: the class attribute a plugin sets to say whether it may cancel, overriding the derivation
DECLARATION = "may_cancel"


def _is_cancel(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, CancelException)


def _codes(code: types.CodeType) -> list[types.CodeType]:
    """``code`` and every code object defined inside it (functions, lambdas, comprehensions)."""
    found, todo = [], [code]
    while todo:
        one = todo.pop()
        found.append(one)
        todo += [c for c in one.co_consts if isinstance(c, types.CodeType)]
    return found


def _plain(function: Any) -> Any:
    function = inspect.unwrap(getattr(function, "__func__", function))
    return function if isinstance(function, types.FunctionType) else None


def _class_functions(cls: type | None, name: str) -> Any:
    """The plain function ``name`` of ``cls`` or a base class (a method, static or class
    method, or a property's getter), or None."""
    if cls is None:
        return None
    for klass in cls.__mro__:
        if name in vars(klass):
            value = vars(klass)[name]
            if isinstance(value, property):
                value = value.fget
            return _plain(value)
    return None


def function_may_cancel(function: Any, cls: type | None = None) -> bool:
    """Whether ``function`` (a hook implementation of a plugin of class ``cls``) may raise a
    cancel, as the module doc derives it."""
    start = _plain(function)
    if start is None:
        return True  # no code to read: a builtin, a callable object
    seen: set[types.CodeType] = set()
    todo = [start]
    while todo:
        fn = todo.pop()
        if fn.__code__ in seen:
            continue
        seen.add(fn.__code__)
        module = fn.__module__
        bound = dict(vars(builtins))
        bound.update(fn.__globals__)
        for cell_name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
            try:
                bound[cell_name] = cell.cell_contents
            except ValueError:  # an empty cell
                continue
        for code in _codes(fn.__code__):
            names = {*code.co_names, *code.co_freevars}
            if "stop" in names and "run" in names:  # learn.run.stop(reason)
                return True
            for name in names:
                value = bound.get(name)
                if _is_cancel(value) or name in _CANCEL_NAMES:
                    return True
                helper = _plain(value) if callable(value) else None
                if helper is not None and helper.__module__ == module:
                    todo.append(helper)
                method = _class_functions(cls, name)
                if method is not None:
                    todo.append(method)
    return False


#: the cancels' own names: ``pluglearn.CancelFitException`` names one as an attribute
_CANCEL_NAMES = {name for name, value in vars(exceptions).items() if _is_cancel(value)}


def declared(plugin: object) -> bool | None:
    """The plugin's own ``may_cancel`` (True or False), or None when it does not declare it."""
    value = getattr(type(plugin), DECLARATION, None)
    return value if isinstance(value, bool) else None


def plugin_may_cancel(plugin: object, hooks: tuple[str, ...] | None = None) -> bool:
    """Whether ``plugin`` may raise a cancel from one of ``hooks`` (all its hooks when None):
    its declaration, else derived from the code of its implementations (see the module doc)."""
    said = declared(plugin)
    if said is not None:
        return said
    cls = type(plugin)
    for name in dir(cls):
        method = getattr(plugin, name, None)
        if getattr(method, f"{PROJECT_NAME}_impl", None) is None:
            continue
        if (hooks is None or name in hooks) and _cached(cls, name, method):
            return True
    return False


_CACHE: dict[tuple[type, str], bool] = {}


def _cached(cls: type, name: str, method: Any) -> bool:
    """:func:`function_may_cancel` once per class and hook (registration is rare, but a
    Learner rebuilds its dispatcher for every plugin added)."""
    key = (cls, name)
    if key not in _CACHE:
        _CACHE[key] = function_may_cancel(method, cls)
    return _CACHE[key]


def impl_may_cancel(impl: Any) -> bool:
    """Whether the hook implementation ``impl`` (a :class:`~.dispatch.Impl`) may cancel."""
    plugin = getattr(impl.function, "__self__", None)
    if plugin is None:
        return function_may_cancel(impl.function)
    said = declared(plugin)
    if said is not None:
        return said
    return _cached(type(plugin), impl.hook, impl.function)
