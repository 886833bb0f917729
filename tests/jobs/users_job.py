"""What users run under torchrun where DDP meets other features, one case per launch, run by
tests/distributed/test_fit_agreement_ranks.py, test_ranks_local_calls.py and
test_ddp_elastic.py (and alone as the one-process oracle).

    [torchrun --nproc_per_node 2] python tests/jobs/users_job.py OUT CASE [options]

Data: 40 training and 23 validation items of 5 float64 features; feature 4 is the item's id /
100, so every batch says which items it holds. Every rank writes ``OUT/rank{R}.pt``:

- ``mismatch``: one fit per setting (lr, batch size, epochs, max_steps, the datasets' lengths,
  the plugins, a plugin's setting, the loss's reduction, the optimizer) with rank 1's differing;
  each rank records the error it raised per setting, then a fit with equal settings.
- ``seed``: the README's snippet after ``torch.manual_seed(100 + rank)`` (``--seed-base``): no
  loader seed; records each rank's items of every step, and the final weights.
- ``local``: a fit in which rank 0 alone calls ``learn.validate()`` and ``learn.predict()`` from
  a training hook, then ``get_preds()`` on every rank and ``validate()`` on rank 0 only;
  ``--sampler``: ready torch loaders with a ``DistributedSampler``; ``--fsdp``: FSDP, whose
  one-rank ``validate()`` must be refused, and ``get_preds()`` on every rank.
- ``sum``: a loss with ``reduction="sum"`` (``--accum K``: GradientAccumulation(K);
  ``--batch-size``, the global batch; ``--n-valid``; ``--loader``: see :func:`sum_loaders`;
  ``--fsdp``:
  FSDP, whose whole weights rank 0 alone records); records the error a refused fit raised.
- ``dict-output``: a model whose output is a dict (see ``DictOutput``) under
  ``DDP(find_unused_parameters=True)`` and TerminateOnNaN (a plugin that may cancel in a batch),
  in global batches of 13 (the last has one item, so rank 1's slice of it is empty);
  ``--accum K``: GradientAccumulation(K); ``--object``: a model whose output is an object of
  its own (see ``ObjectOutput``) under ``DDP()``; ``--every-parameter-used``: no unused
  parameter, under ``DDP()``.
- ``fsdp-refusals``: FSDP() beside DDP(), then FSDP() added after a fit without it (SGD with
  momentum: its optimizer has state), a torch DataLoader without a DistributedSampler, then a
  fit under FSDP (and GradientAccumulation(1)) with no validation set and ``predict`` on rank 0
  alone, the same after a fit with validation passes; records the error each raised, and
  whether the refused fit left the weights as they were; then fits under FSDP with a float32
  ``mp_policy`` (layers sharded on their own, or the root alone) and records the dtypes of
  the training predictions.
- ``tiny-valid``: one validation item (rank 1's share is empty: it has no validation batch),
  AvgLoss, Accuracy and a torchmetrics accuracy through MetricAdapter; records the metrics.
- ``cancels``: rank 1 (alone: the one process) raises cancels at training batch 3 (``--plant``,
  see ``Planted``): by default CancelBatchException in ``before_batch`` and CancelFitException
  in ``after_loss``.
- ``checkpoints``: Checkpoint(every_n_batches=2, keep_last=2); each rank records the files it
  created (renamed into place) and deleted in the directory, seen by a Python audit hook.
- ``elastic``: ``fit(3, resume_from=DIR, missing_ok=True)`` with Checkpoint(every_n_batches=1);
  ``--kill R:N`` (repeatable, the i-th for restart i): rank R dies at training batch N (the
  first by ``os._exit``, the next by SIGKILL); every rank appends each step's items to
  ``OUT/steps{R}.txt``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from pluglearn import (
    DDP,
    FSDP,
    Accuracy,
    CancelBatchException,
    CancelFitException,
    Checkpoint,
    DataLoaders,
    EarlyStopping,
    GradientAccumulation,
    Learner,
    TerminateOnNaN,
    hookimpl,
)
from pluglearn import dist as pdist

N_TRAIN, N_VALID = 40, 23
RANK = int(os.environ.get("RANK", "0"))  # this process's rank (torchrun's), also rank-locally


def data(n_train: int = N_TRAIN, n_valid: int = N_VALID) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_TRAIN + N_VALID, 5, generator=g, dtype=torch.float64)
    x[:, 4] = torch.arange(N_TRAIN + N_VALID, dtype=torch.float64) / 100
    y = (x[:, :2].sum(1) > 0).long() + (x[:, 2] > 0.5).long()
    return x[:n_train], y[:n_train], x[N_TRAIN : N_TRAIN + n_valid], y[N_TRAIN : N_TRAIN + n_valid]


def ids(xb: torch.Tensor) -> list[int]:
    return (xb[:, 4] * 100).round().long().tolist()


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()


class Steps:
    """Records this rank's items of every training batch (and appends them to ``log``)."""

    def __init__(self, log: Path | None = None) -> None:
        self.seen: list[tuple[int, int, list[int]]] = []
        self.log = log

    @hookimpl
    def before_batch(self, learn: Learner) -> None:
        if learn.training:
            step = (learn.epoch, learn.train_iter, ids(learn.xb))
            self.seen.append(step)
            if self.log is not None:
                with open(self.log, "a") as f:
                    f.write(f"{os.environ.get('TORCHELASTIC_RESTART_COUNT')} {step}\n")


