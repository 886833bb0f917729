"""A Learner's plugins in call order: the user's, then the installed ones, then the defaults.

The defaults are ``AvgLoss`` and ``ProgressBar`` (left out with ``defaults=False``), the
providers ``TrainStep`` and ``DefaultLoader`` (they answer last, so any plugin replaces them)
and one ``Device`` (the best available, or the ``device=`` asked for). A plugin of the same
class as a default replaces it; ``add_plugin`` registers after the user's plugins and before
the defaults; a ``Device`` given to one fit sets the default one aside until it is removed.

Example::

    plugins = PluginSet(model, [Accuracy()], defaults=True, block_plugins=(), device=None)
    [type(p).__name__ for p in plugins]
    # ['Accuracy', 'AvgLoss', 'ProgressBar', 'TrainStep', 'DefaultLoader', 'Device']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..hooks.entrypoints import autoload_plugins
from ..hooks.registry import PluginRegistry
from .default_loader import DefaultLoader
from .device import Device, available_devices, pick_device
from .metrics import AvgLoss
from .progress import ProgressBar
from .train_step import TrainStep


class PluginSet(PluginRegistry):
    """The ordered plugins of one Learner, with its defaults (see the module doc)."""

    def __init__(
        self,
        model: nn.Module,
        user: list[object],
        *,
        defaults: bool,
        block_plugins: Iterable[str],
        device: str | torch.device | None,
    ) -> None:
        super().__init__()
        chosen: list[object] = [AvgLoss(), ProgressBar()] if defaults else []
        chosen += [TrainStep(), DefaultLoader()]
        chosen = [d for d in chosen if not any(type(p) is type(d) for p in user)]
        placed = [p for p in user if isinstance(p, Device)]
        if device is None and not callable(getattr(model, "to", None)):
            # a model of pluglearn.scratch cannot move: it trains where its tensors are
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        wanted = pick_device(device, available_devices(), "device")  # refused before anything
        if len(placed) > 1:
            raise ValueError(
                f"plugins={placed!r}: a Learner trains on one device; give one Device plugin."
            )
        if not placed:
            chosen.append(Device(wanted))
        elif device is not None and placed[0].device != wanted:
            raise ValueError(
                f"Learner(device={str(wanted)!r}) and the plugin {placed[0]!r} name two devices: "
                "give one of them (the plugin alone, or device= alone)."
            )
        #: the default Device, set aside while a fit's own Device plugin is registered
        self.device_aside: Device | None = None
        self.defaults = {id(p) for p in chosen}
        installed = [  # plugins of installed packages (entry-point group "pluglearn")
            a
            for a in autoload_plugins(block=block_plugins)
            if not any(type(p) is type(a) for p in user)
        ]
        for plugin in [*user, *installed, *chosen]:
            self.add(plugin)

    def add_before_defaults(self, plugin: object) -> str:
        """Register ``plugin`` after the user's plugins, before the defaults; returns its name.
        A :class:`~pluglearn.Device` replaces the default one until it is removed."""
        aside = self.device_aside
        if isinstance(plugin, Device):
            self._set_device_aside(plugin)
        at = next((i for i, p in enumerate(self) if id(p) in self.defaults), None)
        try:
            return self.add(plugin, index=at)
        except BaseException:
            if self.device_aside is not aside:  # refused: the default Device comes back
                self.add(self.device_aside)
                self.defaults.add(id(self.device_aside))
                self.device_aside = aside
            raise

    def remove_and_restore(self, plugin: object | str) -> object:
        """Unregister a plugin given as the object or its name; returns it. When it was the
        Device that set the default one aside, the default comes back."""
        removed = self.remove(plugin)
        self.defaults.discard(id(removed))
        aside = self.device_aside
        if aside is not None and not any(isinstance(p, Device) for p in self):
            self.device_aside = None  # the fit's own Device is gone: the default comes back
            self.add(aside)
            self.defaults.add(id(aside))
        return removed

    def _set_device_aside(self, plugin: Device) -> None:
        """Make room for ``plugin``: the default Device steps aside; a second one is refused."""
        for other in self:
            if not isinstance(other, Device) or other is plugin:
                continue
            if id(other) not in self.defaults:
                name = type(other).__name__
                raise ValueError(
                    f"{plugin!r} was added while {other!r} is registered: a Learner trains on one "
                    f"device; remove the other first (learn.remove_plugin({name!r}))."
                )
            self.remove(other)
            self.defaults.discard(id(other))
            self.device_aside = other

    def device(self, model: Any) -> torch.device:
        """Where the Learner trains: its ``Device`` plugin's device, else (that plugin removed)
        where the model's parameters are."""
        placed = next((p for p in self if isinstance(p, Device)), None)
        if placed is not None:
            return placed.device
        param = next(iter(model.parameters()), None)
        return param.device if param is not None else torch.device("cpu")
