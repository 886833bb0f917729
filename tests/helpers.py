"""Tiny real models, data and an event-recording plugin shared by the tests."""

from __future__ import annotations

import importlib.util
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from pluglearn import DataLoaders, Learner, hookimpl
from pluglearn.hooks.specs import BATCH_EVENTS, HOOKS

EVENTS = [h for h in HOOKS if h.split("_")[0] in ("before", "after", "cleanup")] + ["on_error"]


def needs(module: str, install: str) -> pytest.MarkDecorator:
    """Skip unless ``module`` is installed, without importing it: a test module that imports
    mlflow, wandb, torchmetrics or scikit-learn at collection costs every xdist worker that
    import (about a second each), though one worker runs its tests."""
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"needs {module}: pip install {install}"
    )


def tiny_data(n: int = 10, n_in: int = 4, n_classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return x, y


def exact(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern for exactly ``message``, the whole of it.

    with pytest.raises(ValueError, match=exact("bs must be a positive int, got 0.")): ...
    """
    return f"^{re.escape(message)}$"


def first_line(error: BaseException) -> str:
    """An error's own message: its first line (the Learner adds lines naming the plugin, hook,
    epoch and batch)."""
    return str(error).split("\n")[0]


def message(error: BaseException) -> str:
    """What the user reads: the message and every note added on the way up."""
    return "\n".join([str(error), *getattr(error, "__notes__", [])])


def raised_by(call: Callable[[], object], error_type: type[BaseException]) -> str:
    """The message and notes of the ``error_type`` that ``call()`` raises (fails if none)."""
    import pytest

    with pytest.raises(error_type) as info:
        call()
    return message(info.value)


def batches(x, y, bs):
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]


def tiny_learner(
    plugins=(),
    n_train: int = 8,
    n_valid: int = 4,
    bs: int = 4,
    defaults: bool = False,
    *,
    data_seed: int = 0,
    n_in: int = 4,
    seed: int | None = 0,
    model: nn.Module | Callable[[], nn.Module] | None = None,
    from_datasets: bool = False,
    loader_seed: int | None = None,
    valid_bs: int | None = None,
    **kwargs,
) -> Learner:
    """A Learner on ``tiny_data(n_train + n_valid, n_in, seed=data_seed)``: the first ``n_train``
    items train, the rest validate (no validation set when ``n_valid=0``).

    In this order, as a test written by hand would: ``torch.manual_seed(seed)`` (skipped when
    ``seed`` is None), the data, the loaders, the model (``nn.Linear(n_in, 3)``, or ``model``:
    a module, or a function making one, so that it is made after the seeding), the Learner
    (``lr=0.1`` unless given; other keywords go to ``Learner``). The loaders are ready lists of
    batches of ``bs`` (``valid_bs`` for validation, default ``bs``), or with ``from_datasets``
    ``DataLoaders.from_datasets(..., batch_size=bs, seed=loader_seed)`` (shuffled, resumable).

        learn = tiny_learner([Recorder()], n_train=32, n_valid=8, bs=8, from_datasets=True)
        learn.fit(2)
    """
    if seed is not None:
        torch.manual_seed(seed)
    x, y = tiny_data(n_train + n_valid, n_in=n_in, seed=data_seed)
    train, valid = (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]) if n_valid else None
    if from_datasets:
        dls = DataLoaders.from_datasets(
            train, valid, batch_size=bs, valid_batch_size=valid_bs, seed=loader_seed
        )
    else:
        valid_batches = batches(*valid, valid_bs or bs) if valid is not None else None
        dls = DataLoaders(batches(*train, bs), valid_batches)
    if model is None:
        model = nn.Linear(n_in, 3)
    elif not isinstance(model, nn.Module):
        model = model()
    kwargs.setdefault("lr", 0.1)
    return Learner(model, dls, plugins=plugins, defaults=defaults, **kwargs)


def _recorder_method(event: str):
    if event == "on_error":

        def method(self, learn, error):
            self.events.append(("on_error", type(error).__name__))

    else:

        def method(self, learn):
            self.events.append(event)
            if self.raise_at == (event, learn.epoch, learn.iter if event in BATCH_EVENTS else None):
                raise self.exc

    method.__name__ = event
    method.__code__ = method.__code__.replace(co_name=event)  # one code object per hook
    return hookimpl(method)


class EventLog:
    """Records every event; raises ``exc`` at ``raise_at = (event, epoch, batch or None)``."""

    def __init__(self, raise_at=None, exc: BaseException | None = None):
        self.events: list = []
        self.raise_at, self.exc = raise_at, exc


for _event in EVENTS:
    setattr(EventLog, _event, _recorder_method(_event))


def batch_events(training: bool) -> list[str]:
    steps = ["after_backward", "before_step", "after_step"] if training else []
    return ["before_batch", "after_pred", "after_loss", *steps, "after_batch", "cleanup_batch"]


def pass_events(name: str, n_batches: int) -> list[str]:
    inner = [e for _ in range(n_batches) for e in batch_events(name == "train")]
    return [f"before_{name}", *inner, f"after_{name}", f"cleanup_{name}"]


def epoch_events(n_train: int = 2, n_valid: int = 1) -> list[str]:
    return [
        "before_epoch",
        *pass_events("train", n_train),
        *pass_events("validate", n_valid),
        "after_epoch",
        "cleanup_epoch",
    ]


def process_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped by its parent) counts as dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def wait_dead(pids: list[int], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while any(process_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class CrashAt:
    """Raises ``RuntimeError("killed")`` after training batch ``batch`` of ``epoch``: a crash at a
    known point, for resume tests that need no subprocess."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)

    @hookimpl
    def after_batch(self, learn):
        if learn.training and (learn.epoch, learn.iter) == self.at:
            raise RuntimeError("killed")


class DieAtStep:
    """Raises ``RuntimeError("die")`` after the training batch that makes ``train_iter`` equal
    ``step`` (counted over the Learner's life, across epochs)."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def after_batch(self, learn):
        if learn.training and learn.train_iter == self.step:
            raise RuntimeError("die")
