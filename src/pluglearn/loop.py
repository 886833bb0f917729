"""The loop: the phases, the passes and the batch, fixed and small; the Learner's base class.

The batch reads as the algorithm, with a hook after each step::

    before_batch -> should_step -> [forward_context: predict -> after_pred -> compute_loss]
      -> after_loss -> backward -> after_backward                                (training)
      -> before_step -> step -> after_step -> zero_grad          (training, batches that step)
      -> after_batch -> cleanup_batch

Each phase (fit, epoch, train, validate, batch) runs ``before_X``, its body, ``after_X``, and
``cleanup_X`` as its ``finally``; raising ``CancelXException`` ends phase X early (``after_X``
skipped, ``cleanup_X`` runs). Any other exception calls ``on_error`` once, then the cleanups of
every phase it crosses. The hooks are documented in :mod:`pluglearn.hooks.specs`; the
position lives in the run state (:mod:`pluglearn.run.state`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch
from fastcore.basics import listify

from .data.loaders import length_of
from .diagnostics.error_notes import cancel_reason, cleanup_after_error, report_error, stray_cancel
from .diagnostics.input_checks import check_done, check_loss, check_should_step, report_order
from .distributed import ranks as pdist
from .exceptions import (
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
)
from .hooks.dispatch import Dispatcher
from .run.metrics import merge_metrics
from .run.replay import STATEFUL, epoch_order, loader_kind, replay, resume_stateful
from .run.state import NESTED

if TYPE_CHECKING:
    from torch import nn

    from .data.loaders import DataLoaders
    from .hooks.registry import PluginRegistry
    from .learner import Learner
    from .run.state import RunState

T = TypeVar("T")


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
    wrapped_model: nn.Module | None
    opt_func: Callable[..., Any]
    _lr: float
    _opt: Any
    _batches: Iterable[Any]

    @property
    def _learn(self) -> Learner:
        """This loop, as the Learner it is the base of (the helpers it calls take the Learner)."""
        return cast("Learner", self)

    @property
    def hooks(self) -> Dispatcher:
        """The dispatcher of the current plugin set (``learn.hooks.call("report", ...)``)."""
        return self._registry.calls

    def _fit(
        self,
        n_epochs: int,
        lr: float | None,
        plugins: object | Sequence[object],
        resume_from: Any = None,
        missing_ok: bool = False,
    ) -> None:
        """The body of ``fit`` (and of ``lr_find``'s throwaway fit), inside its entry point."""
        added: list[object] = []
        try:
            for plugin in listify(plugins):
                self._learn.add_plugin(plugin)
                added.append(plugin)
            if lr is not None and resume_from is None:
                self._lr = lr
            self.run.start_fit(n_epochs)
            self._make_opt()
            with self._loaders():
                self.run.setting_up = True  # after_create_opt may replace learn.opt (FSDP)
                try:
                    self._run_entry(lambda: self.hooks.after_create_opt(self))
                finally:
                    self.run.setting_up = False
                # a fit starts with no gradient, as in a fresh process (a resume then puts back
                # those of an accumulation group): one left by a fit that raised between its
                # backward and its step would be added into the first step
                for param in self.model.parameters():
                    param.grad = None
                if resume_from is not None:
                    from .checkpoint.resume import restore

                    if not restore(self._learn, resume_from, lr=lr, missing_ok=missing_ok):
                        return  # nothing to resume: the saved run had stopped or finished
                self._run_entry(lambda: self._phase("fit", CancelFitException, self._do_fit))
        finally:
            self.run.clear_resume()
            for plugin in reversed(added):
                if plugin in self._registry:
                    self._learn.remove_plugin(plugin)

    def _nested(self, body: Callable[[], T]) -> T:
        """Run ``body`` inside a running call and put the run back afterwards (position, batch
        state, metrics, stop reason, modes, random states: :data:`~pluglearn.run.state.NESTED`),
        so the outer call continues as if ``body`` had not run."""
        snapshot = self.run.capture(self._learn, NESTED)
        try:
            return body()
        finally:
            self.run.put_back(self._learn, snapshot, "a nested call")

    def _validate(self, dl: Iterable[Any] | None, nested: bool = False) -> dict[str, Any]:
        self.metrics, self.run.metric_owner = {}, {}
        # rank-local: the fit's validation loader is this rank's shard, so one of the whole
        # set is made for the call (and a DistributedSampler's loader read in order)
        with self._loaders(train=False, fresh=nested and pdist.is_local()):
            dl = pdist.unsharded(self.dls.valid if dl is None else dl)
            if nested:  # a cancel of the outer fit's phases goes on to the outer fit
                self._pass(train=False, dl=dl)
            else:
                self._run_entry(lambda: self._pass(train=False, dl=dl))
        return dict(self.metrics)

    def _make_opt(self) -> None:
        learn = self._learn
        if self._opt is None:
            self._opt = self.opt_func(self.model.parameters(), lr=self._lr)
        elif hasattr(learn.opt, "param_groups"):
            for group in learn.opt.param_groups:
                group["lr"] = learn.lr
        else:
            learn.opt.lr = learn.lr

    def _do_fit(self) -> None:
        pos = self.run.pos
        epoch = pos.epoch
        while epoch < pos.n_epochs:  # read every epoch: a plugin may extend the run
            pos.epoch = epoch
            self._phase("epoch", CancelEpochException, self._do_epoch)
            epoch += 1

    def _do_epoch(self) -> None:
        start = time.perf_counter()
        self.metrics, self.run.metric_owner = {"epoch": self.run.pos.epoch}, {}
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
        pos.n_iter = length_of(dl)
        pos.iter, self._batches = 0, dl
        if train and self.run.resume.position:  # the first pass after a resume: mid-way
            pos.iter = self.run.resume.position  # (the plugins' before_train sees it)
        self.model.train(train)
        with torch.set_grad_enabled(train):
            if train:
                self._phase("train", CancelTrainException, self._run_batches)
            else:
                self._phase("validate", CancelValidateException, self._run_batches)
        merge_metrics(self._learn, "train" if train else "valid")

    def _run_batches(self) -> None:
        run = self.run
        pos = run.pos
        start, self.batch = pos.iter, None
        batches = self._open_epoch(self._batches) if pos.training else self._batches
        for i, batch in enumerate(batches, start):
            pos.iter, self.batch = i, batch
            run.raw_batch = batch
            self._one_batch()
        if self.batch is None and start == 0 and not self._empty_shard():
            which = "train" if pos.training else "validation"
            raise ValueError(
                f"the {which} loader yielded no batch: is its dataset empty, or smaller than "
                "one batch with drop_last=True?"
            )

    def _empty_shard(self) -> bool:
        """This rank's share of a non-empty validation set is empty (fewer items than ranks):
        validation runs no collective, so the rank just has no batch."""
        dataset = self.dls.valid_ds
        return (
            not self.run.pos.training
            and pdist.is_distributed()
            and dataset is not None
            and bool(length_of(dataset))
        )

    def _open_epoch(self, loader: Iterable[Any]) -> Iterable[Any]:
        """The training batches of this pass. A resumed pass continues a stateful loader, or
        replays the interrupted epoch of one without state (:mod:`pluglearn.run.replay`); a
        new epoch of a loader without state first records what decides its order."""
        run = self.run
        resume = run.take_resume()
        if not resume.position:
            if loader_kind(loader) != STATEFUL:
                run.order = epoch_order(self._learn)
            return loader
        n_iter = run.pos.n_iter
        if n_iter is not None and resume.position >= n_iter:
            return ()  # the cut came after the last training batch
        return (
            replay(self._learn, loader, resume)
            if resume.replay
            else resume_stateful(self._learn, loader)
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
                report_error(self._learn, error)
            cleanup_after_error(self._learn, hooks.cleanup_batch, error)
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

    def _predict_batch(self, batch: Any) -> Any:
        """The ``predict`` hook's answer for ``batch`` in eval mode without gradients, inside
        every ``forward_context``; no other hook fires, and the position, batch state and
        modes are put back (``learn.predict``)."""
        hooks, run = self._registry.calls, self.run
        saved = run.capture(self._learn, ("position", "batch", "modes"))
        self.model.eval()
        self.batch, run.pos.training = batch, False
        try:
            with torch.no_grad():
                if hooks.wraps_forward:
                    with hooks.forward_context(self):
                        preds = hooks.predict(self)
                else:
                    preds = hooks.predict(self)
        finally:
            run.put_back(self._learn, saved, "predict")
        if preds is None:
            raise TypeError("no plugin answered 'predict' (every one returned None)")
        return preds

    def _phase(self, name: str, cancel: type[CancelException], body: Callable[[], None]) -> None:
        hooks = self._registry.calls  # one snapshot: every before_X meets its own cleanup_X
        cleanup = getattr(hooks, f"cleanup_{name}")
        try:
            getattr(hooks, f"before_{name}")(self)
            body()
            getattr(hooks, f"after_{name}")(self)
        except cancel as cancelled:
            if name == "fit":
                self.run.stop(cancel_reason(cancelled))
        except BaseException as error:
            if not isinstance(error, CancelException):
                report_error(self._learn, error)
            cleanup_after_error(self._learn, cleanup, error)
            raise
        cleanup(self)

    def _run_entry(self, run: Callable[[], None]) -> None:
        """Run a public entry point (fit, validate): an error that no phase reported (one from
        ``cleanup_fit`` itself) is reported here; a cancel that no phase took becomes an error."""
        self.run.begin_call()
        try:
            run()
        except CancelException as stray:
            raise stray_cancel(self._learn, stray) from stray
        except BaseException as error:
            report_error(self._learn, error)
            raise

    @contextmanager
    def _loaders(self, train: bool = True, fresh: bool = False) -> Iterator[None]:
        """Ask ``make_dataloader`` for the datasets of ``dls`` (the validation one only when not
        ``train``); close the loaders afterwards. ``fresh``: a new validation loader even when
        the fit's exists (a rank-local call inside a fit), the fit's put back afterwards."""
        dls = self.dls
        aside = dls.valid if fresh and dls.valid_ds is not None else None
        if aside is not None:
            dls.valid = None
        try:
            if dls.resolved:
                yield
                return
            made = dls.resolve(self._learn, train=train)
            try:
                yield
            finally:
                dls.release(made)
        finally:
            if aside is not None:
                dls.valid = aside
