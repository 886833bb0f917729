"""Recorder: the loss, lr and momentum of every training batch, and every epoch's metrics.

Example::

    rec = Recorder()
    learn = Learner(model, dls, plugins=[rec])
    learn.fit(3)
    rec.losses[-1], rec.lrs[-1], rec.moms[-1], rec.epochs[-1]["valid_loss"]
    rec.plot()                           # a matplotlib Figure (shows inline in a notebook)
    rec.plot("loss.png")                 # writes the file (pip install matplotlib)

``lrs[i]`` and ``moms[i]`` are the values batch ``i`` was trained with: they are read before the
batch runs (after every other plugin's ``before_batch``), so a scheduler stepped in
``after_step`` shows up from the next batch on, as in a hand-written loop. ``epochs`` holds each
epoch's reported metrics, whose ``"epoch"`` counts from 0 (the data convention; reporters show
people ``epoch 1/3``). ``validations`` holds every validation's metrics with its ``step`` (the
training batches run before it): each epoch's, and those ``fit(valid_every=n)`` runs between
epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..distributed.ranks import is_main_process
from ..hooks.markers import hookimpl
from .notebook import show_figures_inline
from .validate_every import is_step_report

#: the keys of an epoch's report that are not of its validation
TRAIN_KEYS = frozenset({"epoch", "step", "time", "train_loss"})

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..learner import Learner


def current_lr(opt: Any) -> float:
    """The learning rate of the optimizer's first parameter group (or its ``lr``)."""
    groups = getattr(opt, "param_groups", None)
    return float(groups[0]["lr"]) if groups else float(opt.lr)


def current_momentum(opt: Any) -> float | None:
    """The momentum of the first parameter group (``betas[0]`` for Adam-like), or None."""
    groups = getattr(opt, "param_groups", None)
    group = groups[0] if groups else vars(opt) if hasattr(opt, "__dict__") else {}
    if "betas" in group:
        return float(group["betas"][0])
    if "momentum" in group:
        return float(group["momentum"])
    return None


class Recorder:
    """Keeps ``losses``, ``lrs`` and ``moms`` per training batch and ``epochs`` (a dict each).

    ``steps`` numbers the recorded batches by training batches run over the Learner's life
    (1-based). Losses are read with ``.item()``, one device sync per batch; give ``every=n`` to
    record one batch in n on accelerators.
    """

    def __init__(self, every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}.")
        self.every = every
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.moms: list[float | None] = []
        self.epochs: list[dict[str, Any]] = []
        self.validations: list[dict[str, Any]] = []
        self._used: tuple[float, float | None] | None = None

    @hookimpl(trylast=True)  # after any plugin that sets this batch's lr in before_batch
    def before_batch(self, learn: Learner) -> None:
        if not learn.training:  # a validation batch, maybe of a validate() run from a
            return  # training hook between this batch's before_batch and after_batch
        self._used = None
        if learn.train_iter % self.every == 0:
            self._used = current_lr(learn.opt), current_momentum(learn.opt)

    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        if learn.training and self._used is not None:
            self.steps.append(learn.train_iter)
            assert learn.loss is not None  # a training batch that ran to after_batch has one
            self.losses.append(learn.loss.item())
            self.lrs.append(self._used[0])
            self.moms.append(self._used[1])
            self._used = None

    @hookimpl
    def report(self, learn: Learner, metrics: dict[str, Any]) -> None:
        if not is_step_report(metrics):
            self.epochs.append(dict(metrics))
        if any(k not in TRAIN_KEYS and not k.startswith("train_") for k in metrics):
            self.validations.append({"step": learn.train_iter, **metrics})

    @hookimpl
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "losses": self.losses,
            "lrs": self.lrs,
            "moms": self.moms,
            "epochs": self.epochs,
            "validations": self.validations,
        }

    @hookimpl
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.losses = list(state["steps"]), list(state["losses"])
        self.lrs, self.epochs = list(state["lrs"]), [dict(e) for e in state["epochs"]]
        self.moms = list(state.get("moms", [None] * len(self.lrs)))
        self.validations = [dict(v) for v in state.get("validations", [])]

    def plot(self, path: str | Path | None = None) -> Figure | Path:
        """Plot the training loss per batch (with the validation loss per epoch) above the
        learning rate per batch. Without ``path``, return the matplotlib ``Figure`` (a notebook
        shows it once, inline); with one, write the image there and return the path."""
        try:
            from matplotlib.figure import Figure
        except ImportError as error:
            raise ImportError("Recorder.plot needs matplotlib: pip install matplotlib") from error
        if not self.losses:
            raise ValueError("nothing to plot: the Recorder saw no training batch (run fit first).")
        fig = Figure(figsize=(7, 6))  # not pyplot: no global figure, no second inline display
        loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
        loss_ax.plot(self.steps, self.losses, label="train loss (per batch)", alpha=0.7)
        valid = [(v["step"], v["valid_loss"]) for v in self.validations if "valid_loss" in v]
        if valid:  # each validation at the training batch it followed
            loss_ax.plot([s for s, _ in valid], [v for _, v in valid], "o-", label="valid loss")
        loss_ax.set_ylabel("loss")
        loss_ax.legend()
        lr_ax.plot(self.steps, self.lrs, color="tab:green")
        lr_ax.set_ylabel("learning rate")
        lr_ax.set_xlabel("training batch")
        fig.tight_layout()
        if path is None:
            show_figures_inline()  # a notebook that never imported pyplot shows it too
            return fig
        path = Path(path)
        if is_main_process():  # under DDP every rank holds the same record: rank 0 writes
            fig.savefig(path, dpi=100)
        return path