class PredsDtype:
    """The dtypes of the training predictions."""

    def __init__(self) -> None:
        self.dtypes: set[str] = set()

    @hookimpl
    def after_pred(self, learn: Learner) -> None:
        if learn.training:
            self.dtypes.add(str(learn.preds.dtype))


def learner(plugins: list, *, lr: float = 0.1, batch_size: int = 8, **kw: object) -> Learner:
    xt, yt, xv, yv = data(kw.pop("n_train", N_TRAIN), kw.pop("n_valid", N_VALID))
    dls = DataLoaders.from_datasets((xt, yt), (xv, yv), batch_size=batch_size, seed=2)
    torch.manual_seed(0)
    return Learner(model(), dls, lr=lr, plugins=plugins, **kw)


def mismatch(rank: int) -> dict:
    """rank 1's fit differs in one setting per case; every rank records what it raised."""
    odd = rank == 1
    adam = partial(torch.optim.Adam)
    cases = {
        "lr": lambda: learner([DDP()], lr=0.3 if odd else 0.1).fit(1),
        "batch_size": lambda: learner([DDP()], batch_size=4 if odd else 8).fit(1),
        "epochs": lambda: learner([DDP()]).fit(3 if odd else 2),
        "max_steps": lambda: learner([DDP()]).fit(max_steps=5 if odd else 4),
        "train data": lambda: learner([DDP()], n_train=36 if odd else 40).fit(1),
        "valid data": lambda: learner([DDP()], n_valid=20 if odd else 23).fit(1),
        "plugins": lambda: learner([DDP(), *([Accuracy()] if odd else [])]).fit(1),
        "EarlyStopping(patience=)": lambda: learner(
            [DDP(), EarlyStopping(patience=3 if odd else 2)]
        ).fit(1),
        "loss reduction": lambda: learner(
            [DDP()], loss_func=partial(F.cross_entropy, reduction="sum" if odd else "mean")
        ).fit(1),
        "optimizer": lambda: learner([DDP()], **({"opt_func": adam} if odd else {})).fit(1),
    }
    said = {}
    for name, fit in cases.items():
        try:
            fit()
            said[name] = None
        except ValueError as error:
            said[name] = str(error)
    agreed = learner([DDP()])
    agreed.fit(1)
    said["agreed"] = agreed.metrics["valid_loss"]
    return said


