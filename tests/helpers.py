"""Tiny real models, data and an event-recording plugin shared by the tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from pluglearn import DataLoaders, Learner, hookimpl
from pluglearn.hooks.specs import BATCH_EVENTS, HOOKS

EVENTS = [h for h in HOOKS if h.split("_")[0] in ("before", "after", "cleanup")] + ["on_error"]


def tiny_data(n: int = 10, n_in: int = 4, n_classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return x, y


def batches(x, y, bs):
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]


def tiny_learner(plugins=(), n_train=8, n_valid=4, bs=4, defaults=False, **kwargs) -> Learner:
    """A Learner over ready lists of batches (n_train/bs train batches, n_valid/bs valid ones)."""
    torch.manual_seed(0)
    x, y = tiny_data(n_train + n_valid)
    dls = DataLoaders(batches(x[:n_train], y[:n_train], bs), batches(x[n_train:], y[n_train:], bs))
    return Learner(nn.Linear(4, 3), dls, lr=0.1, plugins=plugins, defaults=defaults, **kwargs)


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
