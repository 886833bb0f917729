"""Walk the notebook "Implementing a Neural Network from Scratch", then hand the model to pluglearn.

For: learners of the course, reading along with the notebook. Each step prints what it shows:

1. the data: MNIST when it is at hand (``--data PATH_OR_URL``, ``$PLUGLEARN_MNIST_URL``, or a
   copy in pluglearn's cache), else scikit-learn's bundled 8x8 digits (offline, 64 features);
2. a forward pass by hand with ``lin`` and ``relu``, against ``torch.nn.functional``;
3. the manual backward of a scratch MLP against autograd (the largest difference);
4. the naive log_softmax overflowing on large logits where the stable one stays finite;
5. a training loop by hand: the scratch ``DataLoader``, manual backward and scratch ``SGD``;
6. the same model trained by the ``Learner``, with ``GradCheck`` comparing its backward with
   autograd and ``MultiprocessLoader`` making batches in 2 worker processes (progress bar on).

It checks its own results at the end and exits non-zero when one misses. Offline on the digits
it runs in a few seconds on a CPU.

    python examples/from_scratch.py
    python examples/from_scratch.py --data ../shared/data/mnist/mnist-t10k-split.pkl.gz
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

from pluglearn import Accuracy, DataLoaders, Learner
from pluglearn.plugins.gradcheck import GradCheck
from pluglearn.plugins.multiprocess_loader import MultiprocessLoader
from pluglearn.scratch import (
    MLP,
    SGD,
    BatchSampler,
    CrossEntropy,
    DataLoader,
    Dataset,
    Sampler,
    accuracy,
    lin,
    log_softmax,
    log_softmax_naive,
    relu,
)

# ----------------------------------------------------------------------------- settings
DATA = None  # None: MNIST if --data, $PLUGLEARN_MNIST_URL or the cache has it, else "digits"
HIDDEN = 50
BATCH_SIZE = 64
LR = 0.2
EPOCHS = 3  # for the loop by hand and for the Learner alike
N_WORKERS = 2  # MultiprocessLoader's worker processes
CHECK_EVERY = 50  # GradCheck compares the first batch and every 50th with autograd
GRAD_TOL = 1e-4  # largest manual-vs-autograd difference, relative to the largest gradient
TARGET_ACCURACY = 0.90  # validation accuracy both trainings must reach
SEED = 0
# ---------------------------------------------------------------------------------------

Pair = tuple[torch.Tensor, torch.Tensor]


def cached_mnist() -> str | None:
    """A copy of the MNIST pickle in pluglearn's download cache, if one is there."""
    from pluglearn.data.mnist import default_cache_dir

    found = sorted((default_cache_dir() / "mnist").glob("*/*.pkl*"))
    return str(found[0]) if found else None