class OneRankCalls:
    """From a training hook, rank 0 alone validates and predicts (rank-local calls)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.metrics, self.preds = x, None, None

    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        if learn.training and learn.train_iter == 3 and RANK == 0:
            self.metrics = learn.validate()
            self.preds = learn.predict(self.x[:3], batched=True)


def sampler_loaders() -> DataLoaders:
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    xt, yt, xv, yv = data()

    def loader(ds: TensorDataset, shuffle: bool) -> DataLoader:
        if not pdist.is_distributed():
            return DataLoader(ds, 8, shuffle=shuffle)
        return DataLoader(ds, 4, sampler=DistributedSampler(ds, shuffle=shuffle, seed=3))

    return DataLoaders(loader(TensorDataset(xt, yt), True), loader(TensorDataset(xv, yv), False))


def local(args: argparse.Namespace) -> dict:
    ddp = FSDP(layers=nn.Linear, call_timeout=5.0) if args.fsdp else DDP()
    calls = OneRankCalls(data()[2])
    # torchmetrics syncs the ranks in compute(): a rank-local call must compute without it
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    from pluglearn import MetricAdapter

    both = MetricCollection({"acc": MulticlassAccuracy(3), "micro_f1": MulticlassF1Score(3)})
    metrics = [MetricAdapter(MulticlassF1Score(3, average="macro"), name="f1"), MetricAdapter(both)]
    plugins = [ddp, Accuracy(), *metrics] + ([] if args.fsdp else [calls])
    if args.sampler:
        torch.manual_seed(0)
        learn = Learner(model(), sampler_loaders(), lr=0.1, plugins=plugins)
    else:
        learn = learner(plugins)
    learn.fit(2)
    out: dict = {"hook": (calls.metrics, calls.preds), "weights": learn.model.state_dict()}
    out["created"] = ddp.created  # it made the process group (so it destroys it at exit)
    out["get_preds"] = learn.get_preds()  # every rank
    refused = None
    if RANK == 0:  # rank 0 alone
        try:
            out["validate"] = learn.validate()
        except RuntimeError as error:
            refused = str(error)
    out["refused"] = refused
    out["after"] = pdist.all_gather(RANK)  # no stray collective is pending
    return out


class Told:
    """A loader of the user's own that says how many items the global batch it just handed
    out holds (``global_items``), as pluglearn's loaders do."""

    def __init__(self, loader: object, totals: list[int]) -> None:
        self.loader, self.totals, self.global_items = loader, totals, 0

    def __len__(self) -> int:
        return len(self.totals)

    def __iter__(self) -> Iterator[object]:
        for batch, total in zip(self.loader, self.totals, strict=True):
            self.global_items = total
            yield batch


class Stale(Told):
    """A loader whose ``global_items`` is never set (it stays 0): it tells nothing."""

    def __iter__(self) -> Iterator[object]:
        return iter(self.loader)  # type: ignore[call-overload]


