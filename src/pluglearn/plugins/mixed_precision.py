"""MixedPrecision: the forward pass and the loss under ``torch.autocast``; float16 with a scaler.

Example::

    learn.fit(3, plugins=[MixedPrecision()])                       # bfloat16, CPU or GPU
    learn.fit(3, plugins=[MixedPrecision(torch.float16)])          # with a GradScaler

It answers ``forward_context`` with ``torch.autocast(device_type, dtype)``, the device type read
from the model's parameters at the start of the fit, so ``predict``, ``after_pred`` and
``compute_loss`` run under autocast and the backward and step do not (as torch's AMP recipe
says). Weights and optimizer state stay in their own dtype.

``float16`` (on CUDA, or on the CPU where torch's CPU autocast and scaler support it; its range
needs loss scaling) adds a ``torch.amp.GradScaler`` of the model's device type:
``backward`` computes ``scaler.scale(loss).backward()``; ``before_step`` (``tryfirst``)
unscales the gradients, so clipping and inspection see the true ones; ``step`` is
``scaler.step(opt)`` then ``scaler.update()``. A step the scaler skips (inf or NaN gradients)
sets ``step_skipped``, and :class:`~pluglearn.plugins.scheduler.Scheduler` then does not
advance (the optimizer did not step). The scaler's state is in the checkpoints.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import torch

from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


class MixedPrecision:
    """Autocast to ``dtype`` around the forward pass and loss; a GradScaler for float16.

    ``MixedPrecision(torch.float16)`` is an instance of the class with :class:`LossScaling`
    mixed in (same name, a subclass): the scaler's hooks exist only where a scaler does, so the
    bfloat16 run pays for no hook that would only pass."""

    def __new__(cls, dtype: torch.dtype = torch.bfloat16, **scaler_kwargs: Any) -> MixedPrecision:
        if dtype == torch.float16 and not issubclass(cls, LossScaling):
            # a user's subclass keeps its own overrides first. The ignore: mypy wrongly finds a
            # type[...] value unhashable for functools.cache (python/mypy#11470); a class hashes
            cls = with_loss_scaling(cls)  # type: ignore[arg-type]
        return super().__new__(cls)

    def __init__(self, dtype: torch.dtype = torch.bfloat16, **scaler_kwargs: Any) -> None:
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(
                f"MixedPrecision(dtype={dtype!r}): give torch.bfloat16 (CPU and recent GPUs) or "
                "torch.float16 (CUDA, with loss scaling)."
            )
        if scaler_kwargs and dtype != torch.float16:
            raise ValueError(
                f"MixedPrecision: scaler options {sorted(scaler_kwargs)} go with "
                "dtype=torch.float16; bfloat16 needs no loss scaling."
            )
        self.dtype, self.scaler_kwargs = dtype, scaler_kwargs
        self.device_type: str | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.step_skipped = False  # the last optimizer step was skipped by the scaler
        self._scale = 0.0

    def _setup(self, learn: Learner) -> str:
        """Autocast on the model's device (set up the scaler for float16); returns the device
        type."""
        param = next(iter(learn.model.parameters()), None)
        device = param.device.type if param is not None else "cpu"
        if self.dtype == torch.float16 and device not in ("cuda", "cpu"):
            raise ValueError(
                f"MixedPrecision(torch.float16) needs a CUDA or CPU model (its parameters are "
                f"on {device!r}, where torch has no GradScaler): use "
                "MixedPrecision(torch.bfloat16) there."
            )
        self.device_type = device
        if self.dtype == torch.float16 and self.scaler is None:
            self.scaler = torch.amp.GradScaler(device, **self.scaler_kwargs)
            self._scale = self.scaler.get_scale()
        return device

    @hookimpl
    def after_create_opt(self, learn: Learner) -> None:
        self._setup(learn)

    @hookimpl(trylast=True)  # after a plugin that moves the model (a Device plugin)
    def before_fit(self, learn: Learner) -> None:
        self._setup(learn)

    @hookimpl
    def forward_context(self, learn: Learner) -> Any:
        device_type = self.device_type
        if device_type is None:
            device_type = self._setup(learn)  # validate() / get_preds() outside a fit
        return torch.autocast(device_type, dtype=self.dtype)

    @hookimpl
    def state_dict(self) -> dict[str, Any] | None:
        if self.scaler is None:
            return {"dtype": str(self.dtype)}
        return {"dtype": str(self.dtype), "scaler": self.scaler.state_dict()}

    @hookimpl
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("dtype") != str(self.dtype):
            raise ValueError(
                f"MixedPrecision: the checkpoint was trained with {state.get('dtype')}, this "
                f"plugin uses {self.dtype}: resume with MixedPrecision({state.get('dtype')})."
            )
        if "scaler" in state and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
            self._scale = self.scaler.get_scale()


class LossScaling:
    """The float16 half of :class:`MixedPrecision`: the ``GradScaler``'s backward, unscale and
    step (see the module doc). Mixed in by ``MixedPrecision.__new__``, never used alone."""

    scaler: torch.amp.GradScaler | None
    step_skipped: bool
    _scale: float

    @hookimpl
    def backward(self, learn: Learner) -> bool | None:
        if self.scaler is None:
            return None
        assert learn.loss is not None  # backward runs after compute_loss
        self.scaler.scale(learn.loss).backward()
        return True

    @hookimpl(tryfirst=True)  # before clipping (trylast) reads the gradients
    def before_step(self, learn: Learner) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(learn.opt)

    @hookimpl
    def step(self, learn: Learner) -> bool | None:
        if self.scaler is None:
            return None
        self.scaler.step(learn.opt)
        self.scaler.update()
        scale = self.scaler.get_scale()  # the scale only drops when the step was skipped
        self.step_skipped, self._scale = scale < self._scale, scale
        return True

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle through the class the user named: the mixed class is made at run time
        return (_rebuild, (type(self).__mro__[1], self.__dict__))


@cache
def with_loss_scaling(cls: type[MixedPrecision]) -> type[MixedPrecision]:
    """``cls`` with the loss-scaling hooks, under the same name (the plugin's name)."""
    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (cls, LossScaling), namespace)


def _rebuild(cls: type[MixedPrecision], state: dict[str, Any]) -> MixedPrecision:
    plugin = MixedPrecision.__new__(cls, torch.float16)
    plugin.__dict__.update(state)
    return plugin


def skippers(plugins: list[object]) -> list[Any]:
    """The plugins among ``plugins`` that may skip an optimizer step: those with a
    ``step_skipped`` attribute (True after a skipped step), as :class:`MixedPrecision` with a
    float16 scaler has (with bfloat16 it never skips, and is left out)."""
    return [
        p
        for p in plugins
        if hasattr(p, "step_skipped")
        and not (isinstance(p, MixedPrecision) and p.dtype != torch.float16)
    ]
