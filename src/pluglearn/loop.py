"""The loop: the phases, the passes and the batch, fixed and small; the Learner's base class.

The batch reads as the algorithm, with a hook after each step::

    before_batch -> should_step -> [forward_context: predict -> after_pred -> compute_loss]
      -> after_loss -> backward -> after_backward                                (training)
      -> before_step -> step -> after_step -> zero_grad          (training, batches that step)
      -> after_batch -> cleanup_batch

Each phase (fit, epoch, train, validate, batch) runs ``before_X``, its body, ``after_X``, and
``cleanup_X`` as its ``finally``; raising ``CancelXException`` ends phase X early (``after_X``
skipped, ``cleanup_X`` runs). Any other exception calls ``on_error`` once, then the cleanups of
every phase it crosses. The hooks are documented in :mod:`pluglearn.plugins.specs`; the
position lives in the run state (:mod:`pluglearn.run_state`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch

from .checks import check_done, check_loss, check_should_step, report_order
from .error_reporting import cancel_reason, cleanup_after_error, report_error, stray_cancel
from .exceptions import (
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelTrainException,
    CancelValidateException,
)
from .metric_merge import merge_metrics
from .plugins.dispatch import Dispatcher

if TYPE_CHECKING:
    from torch import nn

    from .data.loaders import DataLoaders
    from .plugins.manager import PluginRegistry
    from .run_state import RunState


class Loop:
    """The fixed loop the :class:`~pluglearn.Learner` runs (see the module doc). It reads and
    writes the Learner's batch state (``batch``, ``preds``, ``loss``, ``dl``, ``metrics``) and
    its run state (``run``)."""

    model: nn.Module
    dls: DataLoaders
    run: RunState
    _registry: PluginRegistry
    dl: Iterable[Any] | None
    batch: Any
    preds: Any
    loss: torch.Tensor | None
    metrics: dict[str, Any]
    stop_reason: str | None
    epoch: int
    n_epochs: int
    _batches: Iterable[Any]

    @property
    def hooks(self) -> Dispatcher:
        """The dispatcher of the current plugin set (``learn.hooks.call("report", ...)``)."""
        return self._registry.calls

    def _nested(self, body: Callable[[], Any]) -> Any:
        """Run ``body`` inside a running call and put everything back: the position, the batch
        state, the metrics, every module's train/eval mode and the random states, so the
        outer call continues as if ``body`` had not run."""
        from .resume import rng_state, set_rng_state

        run = self.run
        position, owners = run.snapshot(), run.metric_owner  # an error on its way out keeps
        # run.reported: the outer call must not call on_error for it a second time
        batch_state = (self.dl, self._batches, self.batch, self.preds, self.loss, self.metrics)
        modes = [(m, m.training) for m in self.model.modules()]
        rng = rng_state()
        try:
            return body()
        finally:
            run.restore_position(position)
            run.metric_owner = owners
            self.dl, self._batches, self.batch, self.preds, self.loss, self.metrics = batch_state
            for module, mode in modes:
                module.training = mode
            set_rng_state(rng)

    def _do_fit(self) -> None:
        for self.epoch in range(self.epoch, self.n_epochs):  # noqa: B020 (hooks read it)
            self._phase("epoch", CancelEpochException, self._do_epoch)

    def _do_epoch(self) -> None:
        start = time.perf_counter()
        self.metrics, self.run.metric_owner = {"epoch": self.epoch}, {}
        self._pass(train=True)
        if self.dls.valid is not None:
            self._pass(train=False)
        self.metrics["time"] = time.perf_counter() - start
        self.metrics = report_order(self.metrics)
        self.hooks.call("report", learn=self, metrics=dict(self.metrics))

    def _pass(self, train: bool, dl: Iterable[Any] | None = None) -> None:
        if dl is None:
            dl = self.dls.train if train else self.dls.valid
        if dl is None:
            raise ValueError(
                "no validation data: build DataLoaders(train, valid) with a validation set, "
                "or pass one: learn.validate(dl=...)."
                if not train
                else "no training data: this Learner has none (built for inference, e.g. by "
                "load_learner); give it some first: learn.dls = DataLoaders.from_datasets(...)."
            )
        pos = self.run.pos
        pos.training, self.dl = train, dl
        pos.n_iter = len(dl) if hasattr(dl, "__len__") else None
        pos.iter, self._batches = 0, dl
        resume = self.run.take_resume() if train else None
        if resume is not None and resume.position:  # the first pass after a resume: mid-way
            pos.iter = resume.position
            if pos.n_iter is not None and pos.iter >= pos.n_iter:
                self._batches = ()  # the cut came after the last training batch
            elif resume.replays:
                self._batches = islice(dl, pos.iter, None)  # O(batches): no state to seek
        self.model.train(train)
        with torch.set_grad_enabled(train):
            if train:
                self._phase("train", CancelTrainException, self._run_batches)
            else:
                self._phase("validate", CancelValidateException, self._run_batches)
        merge_metrics(self, "train" if train else "valid")

    def _run_batches(self) -> None:
        pos = self.run.pos
        start, self.batch = pos.iter, None
        for i, batch in enumerate(self._batches, start):
            pos.iter, self.batch = i, batch
            self._one_batch()
        if self.batch is None and start == 0:
            which = "train" if pos.training else "validation"
            raise ValueError(
                f"the {which} loader yielded no batch: is its dataset empty, or smaller than "
                "one batch with drop_last=True?"
            )

    def _one_batch(self) -> None:
        hooks, pos = self._registry.calls, self.run.pos
        pos.in_batch = True
        try:
            hooks.before_batch(self)
            training = pos.training
            if training:  # the checks run only on an unusual answer: a call costs per batch
                answer = hooks.should_step(self)
                pos.will_step = answer is None or (
                    answer if type(answer) is bool else check_should_step(answer)
                )
            if hooks.wraps_forward:
                with hooks.forward_context(self):
                    self._forward(hooks)
            else:
                self._forward(hooks)
            hooks.after_loss(self)
            if training:
                if (done := hooks.backward(self)) is not True:
                    check_done("backward", done)
                hooks.after_backward(self)
                if pos.will_step:
                    hooks.before_step(self)
                    if (done := hooks.step(self)) is not True:
                        check_done("step", done)
                    hooks.after_step(self)
                    if (done := hooks.zero_grad(self)) is not True:
                        check_done("zero_grad", done)
                    pos.opt_steps += 1
                pos.train_iter += 1
            hooks.after_batch(self)
        except CancelBatchException:
            pass
        except BaseException as error:
            if not isinstance(error, CancelException):
                report_error(self, error)
            cleanup_after_error(self, hooks.cleanup_batch, error)
            raise
        finally:
            pos.in_batch = False
        hooks.cleanup_batch(self)

    def _forward(self, hooks: Dispatcher) -> None:
        """predict, after_pred, compute_loss: what ``forward_context`` wraps."""
        self.preds = hooks.predict(self)
        if self.preds is None:
            raise TypeError("no plugin answered 'predict' (every one returned None)")
        hooks.after_pred(self)
        loss = hooks.compute_loss(self)
        self.loss = loss if type(loss) is torch.Tensor and not loss.ndim else check_loss(loss)

    def _phase(self, name: str, cancel: type[CancelException], body: Callable[[], None]) -> None:
        hooks = self._registry.calls  # one snapshot: every before_X meets its own cleanup_X
        cleanup = getattr(hooks, f"cleanup_{name}")
        try:
            getattr(hooks, f"before_{name}")(self)
            body()
            getattr(hooks, f"after_{name}")(self)
        except cancel as cancelled:
            if name == "fit" and self.stop_reason is None:
                self.stop_reason = cancel_reason(cancelled)
        except BaseException as error:
            if not isinstance(error, CancelException):
                report_error(self, error)
            cleanup_after_error(self, cleanup, error)
            raise
        cleanup(self)

    def _run_entry(self, run: Callable[[], None]) -> None:
        """Run a public entry point (fit, validate): an error that no phase reported (one from
        ``cleanup_fit`` itself) is reported here; a cancel that no phase took becomes an error."""
        self.run.begin_call()
        try:
            run()
        except CancelException as stray:
            raise stray_cancel(self, stray) from stray
        except BaseException as error:
            report_error(self, error)
            raise

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
