"""Write your own scratch module, train on its hand-written backward, let GradCheck vouch for it.

For: authors of modules with a hand-written backward (pluglearn.scratch.modules.Module) and of
plugins that touch gradients. A scratch Module computes ``forward`` with torch ops and writes
``bwd(out, *inputs)``: read dL/d(out) from ``out.g``, assign ``.g`` on every input (and
parameter). Here a ``Tanh`` module is written from scratch, an MLP using it trains on scikit-
learn's digits with ManualBackward (the optimizer steps on *our* gradients, not autograd's) while
GradCheck compares them with autograd; then a Tanh with a classic slip in its ``bwd`` is caught,
and GradCheck names it. Exits non-zero if the right module fails its check, the wrong one slips
through, or the accuracy misses the target. Runs in a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import sys

import torch

from pluglearn import Accuracy, DataLoaders, Learner
from pluglearn.data.digits import load_digits
from pluglearn.plugins.gradcheck import GradCheck, GradCheckError
from pluglearn.plugins.manual_backward import ManualBackward
from pluglearn.scratch import CrossEntropy, Linear, Module, Sequential

# ----------------------------------------------------------------------------- settings
EPOCHS = 3
BATCH_SIZE = 32
LR = 0.2
HIDDEN = 64
CHECK_EVERY = 20  # GradCheck looks at the first batch and then every 20th training batch
TARGET_ACCURACY = 0.90
SEED = 0
# ---------------------------------------------------------------------------------------


class Tanh(Module):
    """``tanh(x)`` elementwise, with its derivative written out by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)  # (*) -> (*)

    def bwd(self, out: torch.Tensor, x: torch.Tensor) -> None:
        x.g = (1 - out**2) * out.g  # d tanh(x)/dx = 1 - tanh(x)^2, and tanh(x) is out


class SlippedTanh(Tanh):
    """The same module with a classic slip: the derivative evaluated at x, not at tanh(x)."""

    def bwd(self, out: torch.Tensor, x: torch.Tensor) -> None:
        x.g = (1 - x**2) * out.g  # wrong: 1 - x^2 is not 1 - tanh(x)^2


MLP = Sequential


def build(activation: type[Module]) -> MLP:
    g = torch.Generator().manual_seed(SEED)  # the same initial weights for both runs
    layers = [Linear(64, HIDDEN, generator=g), activation(), Linear(HIDDEN, 10, generator=g)]
    return MLP(*layers).requires_grad_(True)  # GradCheck compares with autograd


def learner(activation: type[Module], check: GradCheck, lr: float = LR) -> Learner:
    data = load_digits(seed=SEED)
    dls = DataLoaders.from_datasets(data.train, data.valid, batch_size=BATCH_SIZE, seed=SEED)
    model = build(activation)
    plugins = [check, ManualBackward(), Accuracy()]
    return Learner(model, dls, loss_func=CrossEntropy(), lr=lr, plugins=plugins)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs",
        type=int,
        default=EPOCHS,
        help=f"epochs of the training with the correct Tanh (default: {EPOCHS})",
    )
    parser.add_argument("--lr", type=float, default=LR, help=f"learning rate (default: {LR})")
    parser.add_argument(
        "--check-every",
        type=int,
        default=CHECK_EVERY,
        help="GradCheck compares with autograd on the first training batch and then every "
        f"this many (default: {CHECK_EVERY})",
    )
    parser.add_argument(
        "--target",
        type=float,
        default=TARGET_ACCURACY,
        help="validation accuracy to reach, else the exit status is 1 "
        f"(default: {TARGET_ACCURACY})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(SEED)
    print(f"1. training with {Tanh.__name__}, checked every {args.check_every} batches")
    check = GradCheck(every=args.check_every, show=False)  # show=True prints a table per check
    learn = learner(Tanh, check, lr=args.lr)
    learn.fit(args.epochs)
    n_checks = len({(r.epoch, r.batch) for r in check.results})
    worst = max(r.max_rel for r in check.results)
    accuracy = learn.metrics["accuracy"]
    print(f"GradCheck passed on {n_checks} batches (worst max rel error {worst:.1e})")
    last = (check.results[-1].epoch, check.results[-1].batch)
    print(check.format_table([r for r in check.results if (r.epoch, r.batch) == last]))
    print(f"validation accuracy {accuracy:.4f} (target {args.target})")

    print(f"\n2. the same with {SlippedTanh.__name__}")
    caught = ""
    try:
        learner(SlippedTanh, GradCheck(show=False)).fit(1)
    except GradCheckError as error:
        caught = str(error)
        print(f"caught: {caught}")

    problems = []
    if not check.results or not all(r.ok for r in check.results):
        problems.append("the correct Tanh failed GradCheck")
    if "SlippedTanh.bwd" not in caught:
        problems.append("GradCheck did not catch (or did not name) SlippedTanh")
    if accuracy < args.target:
        problems.append(f"accuracy {accuracy:.4f} is below the target {args.target}")
    print("OK" if not problems else "FAILED: " + "; ".join(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
