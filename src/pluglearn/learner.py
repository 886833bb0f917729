"""The Learner: a small, fixed loop (fit, validate, get_preds) whose every extension is a plugin.

The batch reads as the algorithm, with a hook after each step::

    predict -> after_pred -> compute_loss -> after_loss
            -> backward -> after_backward -> step -> after_step -> zero_grad     (training only)

Each phase (fit, epoch, train, validate, batch) runs ``before_X``, its body, ``after_X``, and
``cleanup_X`` as its ``finally``; raising ``CancelXException`` ends phase X early (``after_X``
skipped, ``cleanup_X`` runs). The hooks are documented in :mod:`pluglearn.plugins.specs`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from fastcore.basics import listify
from torch import nn

from .callbacks.loaders import DefaultLoader
from .callbacks.metrics import AvgLoss
from .callbacks.progress import ProgressBar
from .callbacks.train_step import TrainStep
from .checks import check_done, check_lr, check_pair, report_order
from .collect import GatherPreds, merge_metrics
from .data.loaders import DataLoaders
from .errors import cancel_reason, cleanup_after_error, report_error, stray_cancel
from .exceptions import (
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
)
from .plugins.manager import HookCalls, PluginRegistry


class Learner:
    """Trains ``model`` on ``dls`` with ``loss_func`` and an optimizer made by ``opt_func``.

    Plugins run in list order for every hook. A bare Learner has the default plugins
    ``AvgLoss`` (train/valid loss), ``ProgressBar``, and the providers ``TrainStep`` and
    ``DefaultLoader`` (which answer last, so any plugin can replace them). ``defaults=False``
    leaves out ``AvgLoss`` and ``ProgressBar``; a plugin of the same class as a default
    replaces it; ``learn.remove_plugin("ProgressBar")`` removes one by name.
    """

    def __init__(
        self,
        model: nn.Module,
        dls: DataLoaders,
        loss_func: Callable[..., torch.Tensor] = F.cross_entropy,
        opt_func: Callable[..., Any] = torch.optim.SGD,
        lr: float = 0.1,
        plugins: object | Sequence[object] = (),
        *,
        defaults: bool = True,
    ) -> None:
        if not isinstance(dls, DataLoaders):
            raise TypeError(
                f"dls must be a pluglearn DataLoaders, got {type(dls).__name__}: wrap your loaders "
                "as DataLoaders(train_dl, valid_dl) or use DataLoaders.from_datasets(...)."
            )
        self.model, self.dls, self.loss_func, self.opt_func = model, dls, loss_func, opt_func
        self.lr = check_lr(lr)
        self.opt: Any = None
        self.epoch, self.n_epochs, self.iter, self.n_iter = 0, 0, 0, None
        self.train_iter = 0  # optimizer steps taken over the Learner's life
        self.training = False
        self.dl: Iterable[Any] | None = None
        self.batch: Any = None
        self.preds: Any = None
        self.loss: torch.Tensor | None = None
        self.metrics: dict[str, Any] = {}
        self.stop_reason: str | None = None  # who ended the last fit early, and why
        self._resume_position = 0  # training batches of this epoch done before a resume
        self._resume_replays = False  # the loader cannot seek: skip those batches by reading
        self._batches: Iterable[Any] = ()
        self._registry = PluginRegistry()
        self._in_batch = False
        self._reported: BaseException | None = None  # the error on_error was called for
        self._metric_owner: dict[str, str] = {}
        user = listify(plugins)
        chosen = [AvgLoss(), ProgressBar()] if defaults else []
        chosen += [TrainStep(), DefaultLoader()]
        chosen = [d for d in chosen if not any(type(p) is type(d) for p in user)]
        self._defaults = {id(p) for p in chosen}
        for plugin in [*user, *chosen]:
            self._registry.add(plugin)

    # ------------------------------------------------------------------------------ plugins

    @property
    def plugins(self) -> list[object]:
        """The registered plugins in call order (before ``tryfirst``/``trylast``)."""
        return list(self._registry)

    def add_plugin(self, plugin: object) -> str:
        """Register ``plugin`` after the user's plugins, before the defaults; returns its name."""
        at = next((i for i, p in enumerate(self._registry) if id(p) in self._defaults), None)
        return self._registry.add(plugin, index=at)

    def remove_plugin(self, plugin: object | str) -> object:
        """Unregister a plugin given as the object or its name; returns it."""
        removed = self._registry.remove(plugin)
        self._defaults.discard(id(removed))
        return removed

    def plugin(self, name: str) -> object:
        """The registered plugin named ``name`` (its class name, or ``name_2`` for a second)."""
        return self._registry.get(name)

    def show_hooks(self) -> str:
        """Print and return the resolved call order of every hook."""
        text = self._registry.describe()
        print(text)
        return text

    @property
    def hooks(self) -> HookCalls:
        """The callers of the current plugin set (``learn.hooks.call("report", ...)``)."""
        return self._registry.calls

    # --------------------------------------------------------------------------- batch state

    @property
    def xb(self) -> Any:
        return self.batch[0]

    @property
    def yb(self) -> Any:
        return self.batch[1]

    # ----------------------------------------------------------------------------- public

    def fit(
        self,
        n_epochs: int,
        lr: float | None = None,
        plugins: object | Sequence[object] = (),
        *,
        resume_from: Any = None,
    ) -> None:
        """Train for ``n_epochs`` (a train pass then a validate pass each). ``plugins`` live for
        this fit only and are removed afterwards, also after an error. ``resume_from`` (a
        checkpoint file or directory) continues an interrupted fit exactly where it stopped."""
        if isinstance(n_epochs, bool) or not isinstance(n_epochs, int) or n_epochs < 0:
            raise ValueError(f"n_epochs must be an int >= 0, got {n_epochs!r}.")
        added: list[object] = []
        try:
            for plugin in listify(plugins):
                self.add_plugin(plugin)
                added.append(plugin)
            if lr is not None:
                self.lr = check_lr(lr)
            self.n_epochs, self.epoch, self.stop_reason = n_epochs, 0, None
            self._make_opt()
            with self._loaders():
                if resume_from is not None:
                    from .resume import restore

                    if not restore(self, resume_from):
                        return  # the checkpointed run had already stopped: nothing to resume
                self._run_entry(lambda: self._phase("fit", CancelFitException, self._do_fit))
        finally:
            for plugin in reversed(added):
                if plugin in self._registry:
                    self.remove_plugin(plugin)

    def validate(self, dl: Iterable[Any] | None = None) -> dict[str, Any]:
        """One validation pass (eval mode, no gradients); returns its metrics."""
        self.metrics, self._metric_owner = {}, {}
        with self._loaders(train=False):
            self._run_entry(lambda: self._pass(train=False, dl=dl))
        return dict(self.metrics)

    def get_preds(self, dl: Iterable[Any] | None = None) -> tuple[Any, Any]:
        """Predictions and targets over the validation set (or ``dl``), concatenated."""
        gather = GatherPreds()
        self._registry.add(gather)
        try:
            self.validate(dl)
        finally:
            self._registry.remove(gather)
        return torch.cat(gather.preds), torch.cat(gather.targets)

    # ------------------------------------------------------------------------------- loop

    def _do_fit(self) -> None:
        for self.epoch in range(self.epoch, self.n_epochs):  # noqa: B020 (state hooks read)
            self._phase("epoch", CancelEpochException, self._do_epoch)

    def _do_epoch(self) -> None:
        start = time.perf_counter()
        self.metrics, self._metric_owner = {"epoch": self.epoch}, {}
        self._pass(train=True)
        if self.dls.valid is not None:
            self._pass(train=False)
        self.metrics["time"] = time.perf_counter() - start
        self.metrics = report_order(self.metrics)
        self._registry.calls.call("report", learn=self, metrics=dict(self.metrics))

    def _pass(self, train: bool, dl: Iterable[Any] | None = None) -> None:
        if dl is None:
            dl = self.dls.train if train else self.dls.valid
        if dl is None:
            raise ValueError(
                "no validation data: build DataLoaders(train, valid) with a validation set, "
                "or pass one: learn.validate(dl=...)."
            )
        self.training, self.dl = train, dl
        self.n_iter = len(dl) if hasattr(dl, "__len__") else None
        self.iter, self._batches = 0, dl
        if train and self._resume_position:  # the first pass after a resume starts mid-way
            self.iter, self._resume_position = self._resume_position, 0
            if self.n_iter is not None and self.iter >= self.n_iter:
                self._batches = ()  # the cut came after the last training batch
            elif self._resume_replays:
                self._batches = islice(dl, self.iter, None)  # O(batches): no state to seek
        self.model.train(train)
        with torch.set_grad_enabled(train):
            if train:
                self._phase("train", CancelTrainException, self._run_batches)
            else:
                self._phase("validate", CancelValidateException, self._run_batches)
        merge_metrics(self, "train" if train else "valid")

    def _run_batches(self) -> None:
        start, self.batch = self.iter, None
        for self.iter, self.batch in enumerate(self._batches, start):  # noqa: B020 (state hooks read)
            self._one_batch()
        if self.batch is None and start == 0:
            which = "train" if self.training else "validation"
            raise ValueError(
                f"the {which} loader yielded no batch: is its dataset empty, or smaller than "
                "one batch with drop_last=True?"
            )

    def _one_batch(self) -> None:
        hooks = self._registry.calls
        self._in_batch = True
        try:
            hooks.before_batch(self)
            check_pair(self.batch)
            self.preds = hooks.predict(self)
            if self.preds is None:
                raise TypeError("no plugin answered 'predict' (every implementation returned None)")
            hooks.after_pred(self)
            self.loss = hooks.compute_loss(self)
            if not isinstance(self.loss, torch.Tensor):
                raise TypeError(
                    f"'compute_loss' must return a tensor, got {type(self.loss).__name__}: return "
                    "the loss tensor itself (not loss.item())."
                )
            hooks.after_loss(self)
            if self.training:
                check_done("backward", hooks.backward(self))
                hooks.after_backward(self)
                check_done("step", hooks.step(self))
                hooks.after_step(self)
                check_done("zero_grad", hooks.zero_grad(self))
                self.train_iter += 1
            hooks.after_batch(self)
        except CancelBatchException:
            pass
        except BaseException as error:
            if not isinstance(error, CancelException):
                report_error(self, error)
            cleanup_after_error(self, hooks.cleanup_batch, error)
            raise
        finally:
            self._in_batch = False
        hooks.cleanup_batch(self)

    def _phase(self, name: str, cancel: type[CancelException], body: Callable[[], None]) -> None:
        hooks = self._registry.calls  # one snapshot: every before_X meets its own cleanup_X
        cleanup = getattr(hooks, f"cleanup_{name}")
        try:
            getattr(hooks, f"before_{name}")(self)
            body()
            getattr(hooks, f"after_{name}")(self)
        except cancel as cancelled:
            if name == "fit" and self.stop_reason is None:
                self.stop_reason = cancel_reason(self, cancelled)
        except BaseException as error:
            if not isinstance(error, CancelException):
                report_error(self, error)
            cleanup_after_error(self, cleanup, error)
            raise
        cleanup(self)

    def _run_entry(self, run: Callable[[], None]) -> None:
        """Run a public entry point (fit, validate): an error that no phase reported (one from
        ``cleanup_fit`` itself) is reported here; a cancel that no phase took becomes an error."""
        self._reported = None
        try:
            run()
        except CancelException as stray:
            raise stray_cancel(self, stray) from stray
        except BaseException as error:
            report_error(self, error)
            raise

    def _make_opt(self) -> None:
        if self.opt is None:
            self.opt = self.opt_func(self.model.parameters(), lr=self.lr)
        elif hasattr(self.opt, "param_groups"):
            for group in self.opt.param_groups:
                group["lr"] = self.lr
        else:
            self.opt.lr = self.lr

    @contextmanager
    def _loaders(self, train: bool = True) -> Iterator[None]:
        """Ask ``make_dataloader`` for the datasets of ``dls`` (the validation one only when not
        ``train``); close the loaders afterwards."""
        if self.dls.resolved:
            yield
            return
        made = self.dls.resolve(self, train=train)
        try:
            yield
        finally:
            self.dls.release(made)
