"""Recorder: the loss and learning rate of every training batch, and every epoch's metrics.

Example::

    rec = Recorder()
    learn = Learner(model, dls, plugins=[rec])
    learn.fit(3)
    rec.losses[-1], rec.lrs[-1], rec.epochs[-1]["valid_loss"]
    rec.plot("loss.png")                 # needs matplotlib (pip install matplotlib)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..plugins.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


def current_lr(opt: Any) -> float:
    """The learning rate of the optimizer's first parameter group (or its ``lr``)."""
    groups = getattr(opt, "param_groups", None)
    return float(groups[0]["lr"]) if groups else float(opt.lr)


class Recorder:
    """Keeps ``losses`` and ``lrs`` per training batch and ``epochs`` (a metrics dict each).

    Losses are read with ``.item()``, one device sync per batch; give ``every=n`` to record
    one batch in n on accelerators.
    """

    def __init__(self, every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}.")
        self.every = every
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.epochs: list[dict[str, Any]] = []

    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        if learn.training and (learn.train_iter - 1) % self.every == 0:  # steps, not epochs
            self.steps.append(learn.train_iter)
            self.losses.append(learn.loss.item())
            self.lrs.append(current_lr(learn.opt))

    @hookimpl
    def report(self, metrics: dict[str, Any]) -> None:
        self.epochs.append(dict(metrics))

    @hookimpl
    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "losses": self.losses, "lrs": self.lrs, "epochs": self.epochs}

    @hookimpl
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.losses = list(state["steps"]), list(state["losses"])
        self.lrs, self.epochs = list(state["lrs"]), [dict(e) for e in state["epochs"]]

    def plot(self, path: str | Path) -> Path:
        """Write a PNG of the training loss per batch and the validation loss per epoch."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError("Recorder.plot needs matplotlib: pip install matplotlib") from error
        if not self.losses:
            raise ValueError("nothing to plot: the Recorder saw no training batch (run fit first).")
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(self.steps, self.losses, label="train loss (per batch)", alpha=0.7)
        valid = [(e["epoch"], e["valid_loss"]) for e in self.epochs if "valid_loss" in e]
        if valid:
            per_epoch = len(self.steps) / max(len(self.epochs), 1) * self.every
            ax.plot(
                [(ep + 1) * per_epoch for ep, _ in valid],
                [v for _, v in valid],
                "o-",
                label="valid loss (per epoch)",
            )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
