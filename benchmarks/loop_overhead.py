"""What the Learner costs over a hand-written loop, and what the hook machinery costs per batch.

Part 1: the notebook's 784-50-10 MLP, batch 64, one thread, 8000 training and 1000 validation
items (the shared MNIST pickle when present, else random data of the same shape). Each round runs
one epoch (train + validate) of: a hand-written loop, ``Learner.fit(1)`` with the default plugins
and the progress bar off, and the same with the bar on (drawing to a terminal-like sink), in
alternating order, on identical model copies; it prints the median epoch times and the ratios,
of the wall time and, in brackets, of the thread's CPU time (steadier on a shared machine).

Part 1 also times the four training recipes on together (bfloat16 autocast, accumulation of 2
batches weighted by items, clipping to norm 1, OneCycleLR per optimizer step): the Learner with
MixedPrecision, GradientAccumulation, GradientClipping and Scheduler against the same recipes
written by hand; its ratio is to that hand-written loop. Both restart the one-cycle schedule at
each epoch (``fit(1)`` builds the Scheduler's OneCycleLR afresh).

Part 2: microseconds per batch spent in the hook machinery alone (a provider that does no tensor
work, plugins that implement every batch event and do nothing), with 0, 5 and 20 plugins.

    python benchmarks/loop_overhead.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import time
from pathlib import Path

import pluggy
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import (
    DataLoaders,
    GradientAccumulation,
    GradientClipping,
    Learner,
    MixedPrecision,
    ProgressBar,
    Scheduler,
    hookimpl,
)
from pluglearn.hooks import specs
from pluglearn.hooks.markers import PROJECT_NAME
from pluglearn.hooks.specs import BATCH_EVENTS

SHARED_PICKLE = Path(__file__).resolve().parents[2] / "shared/data/mnist/mnist-t10k-split.pkl.gz"
BATCH_SIZE, LR, N_TRAIN, N_VALID = 64, 0.1, 8000, 1000


def load_data():
    if SHARED_PICKLE.exists():
        from pluglearn.data.mnist import load_mnist

        splits = load_mnist(SHARED_PICKLE)
        return splits.train, splits.valid, "shared MNIST pickle"
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N_TRAIN + N_VALID, 784, generator=g)
    y = torch.randint(0, 10, (N_TRAIN + N_VALID,), generator=g)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:]), "random data (no shared pickle)"


def hand_written_epoch(model, opt, train, valid, generator) -> None:
    """What a person writes: shuffle, index a batch, step; then a no_grad validation pass."""
    (x, y), (xv, yv) = train, valid
    model.train()
    perm = torch.randperm(len(x), generator=generator)
    total = 0.0
    for i in range(0, len(x), BATCH_SIZE):
        idx = perm[i : i + BATCH_SIZE]
        xb, yb = x[idx], y[idx]
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad()
        total += loss.item() * len(yb)
    model.eval()
    valid_total = 0.0
    with torch.no_grad():
        for i in range(0, len(xv), 2 * BATCH_SIZE):
            xb, yb = xv[i : i + 2 * BATCH_SIZE], yv[i : i + 2 * BATCH_SIZE]
            valid_total += F.cross_entropy(model(xb), yb).item() * len(yb)
    assert total > 0 and valid_total > 0


ACCUMULATE, MAX_NORM, CYCLE = 2, 1.0, 10**6  # a cycle longer than the benchmark: no end


def one_cycle(opt):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=CYCLE)


def hand_written_recipes_epoch(model, opt, train, valid, generator) -> None:
    """The four recipes by hand: autocast bf16, accumulation by items, clipping, OneCycleLR.
    Each call is a fit of one epoch, as ``Learner.fit(1)`` with ``Scheduler`` is: the base lr
    is set and a fresh cycle starts (the momentum buffers carry over, in both)."""
    (x, y), (xv, yv) = train, valid
    for group in opt.param_groups:
        group["lr"] = LR
    sched = one_cycle(opt)
    model.train()
    perm = torch.randperm(len(x), generator=generator)
    n_batches = -(-len(x) // BATCH_SIZE)
    total, items = 0.0, 0
    for b, i in enumerate(range(0, len(x), BATCH_SIZE)):
        idx = perm[i : i + BATCH_SIZE]
        xb, yb = x[idx], y[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(xb), yb)
        (loss * len(yb)).backward()
        items += len(yb)
        if (b + 1) % ACCUMULATE == 0 or b + 1 == n_batches:
            for p in model.parameters():
                p.grad.div_(items)
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
            opt.step()
            sched.step()
            opt.zero_grad()
            items = 0
        total += loss.item() * len(yb)
    model.eval()
    valid_total = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, len(xv), 2 * BATCH_SIZE):
            xb, yb = xv[i : i + 2 * BATCH_SIZE], yv[i : i + 2 * BATCH_SIZE]
            valid_total += F.cross_entropy(model(xb), yb).item() * len(yb)
    assert total > 0 and valid_total > 0


class TerminalSink(io.StringIO):
    """A terminal as far as tqdm can tell, so the bar draws as it would for a user."""

    def isatty(self) -> bool:
        return True


def loop_overhead(rounds: int) -> None:
    train, valid, source = load_data()
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))
    hand_model = copy.deepcopy(base)
    hand_opt = torch.optim.SGD(hand_model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(0)
    dls = DataLoaders.from_datasets(train, valid, batch_size=BATCH_SIZE, seed=0)
    no_bar = Learner(copy.deepcopy(base), dls, lr=LR)
    no_bar.remove_plugin("ProgressBar")
    dls_bar = DataLoaders.from_datasets(train, valid, batch_size=BATCH_SIZE, seed=0)
    with_bar = Learner(copy.deepcopy(base), dls_bar, lr=LR, plugins=[ProgressBar(TerminalSink())])

    recipe_model = copy.deepcopy(base)
    recipe_opt = torch.optim.SGD(recipe_model.parameters(), lr=LR)
    recipe_gen = torch.Generator().manual_seed(0)
    recipes = [
        MixedPrecision(torch.bfloat16),
        GradientAccumulation(ACCUMULATE),
        GradientClipping(MAX_NORM),
        Scheduler(one_cycle),
    ]
    dls_recipes = DataLoaders.from_datasets(train, valid, batch_size=BATCH_SIZE, seed=0)
    with_recipes = Learner(copy.deepcopy(base), dls_recipes, lr=LR, plugins=recipes)
    with_recipes.remove_plugin("ProgressBar")

    runs = {
        "hand-written loop": lambda: hand_written_epoch(
            hand_model, hand_opt, train, valid, generator
        ),
        "Learner, bar off": lambda: no_bar.fit(1),
        "Learner, bar on": lambda: with_bar.fit(1),
        "recipes by hand": lambda: hand_written_recipes_epoch(
            recipe_model, recipe_opt, train, valid, recipe_gen
        ),
        "Learner, 4 recipes": lambda: with_recipes.fit(1),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu_times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up
        run()
    for r in range(rounds):
        order = list(runs.items())
        order = order[r % len(order) :] + order[: r % len(order)]  # rotate who goes first
        for name, run in order:
            start, cpu_start = time.perf_counter(), time.thread_time()
            run()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.thread_time() - cpu_start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    cpu = {name: statistics.median(t) for name, t in cpu_times.items()}
    n_train, n_valid = -(-len(train[0]) // BATCH_SIZE), -(-len(valid[0]) // (2 * BATCH_SIZE))
    print(
        f"Part 1: one epoch = {n_train} train + {n_valid} valid batches, 784-50-10, "
        f"batch {BATCH_SIZE}, 1 thread, {source}, {rounds} rounds"
    )
    for name, median in medians.items():
        if name == "recipes by hand":
            continue
        ref = "recipes by hand" if name == "Learner, 4 recipes" else "hand-written loop"
        print(
            f"  {name:<20} median {median * 1e3:8.2f} ms/epoch   ratio {median / medians[ref]:5.3f}"
            f"   (CPU time {cpu[name] / cpu[ref]:5.3f})"
        )
    print(
        f"  (4 recipes: bf16 autocast, accumulate {ACCUMULATE}, clip {MAX_NORM}, OneCycleLR; "
        f"ratio to the same written by hand, {medians['recipes by hand'] * 1e3:.2f} ms/epoch; "
        "each fit(1) and each hand epoch starts a fresh cycle)"
    )
    print(
        "  (CPU time: the thread's own, which the load of other processes on the machine does "
        "not inflate)"
    )


# ----------------------------------------------------------------------------------- part 2


class NullStep:
    """Answers every step without tensor work, so only the machinery is timed."""

    @hookimpl(trylast=True)
    def predict(self):
        return 0

    @hookimpl(trylast=True)
    def compute_loss(self):
        return NULL_LOSS

    @hookimpl(trylast=True)
    def backward(self):
        return True

    @hookimpl(trylast=True)
    def step(self):
        return True

    @hookimpl(trylast=True)
    def zero_grad(self):
        return True


NULL_LOSS = torch.zeros(())


def _noop(self, learn):
    return None


NoopPlugin = type("NoopPlugin", (), {e: hookimpl(_noop) for e in BATCH_EVENTS})


def machinery_cost(n_batches: int = 20000, repeats: int = 5) -> None:
    batches = [(0, 0)] * n_batches
    print(f"Part 2: hook machinery per training batch ({len(BATCH_EVENTS)} events + 5 steps)")
    for n_plugins in (0, 5, 20):
        learn = Learner(
            nn.Identity(),
            DataLoaders(batches),
            defaults=False,
            plugins=[*(NoopPlugin() for _ in range(n_plugins)), NullStep()],
        )
        learn.opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))])  # never stepped
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            learn.fit(1)
            best = min(best, time.perf_counter() - start)
        print(f"  {n_plugins:>2} plugins: {best / n_batches * 1e6:6.2f} us per batch")
    # the same 12 calls per batch through pluggy's own hook callers, for comparison
    learn = Learner(nn.Identity(), DataLoaders(batches), defaults=False, plugins=[NullStep()])
    steps = ["predict", "compute_loss", "backward", "step", "zero_grad"]
    pm = pluggy.PluginManager(PROJECT_NAME)  # pluggy's own callers, same plugin
    pm.add_hookspecs(specs)
    pm.register(NullStep())
    callers = [getattr(pm.hook, h) for h in [*BATCH_EVENTS, *steps]]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n_batches):
            for caller in callers:
                caller(learn=learn)
        best = min(best, time.perf_counter() - start)
    print(f"   0 plugins through pm.hook.X(learn=...): {best / n_batches * 1e6:6.2f} us per batch")


def main() -> None:
    parser = argparse.ArgumentParser(description="Learner overhead against a hand-written loop")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loop_overhead(args.rounds)
    machinery_cost()


if __name__ == "__main__":
    main()
