"""The scenario the seams tests cross features in: one small run whose features are switched on
by name, its hand-written oracle, and (run under ``torchrun``) the DDP half of the crossings.

    torchrun --nproc_per_node 2 tests/jobs/seams_job.py OUT_DIR

Features: the *modifiers* change how a run is carried out but must not change its result
(``resume``: killed mid-epoch and resumed in a fresh Learner; ``nested``: ``validate()`` and
``get_preds()`` from a training hook; ``lr_find`` before the fit; ``ddp``: two processes;
``compile``: ``torch.compile`` with the eager backend); the *configurations* change the
result, and :func:`oracle` computes it by hand (``accumulation``: GradientAccumulation(2);
``dict``: dict batches and a model returning ``.loss`` / ``.logits`` (HFModel); ``metrics``:
Accuracy, a torchmetrics F1 on both phases, Recorder; ``mixed``: bfloat16 autocast).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pluglearn import (
    DDP,
    Accuracy,
    AvgLoss,
    Checkpoint,
    DataLoaders,
    GradientAccumulation,
    HFModel,
    Learner,
    MetricAdapter,
    MixedPrecision,
    Recorder,
    hookimpl,
)
from pluglearn.checkpoint.weights import canonical_state

FEATURES = (
    "resume", "nested", "lr_find", "ddp", "compile", "accumulation", "dict", "metrics", "mixed"
)  # fmt: skip
MODIFIERS = frozenset({"resume", "nested", "lr_find", "ddp", "compile"})
CONFIGS = frozenset(FEATURES) - MODIFIERS
N_TRAIN, N_VALID, BS, EPOCHS, LR, SEED = 44, 12, 8, 3, 0.1, 5  # 6 train batches, the last of 4
CUT = (1, 2)  # the resumed runs die after epoch 1, batch 2


def dtype_of(features: frozenset[str]) -> torch.dtype:
    """float64 for exact comparisons; autocast to bfloat16 needs float32 weights."""
    return torch.float32 if "mixed" in features else torch.float64


def data(features: frozenset[str]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_TRAIN + N_VALID, 4, generator=g).to(dtype_of(features))
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


class Net(nn.Module):
    """Linear-ReLU-Dropout-Linear; with ``as_dict`` it is called as ``model(x=..., labels=...)``
    and returns ``.logits`` and ``.loss``, as a Hugging Face model does."""

    def __init__(self, dropout: float, as_dict: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(4, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3)
        )
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        logits = self.body(x)
        if not self.as_dict:
            return logits
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return types.SimpleNamespace(logits=logits, loss=loss)


def model(features: frozenset[str], dropout: float) -> Net:
    torch.manual_seed(0)
    return Net(dropout, "dict" in features).to(dtype_of(features))


def sgd(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


class NestedCalls:
    """``validate()`` every 3 training batches and ``get_preds()`` once, from a training hook;
    the validation batches draw random numbers (as a test-time augmentation would), which the
    nested call must put back."""

    def __init__(self) -> None:
        self.results: list = []

    @hookimpl
    def before_batch(self, learn: Learner) -> None:
        if learn.run.nested:
            torch.rand(1)

    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        if learn.training and learn.train_iter % 3 == 0:
            self.results.append(learn.validate())
        if learn.training and learn.train_iter == 4:
            self.results.append(learn.get_preds())


class CrashAt:
    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)

    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        if learn.training and (learn.epoch, learn.iter) == self.at:
            raise RuntimeError("killed")


def learner(features: frozenset[str], plugins=(), dropout: float = 0.2) -> Learner:
    """The scenario with ``features`` on (see the module doc)."""
    x, y = data(features)
    if "dict" in features:
        items = [{"x": x[i], "labels": y[i]} for i in range(len(x))]
        train, valid = items[:N_TRAIN], items[N_TRAIN:]
    else:
        train, valid = (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])
    net = model(features, dropout)
    if "compile" in features:
        net = torch.compile(net, backend="eager")
    dls = DataLoaders.from_datasets(train, valid, batch_size=BS, valid_batch_size=BS, seed=SEED)
    chosen: list = [AvgLoss()]
    if "accumulation" in features:
        chosen.append(GradientAccumulation(2))
    if "mixed" in features:
        chosen.append(MixedPrecision(torch.bfloat16))
    if "dict" in features:
        chosen.append(HFModel())
    if "metrics" in features:
        from torchmetrics.classification import MulticlassF1Score

        f1 = MetricAdapter(MulticlassF1Score(3), "f1", phases=("train", "valid"))
        chosen += [Accuracy(), f1, Recorder()]
    if "ddp" in features:
        chosen.append(DDP())
    if "nested" in features:
        chosen.append(NestedCalls())
    return Learner(net, dls, lr=LR, opt_func=sgd, plugins=[*chosen, *plugins], defaults=False)


def run(features: frozenset[str], directory: Path, dropout: float = 0.2) -> dict:
    """The scenario trained with ``features`` (modifiers carried out), and how it ended."""
    if "resume" in features:
        saving = Checkpoint(directory, every_n_batches=1)
        try:
            learner(features, [saving, CrashAt(*CUT)], dropout).fit(EPOCHS)
        except RuntimeError as error:
            if "killed" not in str(error):
                raise
        learn = learner(features, [Checkpoint(directory, every_n_batches=1)], dropout)
        learn.fit(EPOCHS, resume_from=directory)
    else:
        learn = learner(features, dropout=dropout)
        if "lr_find" in features:
            learn.lr_find(num_it=8, stop_div=False)
        learn.fit(EPOCHS)
    recorder = next((p for p in learn.plugins if isinstance(p, Recorder)), None)
    weights = canonical_state(learn.model.state_dict(), "the model")  # compiled: plain keys
    return {
        "weights": {k: v.detach().clone() for k, v in weights.items()},
        "metrics": {k: v for k, v in learn.metrics.items() if k != "time"},
        "losses": list(recorder.losses) if recorder else None,
        "stop_reason": learn.stop_reason,
    }


def oracle(configs: frozenset[str], dropout: float = 0.2) -> dict:
    """The same training written by hand with torch: the order pluglearn's loaders document
    (``torch.randperm`` from the seeded generator each epoch), the accumulation's item
    weighting, autocast around the forward and the loss, per-item averages of the losses,
    torchmetrics' F1 over each pass."""
    from torchmetrics.functional.classification import multiclass_f1_score

    x, y = data(configs)
    net = model(configs, dropout)
    opt = sgd(net.parameters(), LR)
    order = torch.Generator().manual_seed(SEED)
    train_x, train_y, valid_x, valid_y = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
    group = 2 if "accumulation" in configs else 1
    metrics: dict = {}

    def forward(xb, yb):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="mixed" in configs):
            out = net(x=xb, labels=yb) if "dict" in configs else net(xb)
            if "dict" in configs:
                return out.logits, out.loss
            return out, F.cross_entropy(out, yb)

    losses = []
    for epoch in range(EPOCHS):
        net.train()
        perm = torch.randperm(N_TRAIN, generator=order)
        batches = [perm[i : i + BS] for i in range(0, N_TRAIN, BS)]
        total, seen, sums, preds, targets = 0, 0, 0.0, [], []
        for i, idx in enumerate(batches):
            xb, yb = train_x[idx], train_y[idx]
            logits, loss = forward(xb, yb)
            (loss * len(yb) if group > 1 else loss).backward()
            total += len(yb)
            if (i + 1) % group == 0 or i + 1 == len(batches):
                if group > 1:
                    torch._foreach_div_([p.grad for p in net.parameters()], total)
                opt.step()
                opt.zero_grad()
                total = 0
            losses.append(loss.item())
            sums += loss.item() * len(yb)
            seen += len(yb)
            preds.append(logits.detach())
            targets.append(yb)
        metrics = {"epoch": epoch, "train_loss": sums / seen}
        train_preds, train_targets = torch.cat(preds), torch.cat(targets)
        net.eval()
        with torch.no_grad():
            vsums, vpreds = 0.0, []
            for i in range(0, N_VALID, BS):
                xb, yb = valid_x[i : i + BS], valid_y[i : i + BS]
                logits, loss = forward(xb, yb)
                vsums += loss.item() * len(yb)
                vpreds.append(logits)
        metrics["valid_loss"] = vsums / N_VALID
        if "metrics" in configs:
            vp = torch.cat(vpreds)
            metrics["accuracy"] = (vp.argmax(1) == valid_y).double().mean().item()
            f1 = multiclass_f1_score(vp.float(), valid_y, 3).item()
            metrics["f1"] = f1
            metrics["train_f1"] = multiclass_f1_score(train_preds.float(), train_targets, 3).item()
    return {
        "weights": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "metrics": metrics,
        "losses": losses if "metrics" in configs else None,
        "stop_reason": None,
    }


def main() -> None:
    """Under torchrun: DDP crossed with every other feature; rank 0 saves each result."""
    out = Path(sys.argv[1])
    for other in FEATURES:
        if other == "ddp":
            continue
        # no dropout: each rank draws the masks of its own slice of a batch
        result = run(frozenset({"ddp", other}), out / f"ckpt-{other}", dropout=0.0)
        if torch.distributed.get_rank() == 0:
            torch.save(result, out / f"ddp-{other}.pt")


if __name__ == "__main__":
    main()
