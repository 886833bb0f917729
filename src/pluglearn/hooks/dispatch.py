"""The dispatcher: the one place that calls hook implementations, by the kind of each hook.

Every hook call of pluglearn goes through a :class:`Dispatcher` built for one registry state. It
reads the kind of each hook from :data:`pluglearn.hooks.specs.HOOKS` and compiles one caller per
hook, so the semantics live here once:

- ``event``: every implementation in order; the first exception stops the rest.
- ``run_all`` (``cleanup_*``, ``on_error``): every implementation, even when some raise; then the
  first error is raised, the others attached to it as notes.
- ``first`` (steps): the first result other than ``None`` wins; the rest are not called.
- ``collect`` (``collect_metrics``, ``state_dict``): ``[(plugin name, answer), ...]`` of the
  implementations that answered.
- ``addressed`` (``load_state_dict``): each plugin receives its own part of ``state``.
- ``context`` (``forward_context``): one context manager entering every returned one (a single
  one is entered as it is, without an ``ExitStack``).

``@hookimpl(wrapper=True)`` implementations wrap the whole call, outermost first, and keep the
rules of its kind (a failing cleanup still lets the others run). The dispatcher knows which
implementation it is running, so an exception leaving one is tagged with it on the spot (a
``try`` costs nothing in Python 3.11 until something raises): :func:`origin_of` tells the notes
which plugin and hook raised. Hooks whose only argument is ``learn`` get a fast caller as an
attribute (``calls.before_batch(learn)``); a hook nobody implements is a no-op. Every compiled
caller takes one argument (``learn``, or the tuple of a hook's arguments), so the hot path packs
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any

from .specs import HOOKS

_ORIGIN = "_pluglearn_origin"


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


def mark_origin(error: BaseException, impl: Impl) -> None:
    """Tag ``error`` with the implementation it left, unless an inner one was tagged first."""
    if getattr(error, _ORIGIN, None) is None:
        with suppress(AttributeError):  # an exception type with __slots__ cannot carry the tag
            setattr(error, _ORIGIN, impl)


def origin_of(error: BaseException) -> Impl | None:
    """The hook implementation ``error`` was raised in (the innermost), or None."""
    return getattr(error, _ORIGIN, None)


def _noop(arg: Any) -> None:
    return None


def is_noop(call: Caller) -> bool:
    """True for the compiled call of a hook that no plugin implements: it cannot raise, so a
    ``wrap_hook_calls`` that only guards against what the hook raises may leave it bare."""
    return call is _noop


_NO_CONTEXT = nullcontext()

# Every compiled caller takes ONE argument: ``learn`` for the hooks whose only argument is
# ``learn`` (the hot path: no packing), else the tuple of the hook's arguments in spec order.
Caller = Callable[[Any], Any]
Pairs = list[tuple[Impl, Caller]]


def _adapt(impl: Impl, spec_args: tuple[str, ...]) -> Caller:
    """The implementation as a one-argument callable (see ``Caller``)."""
    function = impl.function
    if spec_args == ("learn",):
        return function if impl.argnames else lambda learn: function()
    if impl.argnames == spec_args:
        return lambda args: function(*args)
    where = [spec_args.index(a) for a in impl.argnames]
    return lambda args: function(*[args[i] for i in where])


def _event(pairs: Pairs) -> Caller:
    if not pairs:
        return _noop
    impls, fns = [i for i, _ in pairs], [f for _, f in pairs]
    if len(fns) == 1:
        impl, fn = pairs[0]

        def one(arg: Any) -> None:
            try:
                fn(arg)
            except BaseException as error:
                mark_origin(error, impl)
                raise

        return one

    def each(arg: Any) -> None:
        for fn in fns:
            try:
                fn(arg)
            except BaseException as error:  # the failing one is still bound to fn
                mark_origin(error, impls[fns.index(fn)])
                raise

    return each


def _first(pairs: Pairs) -> Caller:
    if not pairs:
        return _noop
    impls, fns = [i for i, _ in pairs], [f for _, f in pairs]
    if len(fns) == 1:  # the common case (a default provider alone): no loop
        impl, fn = pairs[0]

        def only(arg: Any) -> Any:
            try:
                return fn(arg)
            except BaseException as error:
                mark_origin(error, impl)
                raise

        return only

    def first(arg: Any) -> Any:
        for fn in fns:
            try:
                result = fn(arg)
            except BaseException as error:
                mark_origin(error, impls[fns.index(fn)])
                raise
            if result is not None:
                return result
        return None

    return first


def _run_all(pairs: Pairs) -> Caller:
    if not pairs:
        return _noop

    def every(arg: Any) -> None:
        first_error: BaseException | None = None
        for impl, fn in pairs:
            try:
                fn(arg)
            except BaseException as error:
                mark_origin(error, impl)
                if first_error is None:
                    first_error = error
                else:
                    first_error.add_note(
                        f"pluglearn: plugin {impl.plugin!r}, hook {impl.hook!r} also failed: "
                        f"{error!r}"
                    )
        if first_error is not None:
            raise first_error

    return every


def _collect(pairs: Pairs) -> Caller:
    def collect(arg: Any) -> list[tuple[str, Any]]:
        answers = []
        for impl, fn in pairs:
            try:
                result = fn(arg)
            except BaseException as error:
                mark_origin(error, impl)
                raise
            if result is not None:
                answers.append((impl.plugin, result))
        return answers

    return collect


def _addressed(pairs: Pairs) -> Caller:
    """``load_state_dict(learn, state)`` with ``state`` mapping plugin name -> its own part."""

    def addressed(args: tuple[Any, dict[str, Any]]) -> None:
        learn, state = args
        for impl, fn in pairs:
            if impl.plugin in state:
                try:
                    fn((learn, state[impl.plugin]))
                except BaseException as error:
                    mark_origin(error, impl)
                    raise

    return addressed


def _context(pairs: Pairs) -> Caller:
    if not pairs:
        return lambda arg: _NO_CONTEXT
    if len(pairs) == 1:  # the common case (autocast alone): no list, no loop
        impl, fn = pairs[0]

        def one_context(arg: Any) -> Any:
            try:
                cm = fn(arg)
            except BaseException as error:
                mark_origin(error, impl)
                raise
            return _NO_CONTEXT if cm is None else _Tagged(impl, cm)

        return one_context

    def contexts(arg: Any) -> Any:
        entered = []
        for impl, fn in pairs:
            try:
                cm = fn(arg)
            except BaseException as error:
                mark_origin(error, impl)
                raise
            if cm is not None:
                entered.append((impl, cm))
        if not entered:
            return _NO_CONTEXT
        if len(entered) == 1:  # the common case (autocast alone): no generator, no ExitStack
            return _Tagged(*entered[0])
        return _enter_all(entered)

    return contexts


class _Tagged:
    """One returned context manager, entered as it is; an error leaving its ``__enter__`` is
    tagged with the implementation that returned it (as :func:`_enter_all` does for several)."""

    __slots__ = ("cm", "impl")

    def __init__(self, impl: Impl, cm: Any) -> None:
        self.impl, self.cm = impl, cm

    def __enter__(self) -> Any:
        try:
            return self.cm.__enter__()
        except BaseException as error:
            mark_origin(error, self.impl)
            raise

    def __exit__(self, *exc_info: Any) -> Any:
        return self.cm.__exit__(*exc_info)


@contextmanager
def _enter_all(contexts: list[tuple[Impl, Any]]) -> Iterator[None]:
    with ExitStack() as stack:
        for impl, cm in contexts:
            try:
                stack.enter_context(cm)
            except BaseException as error:
                mark_origin(error, impl)
                raise
        yield


_KINDS: dict[str, Callable[[Pairs], Caller]] = {
    "event": _event,
    "first": _first,
    "run_all": _run_all,
    "collect": _collect,
    "addressed": _addressed,
    "context": _context,
}


def _wrap(wrappers: Pairs, inner: Caller) -> Caller:
    """``inner`` inside new-style wrappers (generators), the first one outermost."""

    def wrapped(arg: Any) -> Any:
        entered: list[tuple[Impl, Generator[None, Any, Any]]] = []
        error: BaseException | None = None
        result: Any = None
        try:
            for impl, fn in wrappers:
                try:
                    gen = fn(arg)
                    next(gen)
                except StopIteration:
                    raise RuntimeError(
                        f"plugin {impl.plugin!r}: the wrapper {impl.hook!r} returned without "
                        "yielding: a wrapper must `result = yield` exactly once."
                    ) from None
                except BaseException as raised:
                    mark_origin(raised, impl)
                    raise
                entered.append((impl, gen))
            result = inner(arg)
        except BaseException as raised:
            error = raised
        for impl, gen in reversed(entered):
            try:
                if error is not None:
                    gen.throw(error)
                else:
                    gen.send(result)
            except StopIteration as stop:
                result, error = stop.value, None
            except BaseException as raised:
                if raised is not error:
                    mark_origin(raised, impl)
                error = raised
            else:
                error = RuntimeError(
                    f"plugin {impl.plugin!r}: the wrapper {impl.hook!r} yielded twice: a wrapper "
                    "must `result = yield` exactly once, then return the result."
                )
        if error is not None:
            raise error
        return result

    return wrapped


Instrument = Callable[[Impl, Caller], Caller]
#: a plugin's ``wrap_hook_calls(hook, call)``: the whole compiled call of a hook, wrapped
CallWrapper = Callable[[str, Caller], Caller]


class Dispatcher:
    """The compiled callers of one registry state: ``calls.before_batch(learn)``,
    ``calls.call("report", learn=learn, metrics=m)``, ``calls.impls["after_loss"]``."""

    # The fast callers of the hooks whose only argument is ``learn``, set in __init__; declared
    # here so a type checker knows them (and flags a misspelled one). tests/test_typing.py keeps
    # this list equal to those hooks of HOOKS.
    after_create_opt: Caller
    before_fit: Caller
    after_fit: Caller
    cleanup_fit: Caller
    before_epoch: Caller
    after_epoch: Caller
    cleanup_epoch: Caller
    before_train: Caller
    after_train: Caller
    cleanup_train: Caller
    before_validate: Caller
    after_validate: Caller
    cleanup_validate: Caller
    before_batch: Caller
    after_pred: Caller
    after_loss: Caller
    after_backward: Caller
    before_step: Caller
    after_step: Caller
    after_batch: Caller
    cleanup_batch: Caller
    predict: Caller
    compute_loss: Caller
    should_step: Caller
    forward_context: Caller
    backward: Caller
    step: Caller
    zero_grad: Caller
    state_dict: Caller

    def __init__(
        self,
        impls: dict[str, list[Impl]],
        instrument: Instrument | None = None,
        wrap_calls: CallWrapper | None = None,
    ) -> None:
        self.impls = impls
        #: some plugin answers forward_context (else the loop skips entering a null context)
        self.wraps_forward = bool(impls.get("forward_context"))
        self._callers: dict[str, Caller] = {}
        #: the hooks whose whole call a plugin's ``wrap_hook_calls`` wrapped
        self.wrapped_calls: list[str] = []
        for hook, spec in HOOKS.items():
            pairs: Pairs = []
            wrappers: Pairs = []
            for impl in impls.get(hook, []):
                fn = _adapt(impl, spec.args)
                if instrument is not None:
                    fn = instrument(impl, fn)
                (wrappers if impl.wrapper else pairs).append((impl, fn))
            caller = _KINDS[spec.kind](pairs)
            if wrappers:
                caller = _wrap(wrappers, caller)
            if wrap_calls is not None:
                bare, caller = caller, wrap_calls(hook, caller)
                if caller is not bare:
                    self.wrapped_calls.append(hook)
            self._callers[hook] = caller
            if spec.args == ("learn",):
                setattr(self, hook, caller)

    def call(self, hook: str, **kwargs: Any) -> Any:
        """Call ``hook`` with its arguments by keyword; the result follows the hook's kind."""
        try:
            spec, caller = HOOKS[hook], self._callers[hook]
        except KeyError:
            raise KeyError(f"no hook named {hook!r}; see pluglearn.hooks.specs") from None
        missing = [a for a in spec.args if a not in kwargs]
        extra = [k for k in kwargs if k not in spec.args]
        if missing or extra:
            raise TypeError(
                f"hook {hook!r} takes {', '.join(spec.args)} by keyword; missing: {missing}, "
                f"unexpected: {extra}."
            )
        if spec.args == ("learn",):
            return caller(kwargs["learn"])
        return caller(tuple(kwargs[a] for a in spec.args))

    def implemented(self, hook: str) -> bool:
        """True when some plugin implements ``hook``."""
        return bool(self.impls.get(hook))