def sum_loaders(kind: str, batch_size: int, n_valid: int = N_VALID) -> DataLoaders:
    """Torch loaders in the items' order whose global batches are one process's of
    ``batch_size``: ``sampler`` each rank's DistributedSampler (no shuffle; the validation set
    padded) in batches of ``batch_size / W``; ``own`` each rank's own cut of every global batch
    (rank 0 takes about two thirds: uneven slices), the validation loader a :class:`Told`;
    ``own-untold`` the same validation loader without it, ``own-stale`` a :class:`Stale`;
    ``empty`` as ``own``, its training batches a list with a global batch of no items (every
    rank's slice empty) after the first. Alone: one loader of the global batches."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    world = pdist.world_size()
    xt, yt, xv, yv = data(N_TRAIN, n_valid)
    sets = [TensorDataset(xt, yt), TensorDataset(xv, yv)]
    if kind == "sampler":
        samplers = [DistributedSampler(ds, world, RANK, shuffle=False) for ds in sets]
        return DataLoaders(*(DataLoader(ds, batch_size // world, sampler=s)
                             for ds, s in zip(sets, samplers, strict=True)))  # fmt: skip
    loaders: list[object] = []
    totals: list[int] = []
    for ds in sets:
        n = len(ds)
        batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        cuts = [(2 * len(b) + 2) // 3 if world > 1 else len(b) for b in batches]
        mine = [b[:c] if RANK == 0 else b[c:] for b, c in zip(batches, cuts, strict=True)]
        if kind == "empty" and not loaders:
            mine.insert(1, [])
        if all(mine):
            loaders.append(DataLoader(ds, batch_sampler=mine))
        else:  # a torch DataLoader cannot collate no item: the batches as a list
            loaders.append([tuple(t[torch.tensor(m, dtype=torch.long)] for t in ds.tensors)
                            for m in mine])  # fmt: skip
        totals = [len(b) for b in batches]  # the validation set's, the last
    told = {"own-untold": lambda dl, _: dl, "own-stale": Stale}.get(kind, Told)
    valid = told(loaders[1], totals)
    return DataLoaders(loaders[0], valid)


class DictOutput(nn.Module):
    """A model whose output is no tensor, ``{"logits": ..., "aux": ..., "ids": ..., "kind":
    "logits"}``: a second output of a layer of its own (``aux``, in the loss), a tensor that
    needs no gradient and a string beside them; with a parameter it never uses (DDP needs
    ``find_unused_parameters=True``) and a trained one of a single element."""

    def __init__(self, net: nn.Module, unused: bool = True) -> None:
        super().__init__()
        self.net = net
        self.aux = nn.Linear(5, 1).double()
        self.unused = nn.Linear(2, 2).double() if unused else None
        self.scale = nn.Parameter(torch.ones(1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        logits, aux = self.net(x) * self.scale, self.aux(x)
        return {"logits": logits, "aux": aux, "ids": x[:, 4], "kind": "logits"}


class Held:
    """An output of a class of one's own: no tree walk (DDP's, pluglearn's) sees its tensor."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class ObjectOutput(nn.Module):
    """A model whose output is a :class:`Held`, with a trained parameter of one element."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.scale = nn.Parameter(torch.ones(1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> Held:
        return Held(self.net(x) * self.scale)


def held_loss(preds: Held, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(preds.logits, targets)


def logits_loss(preds: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(preds["logits"], targets) + preds["aux"].pow(2).mean()


class Planted:
    """On the last rank at training batch ``at`` (``plant``): ``batch-then-fit`` a batch cancel in
    before_batch then a fit cancel in after_loss; ``batch`` only the former; ``fit`` only the
    latter; ``split`` the batch cancel on rank 0 (on two ranks) and the fit cancel on the last;
    ``two-fits`` a fit cancel in before_batch and another in after_loss; ``reason`` a stop
    reason of its own (a transition of the run) before the fit cancel; ``after-batch`` a batch
    cancel in after_batch, once the step is taken; ``before-step``, ``after-pred``,
    ``after-step`` a fit cancel from that hook, ``batch-after-pred`` a batch cancel from
    after_pred; ``loss`` and ``after-backward``: see :class:`LossPlanted` and
    :class:`BackwardPlanted`. In epoch 1 with ``added`` (after_loss), ``added-loss`` (the same,
    from :class:`AfterLossPlanted`) or ``added-before-step``: added by :class:`Adder`."""

    def __init__(self, plant: str, at: int = 3) -> None:
        self.plant, self.at = plant, at

    def _here(self, learn: Learner) -> bool:
        last = pdist.rank() == pdist.world_size() - 1
        return learn.training and learn.train_iter == self.at and last

    @hookimpl
    def before_batch(self, learn: Learner) -> None:
        if self.plant in ("batch-then-fit", "batch") and self._here(learn):
            raise CancelBatchException("skip this batch")
        first = pdist.rank() == 0 and pdist.world_size() > 1
        if self.plant == "split" and learn.training and learn.train_iter == self.at and first:
            raise CancelBatchException("skip this batch on rank 0")
        if self.plant == "two-fits" and self._here(learn):
            raise CancelFitException("the first fit cancel")

    @hookimpl
    def after_loss(self, learn: Learner) -> None:
        if self.plant == "reason" and self._here(learn):  # a stop reason of its own first
            learn.run.stop("Planted: a reason of its own")
        fit_cancels = ("batch-then-fit", "fit", "two-fits", "added", "added-loss", "reason")
        fit_cancels += ("split",)
        if self.plant in fit_cancels and self._here(learn):
            raise CancelFitException("after the batch cancel")

    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        if self.plant == "after-batch" and self._here(learn):
            raise CancelBatchException("after the step: nothing left to skip")

    @hookimpl
    def after_pred(self, learn: Learner) -> None:
        if self.plant == "after-pred" and self._here(learn):
            raise CancelFitException("after the forward")
        if self.plant == "batch-after-pred" and self._here(learn):
            raise CancelBatchException("skip this batch after the forward")

    @hookimpl
    def after_step(self, learn: Learner) -> None:
        if self.plant == "after-step" and self._here(learn):
            raise CancelFitException("after the step")

    @hookimpl
    def before_step(self, learn: Learner) -> None:
        if self.plant in ("before-step", "added-before-step") and self._here(learn):
            raise CancelFitException("before the step")


class LossPlanted(Planted):
    """Its own compute_loss the one hook that may cancel (no event hook of any plugin may): a
    fit cancel from it on the last rank at training batch 3."""

    def __init__(self) -> None:
        super().__init__("loss")

    before_batch = after_loss = after_batch = before_step = None  # type: ignore[assignment]

    @hookimpl
    def compute_loss(self, learn: Learner) -> None:
        if self._here(learn):  # else None: the default step answers
            raise CancelFitException("from its loss")


class BackwardPlanted(LossPlanted):
    """after_backward the one hook that may cancel: a fit cancel from it, as LossPlanted's."""

    compute_loss = None  # type: ignore[assignment]

    @hookimpl
    def after_backward(self, learn: Learner) -> None:
        if self._here(learn):
            raise CancelFitException("after the backward")


