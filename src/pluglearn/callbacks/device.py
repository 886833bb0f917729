"""Device: puts the model and every batch on one device (CUDA when present, else CPU).

Example::

    learn = Learner(model, dls, plugins=[Device()])          # cuda if available, else cpu
    learn = Learner(model, dls, plugins=[Device("cpu")])

The model moves in ``before_fit`` (and before a standalone validation); batches move in
``before_batch`` (``tryfirst``, so other plugins see them on the device). Batches of any
structure move: tensors nested in tuples, named tuples, lists, dicts and dataclasses
(:func:`pluglearn.batches.to_device`; a dataclass is rebuilt without running its
``__post_init__`` again); ``non_blocking`` copies overlap with compute on CUDA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..batches import to_device
from ..plugins.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


def default_device() -> torch.device:
    """CUDA when available, else MPS when available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Device:
    """Moves the model and the batches to ``device`` (default: :func:`default_device`)."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"Device({str(self.device)!r}): CUDA is not available on this machine: use "
                "Device() to pick the best available device, or Device('cpu')."
            )
        self.non_blocking = self.device.type == "cuda"

    def _move_model(self, learn: Learner) -> None:
        learn.model.to(self.device)

    @hookimpl(tryfirst=True)
    def before_fit(self, learn: Learner) -> None:
        self._move_model(learn)

    @hookimpl(tryfirst=True)
    def before_validate(self, learn: Learner) -> None:
        self._move_model(learn)

    @hookimpl(tryfirst=True)
    def before_batch(self, learn: Learner) -> None:
        learn.batch = to_device(learn.batch, self.device, self.non_blocking)
