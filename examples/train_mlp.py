"""Train the notebook's MLP with the pluglearn Learner: on MNIST (784-50-10) when it is at hand
without a download, else offline on scikit-learn's bundled 8x8 digits (64-50-10).

For: anyone trying pluglearn for the first time; it is the main job of the README.
MNIST is at hand when it is already in the cache or ``PLUGLEARN_MNIST_URL`` names a file or
mirror; the MLP is sized to the data. ``--data digits`` forces the digits, ``--data
mnist`` the cache or download, ``--data PATH_OR_URL`` a pickle in the notebook's layout (or a
folder of IDX files). It shows a progress bar, prints the final accuracy,
writes the loss plot, and exits non-zero when the accuracy misses the target.

``--checkpoints DIR`` makes the run resumable: a checkpoint every epoch, and on Ctrl-C after the
current batch; the script then says which file holds the run and exits 130, and the same
command resumes from it.

Training recipes: ``--one-cycle`` trains with ``learn.fit_one_cycle`` (a one-cycle lr and
momentum schedule peaking at ``--lr``), ``--bf16`` adds ``MixedPrecision(torch.bfloat16)``
(the forward pass and loss under bfloat16 autocast, the weights in float32), ``--lr-find``
picks the lr with ``learn.lr_find()`` first.

    python examples/train_mlp.py
    python examples/train_mlp.py --data ../shared/data/mnist/mnist-t10k-split.pkl.gz --epochs 20
    python examples/train_mlp.py --one-cycle --bf16
    python examples/train_mlp.py --checkpoints runs/mlp      # Ctrl-C, then the same again
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch
from torch import nn

from pluglearn import Accuracy, Checkpoint, DataLoaders, Learner, MixedPrecision, Recorder

# ----------------------------------------------------------------------------- settings
DATA = "auto"  # "auto" (MNIST if available, else digits), "digits", "mnist", or a path / URL
EPOCHS = 10
BATCH_SIZE = 64
LR = 0.05
MOMENTUM = 0.9
HIDDEN = 50
SEED = 0
PLOT = "loss.png"  # "" to skip the plot
CHECKPOINTS = ""  # a directory to checkpoint every epoch and resume from, "" for none
TARGET = {"digits": 0.93, "mnist": 0.95}  # minimum validation accuracy, by kind of data
# ---------------------------------------------------------------------------------------


def load(
    data: str,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], str]:
    """(train, valid, kind) where kind names the target: "digits" or "mnist"."""
    if data == "auto":
        from pluglearn.data.mnist import mnist_available

        data = "mnist" if mnist_available() else "digits"
    if data == "digits":
        from pluglearn.data.digits import load_digits

        splits = load_digits(seed=SEED)
        return splits.train, splits.valid, "digits"
    from pluglearn.data.mnist import load_mnist

    splits = load_mnist(None if data == "mnist" else data)
    return splits.train, splits.valid, "mnist"


def interrupted(checkpoint: Checkpoint | None, argv: list[str]) -> str:
    """The one line a Ctrl-C ends the script with: what was saved and how to go on."""
    if checkpoint is None:
        return "interrupted: nothing was saved (--checkpoints DIR makes a run resumable)"
    command = shlex.join(["python", sys.argv[0], *argv])  # the same command resumes
    if checkpoint.latest is None:  # a second Ctrl-C before the first save
        return f"interrupted before the first checkpoint; start again with: {command}"
    return f"interrupted: the newest checkpoint is {checkpoint.latest}; resume with: {command}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        default=DATA,
        help="auto (MNIST if available without a download, else digits), digits (offline), "
        "mnist (cache or $PLUGLEARN_MNIST_URL), or a pickle / IDX folder / URL "
        f"(default: {DATA})",
    )
    parser.add_argument(
        "--epochs", type=int, default=EPOCHS, help=f"epochs to train (default: {EPOCHS})"
    )
    parser.add_argument("--lr", type=float, default=LR, help=f"learning rate (default: {LR})")
    parser.add_argument(
        "--plot", default=PLOT, help=f'loss plot to write, "" for none (default: {PLOT})'
    )
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="minimum validation accuracy; below it the script exits 1 "
        f"(default: {TARGET['digits']} on digits, {TARGET['mnist']} on MNIST)",
    )
    parser.add_argument(
        "--checkpoints",
        default=CHECKPOINTS,
        help="directory: a checkpoint every epoch and at Ctrl-C; resume from the newest there "
        "when there is one",
    )
    parser.add_argument(
        "--lr-find",
        action="store_true",
        help="run learn.lr_find() first, print its suggestion and train with it instead of --lr",
    )
    parser.add_argument(
        "--one-cycle",
        action="store_true",
        help="train with learn.fit_one_cycle: the lr rises to --lr (or the lr_find suggestion) "
        "and anneals, the momentum moves the other way",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="mixed precision: the forward pass and loss under bfloat16 autocast "
        "(MixedPrecision(torch.bfloat16)); the weights stay float32",
    )
    args = parser.parse_args(argv)

    torch.manual_seed(SEED)
    try:
        (x_train, y_train), (x_valid, y_valid), kind = load(args.data)
    except (OSError, ValueError) as error:  # download, checksum, missing file, unknown format
        if args.data == "digits":
            raise
        # the same two lines as examples/from_scratch.py: what failed, then what to do
        print(
            f"could not load MNIST from {args.data!r}: {error}\n"
            "Train offline on scikit-learn's bundled digits with --data digits, or point to a "
            "local copy with --data PATH (the notebook's pickle or a folder of IDX files).",
            file=sys.stderr,
        )
        return 2
    # normalise with the training set's statistics, as the notebook does
    mean, std = x_train.mean(), x_train.std()
    x_train, x_valid = (x_train - mean) / std, (x_valid - mean) / std
    n_in, n_out = x_train.shape[1], int(y_train.max()) + 1

    model = nn.Sequential(nn.Linear(n_in, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, n_out))
    dls = DataLoaders.from_datasets(
        (x_train, y_train), (x_valid, y_valid), batch_size=BATCH_SIZE, seed=SEED
    )
    recorder = Recorder()

    def sgd(params, lr):
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)

    plugins: list[object] = [Accuracy(), recorder]
    if args.bf16:
        plugins.append(MixedPrecision(torch.bfloat16))
    checkpoint = Checkpoint(args.checkpoints, keep_last=2) if args.checkpoints else None
    if checkpoint is not None:
        plugins.append(checkpoint)
    learn = Learner(model, dls, opt_func=sgd, lr=args.lr, plugins=plugins)
    print(f"{kind}: {len(x_train)} train / {len(x_valid)} valid items, MLP {n_in}-{HIDDEN}-{n_out}")
    try:
        if args.lr_find:
            found = learn.lr_find()
            if found.suggestion is None:  # lr_find warned why (a loss not finite from the start)
                print(f"lr_find: no suggestion ({'; '.join(found.notes)}): keeping lr {learn.lr}")
            else:
                print(f"lr_find: {len(found.lrs)} batches, suggested lr {found.suggestion:.3g}")
                learn.lr = found.suggestion
        recipes = [name for name, on in (("one-cycle", args.one_cycle), ("bf16", args.bf16)) if on]
        if recipes:
            print(f"recipes: {', '.join(recipes)}")
        # with --checkpoints: go on from the newest checkpoint there, or start when there is none
        resume = {"resume_from": args.checkpoints, "missing_ok": True} if args.checkpoints else {}
        if args.one_cycle:
            learn.fit_one_cycle(args.epochs, lr_max=learn.lr, **resume)
        else:
            learn.fit(args.epochs, **resume)
    except KeyboardInterrupt:  # the Checkpoint plugin saved after the batch (or a 2nd Ctrl-C)
        print(interrupted(checkpoint, sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return 130

    # the same command after the run finished resumes it with nothing left to train: measure
    metrics = learn.metrics if "accuracy" in learn.metrics else learn.validate()
    accuracy = metrics["accuracy"]
    target = args.target if args.target is not None else TARGET[kind]
    print(f"trained at base lr {learn.lr:.3g}")
    print(f"final validation accuracy: {accuracy:.4f} (target {target:.2f})")
    if args.plot:
        try:
            print(f"loss plot written to {recorder.plot(args.plot)}")
        except ImportError as error:
            print(f"no plot: {error}")
    if accuracy < target:
        print(f"FAILED: accuracy {accuracy:.4f} is below the target {target:.2f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
