"""The Learner: what a user calls (fit, validate, get_preds, predict, lr_find, save, load) and
the plugins it runs. The fixed loop itself is :mod:`pluglearn.loop`; the run state is
:mod:`pluglearn.run.state`; every hook is documented in :mod:`pluglearn.hooks.specs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from fastcore.basics import listify
from torch import nn

from .data.batch_ops import inputs_of, targets_of
from .data.loaders import DataLoaders
from .diagnostics.input_checks import KEEP_LR, KeepLr, check_lr
from .distributed import ranks as pdist
from .loop import Loop
from .plugins.budget import StepBudget
from .plugins.defaults import PluginSet
from .plugins.scheduler import fit_one_cycle
from .run.metrics import GatherPreds
from .run.state import SWEEP, RunState


def position_property(name: str, doc: str) -> Any:
    """A read-only Learner attribute showing ``learn.run.pos.<name>``; assigning it is an error
    that says which transition changes it."""

    def get(learn: Any) -> Any:
        return getattr(learn.run.pos, name)

    def set_(learn: Any, value: Any) -> None:
        how = (
            "learn.run.extend(n) changes the epochs of a running fit"
            if name == "n_epochs"
            else "it is the loop's own position"
        )
        raise AttributeError(
            f"learn.{name} is read-only ({how}): plugins read the position and change the run "
            "through named transitions (learn.run.stop(reason), learn.run.extend(n_epochs)) or "
            "by raising a CancelXException."
        )

    return property(get, set_, doc=doc)


class Learner(Loop):
    """Trains ``model`` on ``dls`` with ``loss_func`` and an optimizer made by ``opt_func``.

    Plugins run in list order for every hook. A bare Learner has the default plugins
    ``AvgLoss`` (train/valid loss), ``ProgressBar``, and the providers ``TrainStep``,
    ``DefaultLoader`` (which answer last, so any plugin can replace them) and ``Device``.
    ``defaults=False`` leaves out ``AvgLoss`` and ``ProgressBar``; a plugin of the same class
    as a default replaces it; ``learn.remove_plugin("ProgressBar")`` removes one by name.

    ``device=None`` trains on the best device the machine has (CUDA, then MPS, then the CPU);
    ``device="cpu"`` forces one, and one the machine lacks is an error naming those it has. A
    ``Device(...)`` plugin, given here or to ``fit``, wins over the default (``learn.device``
    says where it trains).

    Example::

        learn = Learner(model, DataLoaders.from_datasets((x, y), (xv, yv)), lr=0.1)
        learn.fit(3)
        print(learn)            # the model, data, optimizer, lr, device and plugins

    The position attributes (``epoch``, ``iter``, ``training``, ...) and ``stop_reason`` show
    ``learn.run`` (:class:`~pluglearn.run.state.RunState`), the one owner of the run state;
    they are read-only: a plugin changes the run through its named transitions
    (``learn.run.stop(reason)``, ``learn.run.extend(n_epochs)``) or by raising a cancel.
    """

    epoch = position_property("epoch", "The epoch running (0-based), or the next to run.")
    n_epochs = position_property("n_epochs", "The epochs of the current fit.")
    iter = position_property("iter", "The batch index (0-based) in the current pass.")
    n_iter = position_property("n_iter", "The batches of the current pass (None: no length).")
    training = position_property("training", "True in a train pass, False in validation.")
    train_iter = position_property("train_iter", "Training batches run over the Learner's life.")
    opt_steps = position_property("opt_steps", "Optimizer steps taken over the Learner's life.")
    will_step = position_property("will_step", "Training: this batch ends with an optimizer step.")

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
        block_plugins: Iterable[str] = (),
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(dls, DataLoaders):
            raise TypeError(
                f"dls must be a pluglearn DataLoaders, got {type(dls).__name__}: wrap your loaders "
                "as DataLoaders(train_dl, valid_dl) or use DataLoaders.from_datasets(...)."
            )
        self.model, self.dls, self.loss_func, self.opt_func = model, dls, loss_func, opt_func
        self._lr = check_lr(lr)
        self._opt: Any = None
        # what the default predict calls: a wrapper of ``model`` (DistributedDataParallel, a
        # compiled module) set by a plugin for a fit, else None; ``model`` stays the user's own
        self.wrapped_model: nn.Module | None = None
        self.run = RunState()
        self.dl: Iterable[Any] | None = None
        self.batch: Any = None
        self.preds: Any = None
        self.loss: torch.Tensor | None = None
        self.metrics: dict[str, Any] = {}
        self._batches: Iterable[Any] = ()
        self._registry = PluginSet(
            model, listify(plugins), defaults=defaults, block_plugins=block_plugins, device=device
        )

    # ------------------------------------------------------------------------ run settings

    @property
    def lr(self) -> float:
        """The run's base lr: what ``fit`` sets the optimizer's groups to when it starts (a
        scheduler then changes ``learn.opt.param_groups``, not this)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        if self.run.running is not None:
            raise RuntimeError(
                f"learn.lr = {value!r} during {self.run.running}(): the base lr is fixed for a "
                "run (a resume and the scheduler rely on it). To change the lr mid-run set "
                "learn.opt.param_groups[i]['lr'], or use Scheduler(...); for the next fit pass "
                "fit(..., lr=...) or set learn.lr between fits."
            )
        self._lr = check_lr(value)

    @property
    def opt(self) -> Any:
        """The optimizer: made by ``opt_func`` at the first ``fit`` and kept across fits."""
        return self._opt

    @opt.setter
    def opt(self, value: Any) -> None:
        if self.run.running is not None and not self.run.setting_up:
            raise RuntimeError(
                f"learn.opt was replaced during {self.run.running}(), after the run was set up: "
                "plugins such as Scheduler and the checkpoints hold the optimizer made at the "
                "fit's start. Replace it in an after_create_opt hook (tryfirst, before "
                "schedulers are built), or pass opt_func= to the Learner."
            )
        self._opt = value

    @property
    def stop_reason(self) -> str | None:
        """Who ended the last fit early, and why (None when it ran to its end)."""
        return self.run.stop_reason

    @stop_reason.setter
    def stop_reason(self, value: str | None) -> None:
        raise AttributeError(
            "learn.stop_reason is read-only: to end a fit, raise CancelFitException('why') from "
            "a hook (the Learner records your plugin's name and the message), or call "
            "learn.run.stop('who: why') before raising it."
        )

    # ------------------------------------------------------------------------------ plugins

    @property
    def plugins(self) -> list[object]:
        """The registered plugins in call order (before ``tryfirst``/``trylast``)."""
        return list(self._registry)

    def add_plugin(self, plugin: object) -> str:
        """Register ``plugin`` after the user's plugins, before the defaults; returns its name.
        A :class:`~pluglearn.Device` replaces the default one until it is removed."""
        return self._registry.add_before_defaults(plugin)

    def remove_plugin(self, plugin: object | str) -> object:
        """Unregister a plugin given as the object or its name; returns it."""
        return self._registry.remove_and_restore(plugin)

    @property
    def device(self) -> torch.device:
        """Where the Learner trains: its ``Device`` plugin's device (the default one picks the
        best available), else, when that plugin was removed, where the model's parameters are."""
        return self._registry.device(self.model)

    @device.setter
    def device(self, value: Any) -> None:
        raise AttributeError(
            f"learn.device = {value!r}: the device is chosen when the Learner is made: pass "
            f"Learner(..., device={str(value)!r}), or give one fit its own plugin: "
            f"learn.fit(n, plugins=[Device({str(value)!r})])."
        )

    def plugin(self, name: str) -> object:
        """The registered plugin named ``name`` (its class name, or ``name_2`` for a second)."""
        return self._registry.get(name)

    def summary(self, batch: Any = None) -> str:
        """The model's layers in the order they run, their output shapes and parameter counts, from
        one real forward pass (eval mode, no gradients) on ``batch`` or the first validation
        (else training) batch, and the totals; the model, modes, random states and loaders are
        put back, so a fit after it is the fit without it. See :mod:`pluglearn.diagnostics.summary`.

        Example: ``print(learn.summary())``, or ``learn.summary()`` at a prompt."""
        from .diagnostics.summary import summary

        return summary(self, batch)

    def show_summary(self, batch: Any = None) -> None:
        """Print :meth:`summary`."""
        print(self.summary(batch))

    def __repr__(self) -> str:
        from .diagnostics.summary import describe

        return describe(self)

    def show_hooks(self) -> None:
        """Print the resolved call order of every hook (``hooks_table()`` returns it)."""
        print(self.hooks_table())

    def hooks_table(self) -> str:
        """The resolved call order of every hook, one line each."""
        return self._registry.describe()

    @property
    def xb(self) -> Any:
        """The batch's inputs: ``batch[0]`` of a pair, a dict batch without its ``labels``."""
        return inputs_of(self.batch)

    @property
    def yb(self) -> Any:
        """The batch's targets: ``batch[1]`` of a pair, ``batch["labels"]`` of a dict batch."""
        return targets_of(self.batch)

    def __getattr__(self, name: str) -> Any:
        """Runs only when a lookup misses: a public name gets what to use instead
        (``learn.optimizer`` -> ``learn.opt``); private and dunder names fail plainly, as
        pickle, copy and ``hasattr`` expect. The attributes: ``docs/learner_state.md``."""
        if name.startswith("_"):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")
        if hasattr(type(self), name):  # a property that raised AttributeError itself: re-raise
            return object.__getattribute__(self, name)
        from .diagnostics.attribute_suggestions import missing_attribute

        raise missing_attribute(self, name)

    # ----------------------------------------------------------------------------- public

    def fit(
        self,
        n_epochs: int | None = None,
        lr: float | KeepLr = KEEP_LR,
        plugins: object | Sequence[object] = (),
        *,
        resume_from: Any = None,
        missing_ok: bool = False,
        max_steps: int | None = None,
        valid_every: int | None = None,
    ) -> None:
        """Train for ``n_epochs`` (a train pass then a validate pass each). ``plugins`` live for
        this fit only and are removed afterwards, also after an error. ``lr`` becomes
        ``learn.lr``; left out, the fit trains at ``learn.lr`` (``lr=None`` is refused: it is
        what ``lr_find`` suggests when it found nothing).

        ``resume_from`` (a checkpoint file or directory) continues an interrupted fit exactly
        where it stopped; with ``missing_ok=True`` a directory that holds no checkpoint yet
        starts a fresh fit (a restart script can run the same command every time). A resumed
        run keeps the lr it was started with: ``lr`` may be omitted, and a different one is
        refused (``learn.lr`` is the run's base lr; ``learn.opt.param_groups`` hold the current
        ones, which a scheduler may have changed).

        ``max_steps`` ends the fit after that many optimizer steps; without ``n_epochs`` it runs
        the epochs they need, the last one partial (see :mod:`pluglearn.plugins.budget`).
        ``valid_every`` also validates every that many optimizer steps, each validation reported
        with its step (see :mod:`pluglearn.plugins.validate_every`)."""
        if n_epochs is None and max_steps is None:
            raise ValueError(
                "fit() needs n_epochs and/or max_steps, e.g. fit(3), fit(max_steps=500)."
            )
        if n_epochs is not None and (
            isinstance(n_epochs, bool) or not isinstance(n_epochs, int) or n_epochs < 0
        ):
            raise ValueError(f"n_epochs must be an int >= 0, got {n_epochs!r}.")
        if max_steps is not None:
            plugins = [*listify(plugins), StepBudget(max_steps, epochs_from_steps=n_epochs is None)]
        if valid_every is not None:
            from .plugins.validate_every import ValidateEvery

            plugins = [*listify(plugins), ValidateEvery(valid_every)]
        if missing_ok and resume_from is None:
            raise ValueError("missing_ok=True goes with resume_from=...: pass the directory.")
        new_lr = None if lr is KEEP_LR else check_lr(lr)
        with self.run.entry("fit"):
            self._fit(n_epochs or 0, new_lr, plugins, resume_from, missing_ok)

    def fit_one_cycle(
        self,
        n_epochs: int | None,
        lr_max: float,
        plugins: object | Sequence[object] = (),
        **kw: Any,
    ) -> None:
        """``fit`` with a one-cycle lr and momentum schedule (``OneCycleLR``) over its optimizer
        steps; see :func:`pluglearn.plugins.scheduler.fit_one_cycle` for the options."""
        fit_one_cycle(self, n_epochs, lr_max, plugins, **kw)

    def validate(self, dl: Iterable[Any] | None = None) -> dict[str, Any]:
        """One validation pass (eval mode, no gradients); returns its metrics. Called from a
        training hook (validate every n batches), it leaves training exactly as it was. Under
        torch.distributed it is rank-local (:func:`pluglearn.distributed.ranks.local`): it reads the
        whole validation set on this rank alone, so one rank may call it (not under ``FSDP``)."""
        with self.run.entry("validate") as nested, pdist.local():
            if nested:
                return self._nested(lambda: self._validate(dl, nested=True))
            return self._validate(dl)

    def get_preds(self, dl: Iterable[Any] | None = None) -> tuple[Any, Any]:
        """Predictions and targets over the validation set (or ``dl``), concatenated."""
        gather = GatherPreds()
        self._registry.add(gather)
        try:
            self.validate(dl)
        finally:
            self._registry.remove(gather)
        return gather.result()

    def predict(self, x: Any, *, batched: bool | None = None) -> Any:
        """Predictions for one item or a batch ``x`` (eval mode, no gradients; every module's
        train/eval mode is put back). ``batched=None`` tells them apart by the dataset's items; one
        item gives its prediction without the batch dimension. See
        :mod:`pluglearn.inference.predict`."""
        from .inference.predict import predict

        with self.run.entry("predict") as nested, pdist.local():
            if nested:
                return self._nested(lambda: predict(self, x, batched))
            return predict(self, x, batched)

    def lr_find(
        self,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        num_it: int = 100,
        stop_div: bool = True,
    ) -> Any:
        """Sweep the lr exponentially from ``start_lr`` to ``end_lr`` over ``num_it`` training
        batches and return an :class:`~pluglearn.plugins.lr_find.LRFindResult` (``.suggestion``,
        ``.plot()``). The sweep is a throwaway fit with the
        :class:`~pluglearn.plugins.lr_find.LRFinder` plugin, inside a capture and restore of the
        whole run (weights, optimizer, random states, loaders, plugins' states): a fit after it
        equals one without it, bit for bit."""
        from .checkpoint.plugin import Checkpoint
        from .plugins.lr_find import LRFinder

        finder = LRFinder(start_lr, end_lr, num_it, stop_div)
        if self.dls.train is None and self.dls.train_ds is None:
            raise ValueError("lr_find needs training data: build DataLoaders with a train set.")
        with self.run.entry("lr_find"):
            snapshot = self.run.capture(self, SWEEP)
            # its checkpoints would be of a throwaway run that a later resume could pick up
            aside = [(i, p) for i, p in enumerate(self.plugins) if isinstance(p, Checkpoint)]
            for _, plugin in aside:
                self._registry.remove(plugin)
            try:
                self._fit(1, None, [finder])  # the finder extends it to the passes it needs
            finally:
                try:
                    self.run.put_back(self, snapshot, "lr_find")
                finally:
                    for index, plugin in aside:
                        self._registry.add(plugin, index=index)
        return finder.result()

    def save(self, path: Any) -> Any:
        """Write the model's weights to ``path`` (safetensors, atomically); see
        :func:`pluglearn.checkpoint.weights.save_weights`. Returns the path written."""
        from .checkpoint.weights import save_weights

        return save_weights(self.model, path)

    def load(self, path: Any) -> None:
        """Load weights written by ``save`` (or any state dict file) into the model, checking
        every key and shape first; see :func:`pluglearn.checkpoint.weights.load_weights`."""
        from .checkpoint.weights import load_weights

        load_weights(self.model, path)

    def export(
        self, path: Any, *, model_args: dict[str, Any] | None = None, pickle: bool = False
    ) -> Any:
        """Write what inference needs to one file (weights as safetensors, and JSON to rebuild
        the model, its predict plugins and loss); ``pluglearn.load_learner(path)`` reads it back
        in a fresh process without unpickling. Refused now, naming the fix (``model_args=``),
        when the model could not be rebuilt from it; ``pickle=True`` pickles the model instead
        (unsafe to load from untrusted files). See :mod:`pluglearn.inference.export`."""
        from .inference.export import export

        return export(self, path, model_args=model_args, pickle=pickle)