class AfterLossPlanted(Planted):
    """after_loss the one hook that may cancel (no before_step: only the gradient's mark
    carries its cancel to the other ranks)."""

    before_batch = after_batch = after_pred = after_step = before_step = None  # type: ignore[assignment]


class Adder:
    """Adds Planted(plant) (``added-loss``: AfterLossPlanted) on every rank at the start of
    epoch 1: the fit started with no plugin that may cancel, so the ranks agree on no cancel
    until then."""

    def __init__(self, plant: str) -> None:
        self.plant = plant

    @hookimpl
    def before_epoch(self, learn: Learner) -> None:
        if learn.epoch == 1:  # its batch 3 (train_iter counts the fit's batches)
            kind = AfterLossPlanted if self.plant == "added-loss" else Planted
            learn.add_plugin(kind(self.plant, at=learn.train_iter + 3))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("case")
    parser.add_argument("--seed-base", type=int, default=100)
    parser.add_argument("--sampler", action="store_true")
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--object", action="store_true", help="dict-output: ObjectOutput")
    parser.add_argument("--every-parameter-used", action="store_true", help="dict-output")
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=7)
    parser.add_argument("--n-valid", type=int, default=N_VALID)
    parser.add_argument("--loader", default="pluglearn", help="see sum_loaders")
    parser.add_argument("--plant", default="batch-then-fit", help="see Planted")
    parser.add_argument("--ckpt")
    parser.add_argument("--kill", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    out, rank = Path(args.out), RANK
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    if args.case == "mismatch":
        result = mismatch(rank)
    elif args.case == "seed":  # the README's snippet, seeded per rank; no loader seed
        ddp = DDP()
        torch.manual_seed(args.seed_base + rank)
        xt, yt, xv, yv = data()
        dls = DataLoaders.from_datasets((xt, yt), (xv, yv), batch_size=8)
        steps = Steps()
        learn = Learner(model(), dls, plugins=[ddp, steps])
        learn.fit(2)
        result = {"seen": steps.seen, "weights": learn.model.state_dict()}
    elif args.case == "local":
        result = local(args)
    elif args.case == "sum":
        ddp = FSDP(layers=nn.Linear) if args.fsdp else DDP()
        plugins = [ddp] + ([GradientAccumulation(args.accum)] if args.accum > 1 else [])
        history: list = []

        losses: list[tuple[float, float]] = []  # learn.loss after the loss, after the batch

        class Keep:
            @hookimpl
            def report(self, metrics: dict) -> None:
                history.append(dict(metrics))

            @hookimpl
            def after_loss(self, learn: Learner) -> None:
                if learn.training:
                    losses.append((float(learn.loss), float("nan")))

            @hookimpl
            def after_batch(self, learn: Learner) -> None:
                if learn.training:
                    losses[-1] = (losses[-1][0], float(learn.loss))

        loss = partial(F.cross_entropy, reduction="sum")
        learn = learner([*plugins, Keep()], lr=0.01, batch_size=args.batch_size, loss_func=loss,
                        n_valid=args.n_valid)  # fmt: skip
        if args.loader != "pluglearn":
            learn.dls = sum_loaders(args.loader, args.batch_size, args.n_valid)
        try:
            learn.fit(2)
            weights = learn.model.state_dict()
            if args.fsdp and pdist.is_distributed():  # rank 0's whole model (a collective)
                from pluglearn.distributed.fsdp import full_state

                weights = full_state(learn.model)[0]
            result = {"weights": weights, "history": history, "losses": losses}
        except ValueError as error:
            result = {"refused": str(error), "trained": learn.train_iter}
    elif args.case == "dict-output":  # the last global batch of 1 item: rank 1's slice empty
        accumulate = [GradientAccumulation(args.accum)] if args.accum > 1 else []
        if args.object:  # no tensor DDP can find in the output: no unused parameter either
            plugins = [DDP(), TerminateOnNaN(), *accumulate]
            learn = learner(plugins, batch_size=13, loss_func=held_loss)
            learn.model = ObjectOutput(learn.model)
        elif args.every_parameter_used:  # DDP() waits for every parameter's gradient
            learn = learner([DDP(), TerminateOnNaN(), *accumulate], batch_size=13,
                            loss_func=logits_loss)  # fmt: skip
            learn.model = DictOutput(learn.model, unused=False)
        else:
            plugins = [DDP(find_unused_parameters=True), TerminateOnNaN(), *accumulate]
            learn = learner(plugins, batch_size=13, loss_func=logits_loss)
            learn.model = DictOutput(learn.model)
        learn.fit(2)
        result = {"weights": learn.model.state_dict()}
    elif args.case == "fsdp-refusals":
        both = learner([FSDP(), DDP()])
        said = {}
        try:
            both.fit(1)
        except ValueError as error:
            said["both"] = str(error)
        momentum = partial(torch.optim.SGD, momentum=0.9)  # an optimizer with state
        late = learner([], opt_func=momentum)  # each rank trains alone first
        late.fit(1)
        before = {k: v.clone() for k, v in late.model.state_dict().items()}
        late.add_plugin(FSDP())
        try:
            late.fit(1)
        except ValueError as error:
            said["late"] = str(error)
        unchanged = all(torch.equal(v, late.model.state_dict()[k]) for k, v in before.items())
        xt, yt, _, _ = data()
        from torch.utils.data import DataLoader, TensorDataset

        unsharded = learner([FSDP()])
        unsharded.dls = DataLoaders(DataLoader(TensorDataset(xt, yt), 8), unsharded.dls.valid)
        try:
            unsharded.fit(1)
        except ValueError as error:
            said["unsharded"] = str(error)
        dls = DataLoaders.from_datasets((xt, yt), batch_size=8, seed=2)  # no validation set
        torch.manual_seed(0)
        plugins = [FSDP(call_timeout=2.0), GradientAccumulation(1)]  # 1: no accumulation
        unvalidated = Learner(model(), dls, lr=0.1, plugins=plugins)
        unvalidated.fit(1)
        if RANK == 0:  # alone, before any validation pass met the ranks
            try:
                unvalidated.predict(xt[:2], batched=True)
            except RuntimeError as error:
                said["predict"] = str(error)
        validated = learner([FSDP(call_timeout=2.0)])
        validated.fit(1)  # its validation passes meet the ranks: a later call meets again
        if RANK == 0:
            try:
                validated.predict(xt[:2], batched=True)
            except RuntimeError as error:
                said["predict-after-validation"] = str(error)
        # fully_shard's keyword arguments reach every call: a float32 policy on the float64
        # model computes in float32, with layers sharded on their own or the root alone
        from torch.distributed.fsdp import MixedPrecisionPolicy

        policy = MixedPrecisionPolicy(param_dtype=torch.float32)
        dtypes = {}
        for name, layers in (("layers", nn.Linear), ("root", ())):
            seen = PredsDtype()
            learner([FSDP(layers=layers, mp_policy=policy), seen]).fit(1)
            dtypes[name] = sorted(seen.dtypes)
        result = {"said": said, "unchanged": unchanged, "dtypes": dtypes}
    elif args.case == "tiny-valid":
        import torchmetrics

        from pluglearn import MetricAdapter

        metric = MetricAdapter(torchmetrics.Accuracy(task="multiclass", num_classes=3))
        learn = learner([DDP(), Accuracy(), metric], n_valid=1)
        learn.fit(2)
        result = {"weights": learn.model.state_dict(), "metrics": dict(learn.metrics)}
    elif args.case == "cancels":
        if args.plant.startswith("added"):
            planted: object = Adder(args.plant)
        else:
            alone = {"loss": LossPlanted, "after-backward": BackwardPlanted}
            planted = alone[args.plant]() if args.plant in alone else Planted(args.plant)
        learn = learner([DDP(), planted])
        learn.fit(2)
        result = {
            "weights": learn.model.state_dict(),
            "stop_reason": learn.stop_reason,
            "unwrapped": learn.wrapped_model is None,  # DDP's wrapper is the fit's only
        }
    elif args.case in ("checkpoints", "elastic"):
        result = checkpoints(args, rank, out)
    torch.save(result, out / f"rank{rank}.pt")
    pdist.barrier()
    sys.stdout.flush()
    os._exit(0)  # gloo's teardown sometimes aborts the process; the results are on disk


def checkpoints(args: argparse.Namespace, rank: int, out: Path) -> dict:
    directory = Path(args.ckpt)
    written: list[tuple[str, str]] = []

    def audit(event: str, hook_args: tuple) -> None:  # what this process does in the directory
        if event == "os.rename" and Path(hook_args[1]).parent == directory:
            written.append(("created", Path(hook_args[1]).name))
        elif event == "os.remove" and Path(hook_args[0]).parent == directory:
            written.append(("deleted", Path(hook_args[0]).name))

    sys.addaudithook(audit)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    kills = [tuple(map(int, k.split(":"))) for k in args.kill]

    class Tag:  # per-rank state in each checkpoint; the elastic kills
        @hookimpl
        def state_dict(self, learn: Learner) -> dict:
            return {"rank": pdist.rank(), "steps": learn.train_iter}

        @hookimpl
        def load_state_dict(self, learn: Learner, state: dict) -> None:
            pass

        @hookimpl
        def before_batch(self, learn: Learner) -> None:
            if restart < len(kills) and kills[restart] == (pdist.rank(), learn.train_iter):
                if restart == 0:
                    os._exit(3)
                os.kill(os.getpid(), signal.SIGKILL)

    elastic = args.case == "elastic"
    steps = Steps(out / f"steps{rank}.txt" if elastic else None)
    checkpoint = Checkpoint(
        directory, every_n_batches=1 if elastic else 2, keep_last=None if elastic else 2
    )
    plugins = [DDP(), Tag(), checkpoint]
    learn = learner([*plugins, steps])
    learn.fit(3, resume_from=directory if elastic else None, missing_ok=elastic)
    return {"written": written, "weights": learn.model.state_dict(), "seen": steps.seen}


if __name__ == "__main__":
    main()
