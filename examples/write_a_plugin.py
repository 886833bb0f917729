"""Write a plugin: stop training once the validation accuracy reaches a target.

For: users who want to change the loop. A plugin is any object whose methods carry @hookimpl;
each method is a hook of pluglearn.hooks.specs and receives the Learner as ``learn``.
This one shows the three tools of plugin authors: @hookimpl, tryfirst (run before the other
plugins of that hook) and a cancel exception (CancelFitException ends the fit cleanly).
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from pluglearn import Accuracy, CancelFitException, DataLoaders, Learner, hookimpl
from pluglearn.data.digits import load_digits

# ----------------------------------------------------------------------------- settings
TARGET_ACCURACY = 0.95
MAX_EPOCHS = 30
LR = 0.3
# ---------------------------------------------------------------------------------------


class StopAtAccuracy:
    """Ends the fit after the first epoch whose validation accuracy reaches ``target``."""

    def __init__(self, target: float) -> None:
        self.target = target
        self.stopped_at: int | None = None

    @hookimpl
    def before_fit(self, learn: Learner) -> None:
        self.stopped_at = None

    @hookimpl(tryfirst=True)  # decide before any other after_epoch plugin (e.g. a checkpoint)
    def after_epoch(self, learn: Learner) -> None:
        accuracy = learn.metrics.get("accuracy")
        if accuracy is None:
            raise KeyError("StopAtAccuracy needs an accuracy metric: add Accuracy() to the plugins")
        if accuracy >= self.target:
            self.stopped_at = learn.epoch
            # the Learner records who stopped it: "StopAtAccuracy: accuracy 0.9540 >= 0.95"
            raise CancelFitException(f"accuracy {accuracy:.4f} >= {self.target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target",
        type=float,
        default=TARGET_ACCURACY,
        help=f"validation accuracy at which the plugin stops the fit (default: {TARGET_ACCURACY})",
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=MAX_EPOCHS,
        help=f"epochs to run at most (default: {MAX_EPOCHS})",
    )
    parser.add_argument("--lr", type=float, default=LR, help=f"learning rate (default: {LR})")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = load_digits(seed=0)
    dls = DataLoaders.from_datasets(data.train, data.valid, batch_size=64, seed=0)
    model = nn.Sequential(nn.Linear(64, 50), nn.ReLU(), nn.Linear(50, 10))
    stop = StopAtAccuracy(args.target)
    learn = Learner(model, dls, lr=args.lr, plugins=[Accuracy(), stop])
    learn.show_hooks()  # where our plugin sits in each hook's call order
    learn.fit(args.max_epochs)
    print(f"stopped: {learn.stop_reason}")
    # the check of our own result: it stopped early, at an epoch that met the target
    ok = stop.stopped_at is not None and stop.stopped_at < args.max_epochs - 1
    ok = ok and learn.metrics["accuracy"] >= args.target
    print("OK" if ok else "FAILED: the plugin did not stop the fit at the target")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