def load(data: str | None) -> tuple[Pair, Pair, str]:
    """(train, valid, description); never touches the network unless a URL is asked for."""
    from pluglearn.data.digits import load_digits
    from pluglearn.data.mnist import load_mnist

    source = data or os.environ.get("PLUGLEARN_MNIST_URL")
    if source is None and (cached := cached_mnist()) is not None:
        try:  # a copy found in the cache, not asked for: if it is unreadable, say so and go on
            splits = load_mnist(cached)
            return splits.train, splits.valid, f"MNIST from the cache ({cached})"
        except (OSError, ValueError) as error:
            print(f"   (skipping the cached MNIST: {error})")
    if source is None or source == "digits":
        splits = load_digits(seed=SEED)
        return splits.train, splits.valid, "scikit-learn digits (8x8, offline)"
    splits = load_mnist(None if source == "mnist" else source)
    return splits.train, splits.valid, f"MNIST from {source}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=DATA,
        help="digits (offline), mnist (cache or $PLUGLEARN_MNIST_URL), or a path / URL of an "
        f"MNIST pickle (default: {DATA})",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=EPOCHS,
        help=f"epochs of each training, by hand and by the Learner (default: {EPOCHS})",
    )
    parser.add_argument(
        "--target",
        type=float,
        default=TARGET_ACCURACY,
        help="validation accuracy both trainings must reach, else the exit status is 1 "
        f"(default: {TARGET_ACCURACY})",
    )
    args = parser.parse_args(argv)
    torch.manual_seed(SEED)
    problems: list[str] = []

    # 1. data, normalised with the training set's statistics
    try:
        (x_train, y_train), (x_valid, y_valid), what = load(args.data)
    except (OSError, ValueError) as error:  # download, checksum, missing file, unknown format
        if args.data == "digits":
            raise
        asked = args.data or os.environ.get("PLUGLEARN_MNIST_URL")
        # the same two lines as examples/train_mlp.py: what failed, then what to do
        print(
            f"could not load MNIST from {asked!r}: {error}\n"
            "Train offline on scikit-learn's bundled digits with --data digits, or point to a "
            "local copy with --data PATH (the notebook's pickle or a folder of IDX files).",
            file=sys.stderr,
        )
        return 2
    mean, std = x_train.mean(), x_train.std()
    x_train, x_valid = (x_train - mean) / std, (x_valid - mean) / std
    n_in, n_out = x_train.shape[1], int(y_train.max()) + 1
    print(f"1. data: {what}: {len(x_train)} train / {len(x_valid)} valid, {n_in} features")

    # 2. a forward pass by hand: (n, in) -> (n, hidden) -> (n, out)
    xb, yb = x_train[:BATCH_SIZE], y_train[:BATCH_SIZE]
    g = torch.Generator().manual_seed(SEED)
    w1, b1 = torch.randn(n_in, HIDDEN, generator=g) * (2 / n_in) ** 0.5, torch.zeros(HIDDEN)
    w2, b2 = torch.randn(HIDDEN, n_out, generator=g) * (2 / HIDDEN) ** 0.5, torch.zeros(n_out)
    out = lin(relu(lin(xb, w1, b1)), w2, b2)  # lin(x, w, b) = x @ w + b, w is (in, out)
    torch_out = F.linear(F.relu(F.linear(xb, w1.T, b1)), w2.T, b2)  # torch's weights: (out, in)
    forward_diff = (out - torch_out).abs().max().item()
    print(f"2. forward by hand: {tuple(xb.shape)} -> {tuple(out.shape)}, ", end="")
    print(f"largest difference from torch.nn.functional {forward_diff:.1e}")
    if forward_diff > 1e-5:
        problems.append(f"the forward pass differs from torch by {forward_diff:.1e}")

    # 3. the manual backward of a scratch MLP against autograd, on the same forward pass
    model = MLP(n_in, HIDDEN, n_out, generator=torch.Generator().manual_seed(SEED))
    model.requires_grad_(True)
    loss_fn, x = CrossEntropy(), xb.clone().requires_grad_(True)
    loss = loss_fn(model(x), yb)
    loss_fn.backward()  # seeds dL/dL = 1 and writes dL/d(logits) into model.out.g
    model.backward()  # .g on every parameter and on x
    named = [*model.named_parameters(), ("input", x)]
    autograd = torch.autograd.grad(loss, [t for _, t in named])
    pairs = [(t.g, ref) for (_, t), ref in zip(named, autograd, strict=True)]
    abs_diff = max((got - ref).abs().max().item() for got, ref in pairs)
    # relative to each gradient's largest entry, so that tiny gradients do not hide errors
    grad_diff = max(((got - ref).abs().max() / ref.abs().max()).item() for got, ref in pairs)
    print(f"3. manual backward vs autograd ({', '.join(name for name, _ in named)}): ", end="")
    print(f"largest difference {abs_diff:.1e}, relative {grad_diff:.1e}")
    if not grad_diff <= GRAD_TOL:
        problems.append(f"the manual backward differs from autograd by {grad_diff:.1e}")

    # 4. log_softmax: exp(1000) overflows float32, so the naive formula gives nan
    logits = torch.tensor([[1000.0, 999.0, 0.0]])
    naive, stable = log_softmax_naive(logits), log_softmax(logits)
    naive_says = "finite" if naive.isfinite().all() else "overflows"
    stable_says = "finite" if stable.isfinite().all() else "NOT finite"
    print(
        f"4. log_softmax of {logits.tolist()[0]}: naive {naive.tolist()[0]} ({naive_says}), ",
        end="",
    )
    print(f"stable {[round(v, 4) for v in stable.tolist()[0]]} ({stable_says})")
    if naive.isfinite().all():
        problems.append("the naive log_softmax did not overflow on large logits")
    if not torch.allclose(stable, torch.log_softmax(logits, -1)):
        problems.append("the stable log_softmax is not finite or differs from torch's")

    # 5. a training loop by hand: shuffle, batch, forward, manual backward, step
    model = MLP(n_in, HIDDEN, n_out, generator=torch.Generator().manual_seed(SEED))
    opt = SGD(model.parameters(), lr=LR)  # steps on the manual gradients (.g)
    shuffle = torch.Generator().manual_seed(SEED)  # the same permutations as the Learner's below
    train_ds = Dataset(x_train, y_train)
    batchs = BatchSampler(Sampler(train_ds, shuffle=True, generator=shuffle), BATCH_SIZE)
    loader = DataLoader(train_ds, batchs)  # the notebook's form: a dataset and its batches
    print(f"5. training by hand: {args.epochs} epochs of {len(loader)} batches, SGD lr={LR}")
    for epoch in range(args.epochs):
        total = 0.0
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            loss_fn.backward()
            model.backward()
            opt.step()
            opt.zero_grad()
            total += loss.item() * len(yb)
        with torch.no_grad():
            hand_accuracy = accuracy(model(x_valid), y_valid).item()
        print(f"   epoch {epoch}: train loss {total / len(x_train):.4f}, ", end="")
        print(f"validation accuracy {hand_accuracy:.4f}")
    if hand_accuracy < args.target:
        problems.append(f"training by hand reached {hand_accuracy:.4f} < {args.target}")

    # 6. the same model, initialisation, shuffling and optimiser, trained by the Learner
    learner_model = MLP(n_in, HIDDEN, n_out, generator=torch.Generator().manual_seed(SEED))
    learner_model.requires_grad_(True)  # the Learner's default backward is autograd's
    dls = DataLoaders.from_datasets(
        Dataset(x_train, y_train), Dataset(x_valid, y_valid), BATCH_SIZE, seed=SEED
    )
    check = GradCheck(every=CHECK_EVERY, show=False)

    def scratch_sgd(params, lr):
        return SGD(params, lr, grad_attr="grad")  # autograd's gradients this time

    plugins = [check, MultiprocessLoader(N_WORKERS), Accuracy()]
    learn = Learner(
        learner_model, dls, loss_func=CrossEntropy(), opt_func=scratch_sgd, lr=LR, plugins=plugins
    )
    print(f"6. the Learner, GradCheck and MultiprocessLoader({N_WORKERS} workers):")
    learn.fit(args.epochs)
    learn_accuracy = learn.metrics["accuracy"]
    worst = max(r.max_rel for r in check.results)
    n_checked = len({(r.epoch, r.batch) for r in check.results})
    weights_diff = max(
        (a - b).abs().max().item()
        for a, b in zip(model.parameters(), learner_model.parameters(), strict=True)
    )
    print(f"   GradCheck: {n_checked} batches checked, worst relative error {worst:.1e}")
    print(f"   validation accuracy {learn_accuracy:.4f} (target {args.target})")
    print(f"   largest weight difference from the loop by hand: {weights_diff:.1e}")
    if learn_accuracy < args.target:
        problems.append(f"the Learner reached {learn_accuracy:.4f} < {args.target}")
    if not check.results or not all(r.ok for r in check.results):
        problems.append("GradCheck found a gradient off")
    if weights_diff > 1e-3:  # the same steps, up to float rounding of two backward passes
        problems.append(f"the Learner's weights differ from the loop's by {weights_diff:.1e}")

    print("OK" if not problems else "FAILED: " + "; ".join(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
