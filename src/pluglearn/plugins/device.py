"""Device: where a Learner trains. Every Learner has one, on the best device the machine has.

Example::

    learn = Learner(model, dls)                  # cuda when present, else mps, else cpu
    learn.device                                 # device(type='cuda')
    learn = Learner(model, dls, device="cpu")    # forced
    learn = Learner(model, dls, plugins=[Device("cuda:1")])   # an explicit plugin wins

``Learner(..., device=None)`` registers ``Device()`` as a default plugin, after the others;
``device="cpu"`` (or ``"cuda:1"``, ``"mps"``) forces one, and a device this machine lacks is an
error naming those it has (:func:`pick_device`, a pure function of what is available, decides;
:func:`available_devices` asks torch). A ``Device`` among the user's plugins replaces the
default, also one given to ``fit(plugins=[...])`` for that fit only.

The model moves in ``after_create_opt`` (before a resume loads the optimizer's state, so that
state lands on the model's device), in ``before_fit`` and before a standalone validation; the
parameters are moved in place, so the optimizer keeps them. Batches move in ``before_batch``
(``tryfirst``, so other plugins see them on the device): tensors nested in tuples, named
tuples, lists, dicts and dataclasses (:func:`pluglearn.data.batch_ops.map_tensors`). On CUDA a CPU
tensor is copied from pinned memory with ``non_blocking=True``, so the copy is no host-device
sync (pluglearn's in-memory loader gathers straight into pinned memory; another loader's tensors
are pinned just before the copy). On the CPU nothing is walked: ``before_batch`` is not even
implemented (the hook costs nothing per batch), as pluglearn's loaders give CPU tensors; a
loader that yields accelerator tensors to a CPU model fails in torch with its device-mismatch
error. A model without ``.to()`` (``pluglearn.scratch``'s) is not moved: it trains where its
tensors are, and the default device is that one.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import torch

from ..data.batch_ops import map_tensors
from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner

#: the device types a machine always has: the CPU, and torch's shape-only ``meta`` device
ALWAYS = ("cpu", "meta")
#: the order in which ``device=None`` picks a device
PREFERENCE = ("cuda", "mps", "cpu")


def available_devices() -> list[str]:
    """The devices of this machine as torch sees them, accelerators first.

    >>> available_devices()[-1]
    'cpu'
    """
    found = []
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [f"xpu:{i}" for i in range(xpu.device_count())]
    return [*found, "cpu"]


def pick_device(
    requested: str | torch.device | None, available: Sequence[str], who: str = "Device"
) -> torch.device:
    """The device to train on: ``requested``, checked against ``available`` (device names such
    as ``["cuda:0", "mps", "cpu"]``), or with ``requested=None`` the best of them: CUDA, then
    MPS, then the CPU. A CUDA device without an index is the current one (under ``torchrun``
    the local rank's GPU). ``who`` names the caller in errors: ``"Device"`` for the plugin,
    ``"device"`` for the Learner's argument.

    >>> pick_device(None, ["cuda:0", "mps", "cpu"]), pick_device(None, ["mps", "cpu"])
    (device(type='cuda'), device(type='mps'))
    >>> pick_device("cpu", ["cuda:0", "cpu"])
    device(type='cpu')
    """
    types = {name.split(":")[0] for name in available}
    if requested is None:
        return torch.device(next((t for t in PREFERENCE if t in types), "cpu"))
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError) as error:
        asked = _call(who, repr(requested), asked=True)
        raise ValueError(
            f"{asked} is not a device name ({error}): give one of {', '.join(available)}, or "
            "None for the best of them."
        ) from None
    if device.type in ALWAYS:
        return device
    asked, there = _call(who, repr(str(device)), asked=True), ", ".join(available)
    if device.type not in types:
        what = "CUDA is" if device.type == "cuda" else f"{device.type!r} is"
        raise ValueError(
            f"{asked}: {what} not available on this machine, which has {there}: use "
            f"{_call(who, '' if who == 'Device' else 'None')} to pick the best available device, "
            f"or {_call(who, repr('cpu'))}."
        )
    if device.index is not None and str(device) not in available:
        raise ValueError(
            f"{asked}: this machine has no such device, only {there}: give one of them, or "
            f"{_call(who, repr(device.type))} for the current one."
        )
    return device


def _call(who: str, value: str, asked: bool = False) -> str:
    """How the user spells a request: ``Device('cuda')``, or the Learner's ``device='cuda'``
    (``Learner(device='cuda')`` when it names the call that was refused)."""
    if who != "device":
        return f"{who}({value})"
    return f"Learner(device={value})" if asked else f"device={value}"


class Device:
    """Moves the model and the batches to ``device`` (default: the best available, see
    :func:`pick_device`); on the CPU it implements no batch hook at all.

    ``Device(...)`` on an accelerator is an instance of the class with :class:`MovesBatches`
    mixed in (same name, a subclass), as ``MixedPrecision(torch.float16)`` gets its scaler's
    hooks: the CPU plugin has no ``before_batch`` for the dispatcher to call."""

    def __new__(cls, device: str | torch.device | None = None) -> Device:
        placed = pick_device(device, available_devices())
        if placed.type != "cpu" and not issubclass(cls, MovesBatches):
            # a user's subclass keeps its own overrides first. The ignore: mypy wrongly finds a
            # type[...] value unhashable for functools.cache (python/mypy#11470); a class hashes
            cls = with_batch_moving(cls)  # type: ignore[arg-type]
        plugin = super().__new__(cls)
        plugin.device = placed
        return plugin

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device: torch.device  # set by __new__, which picks the class too
        self.non_blocking = self.device.type == "cuda"

    def __repr__(self) -> str:
        return f"Device({str(self.device)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt through the class the user named: the mixed class is made at run time
        base = next(c for c in type(self).__mro__ if not issubclass(c, MovesBatches))
        return (_rebuild, (base, str(self.device), self.__dict__))

    def _move_model(self, learn: Learner) -> None:
        model = learn.model
        if callable(getattr(model, "to", None)):
            model.to(self.device)
            return
        # a model of pluglearn.scratch (no .to): it stays where its tensors are, if that is here
        elsewhere = {str(p.device) for p in model.parameters() if p.device != self.device}
        if elsewhere and not (self.device.index is None and elsewhere == {self.device.type}):
            raise TypeError(
                f"Device({str(self.device)!r}) cannot move a {type(model).__name__}, which has no "
                f".to() (its tensors are on {', '.join(sorted(elsewhere))}): build it on "
                f"{self.device}, or train where it is (Learner(..., device=...))."
            )

    @hookimpl(tryfirst=True)  # before a resume loads the optimizer's state onto the parameters
    def after_create_opt(self, learn: Learner) -> None:
        self._move_model(learn)

    @hookimpl(tryfirst=True)
    def before_fit(self, learn: Learner) -> None:
        self._move_model(learn)

    @hookimpl(tryfirst=True)
    def before_validate(self, learn: Learner) -> None:
        self._move_model(learn)  # a standalone validation too (in a fit: a no-op)


class MovesBatches:
    """The accelerator half of :class:`Device`: ``before_batch`` moves the batch (see the
    module doc). Mixed in by ``Device.__new__``, never used alone."""

    device: torch.device
    non_blocking: bool

    @hookimpl(tryfirst=True)
    def before_batch(self, learn: Learner) -> None:
        learn.batch = move_batch(learn.batch, self.device)


def move_batch(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor on ``device``. To CUDA a CPU tensor goes from pinned memory
    (pinned first unless a loader pinned it) with ``non_blocking=True``: no host-device sync.

    Example: ``move_batch((xb, yb), torch.device("meta"))``."""
    if device.type != "cuda":
        return map_tensors(lambda t: t.to(device), batch)
    return map_tensors(lambda t: _to_cuda(t, device), batch)


def _to_cuda(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


@cache
def with_batch_moving(cls: type[Device]) -> type[Device]:
    """``cls`` with the batch hook, under the same name (the plugin's name)."""
    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (cls, MovesBatches), namespace)


def _rebuild(cls: type[Device], device: str, state: dict[str, Any]) -> Device:
    plugin = Device.__new__(cls, device)
    plugin.__dict__.update(state)
    return plugin
