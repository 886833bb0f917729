"""``learn.summary()`` and ``repr(learn)``: what a Learner trains, in text.

``learn.summary()`` runs one real forward pass on one batch (the first of the validation set,
else of the training set, or the ``batch`` given) through the ``predict`` hook, as ``predict``
does: eval mode, no gradients, inside every ``forward_context``. A forward hook on each layer
(a module without children, or with parameters of its own) records its output shape. The
table lists the layers in the order their outputs are made (a layer called twice has two rows,
its parameters counted in the first) with their output shapes and parameter counts, then the
totals and the input. Everything the pass touches is put back: every module's train/eval
mode, the random states, the loaders' generators and state (drawing a batch must not change
the next fit's order); no gradient is computed, and eval mode leaves batch-norm statistics
alone. So a fit after ``summary()`` is the fit without it, bit for bit.

It is written here rather than with torchinfo: the pass has to go through pluglearn's
``predict`` hook (``HFModel``'s dict batches, a user's adapter), which calls the model in its
own way, and the table needs only forward hooks (fastai and Lightning build theirs the same way).

Example::

    print(learn.summary())      # or learn.show_summary(); at a prompt, learn.summary() shows it
    print(learn)                # model, data, optimizer, lr, device and plugins in one line each
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..data.arrays import tensors_of
from ..data.loaders import length_of

if TYPE_CHECKING:
    from ..learner import Learner

#: what summary() puts back after its pass (the pass itself, ``_predict_batch``, puts back the
#: position, the batch state and the modes): drawing a batch moves a loader and its generators,
#: and a torch DataLoader draws its base seed from the global generator
PUT_BACK = ("rng", "generators", "loader")


class SummaryText(str):
    """A ``str`` that shows as itself at a prompt (real lines, no quotes).

    >>> SummaryText("a\\nb")
    a
    b
    """

    def __repr__(self) -> str:
        return str(self)


def describe_output(value: Any) -> str:
    """The shape of a layer's output: ``64 x 10`` for a tensor; tuples, lists, mappings (a
    Hugging Face ``ModelOutput``) and dataclasses entry by entry.

    >>> describe_output((torch.zeros(2, 3), {"mask": torch.zeros(2)}))
    '2 x 3, mask: 2'
    """
    if isinstance(value, torch.Tensor):
        return " x ".join(map(str, value.shape)) if value.ndim else "scalar"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {describe_output(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, (tuple, list)):
        return ", ".join(describe_output(v) for v in value)
    return "-" if value is None else type(value).__name__


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that get a row: those without children, or with parameters of their own."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if not any(True for _ in module.children())
        or any(True for _ in module.parameters(recurse=False))
    ]


def _one_batch(learn: Learner) -> tuple[Any, str]:
    """The first batch of the validation loader, else the training one, and where it came from
    (inside the caller's capture: drawing it may move a generator)."""
    for dl, which in (
        (learn.dls.valid, "the validation set"),
        (learn.dls.train, "the training set"),
    ):
        if dl is not None:
            for batch in dl:
                return batch, f"the first batch of {which}"
    raise ValueError(
        "summary() needs one batch and this Learner has no data: pass one, "
        "learn.summary(batch=(xb, yb))."
    )


def summary(learn: Learner, batch: Any = None) -> SummaryText:
    """The body of :meth:`Learner.summary` (see the module doc)."""
    from ..data.batch_ops import first_tensor, inputs_of, to_device

    model = learn.model
    lazy = [n for n, p in model.named_parameters() if nn.parameter.is_lazy(p)]
    if lazy:
        raise ValueError(
            f"summary() cannot count the parameters of lazy layers before their first forward "
            f"({', '.join(lazy[:3])}): fit first, or call the model on one batch."
        )
    rows: list[tuple[str, str, int | None, str]] = []
    counted: set[int] = set()

    def record(name: str, module: nn.Module, output: Any) -> None:
        own = list(module.parameters(recurse=False))
        first = id(module) not in counted
        counted.add(id(module))
        trainable = {p.requires_grad for p in own}
        flag = "" if not own else "partly" if len(trainable) > 1 else str(trainable.pop())
        label = f"{name or type(model).__name__} ({type(module).__name__})"
        rows.append(
            (label, describe_output(output), sum(p.numel() for p in own) if first else None, flag)
        )

    dls = learn.dls
    has_valid = dls.valid is not None or dls.valid_ds is not None
    with learn.run.entry("summary"), learn._loaders(train=not has_valid):
        snapshot = learn.run.capture(learn, PUT_BACK)
        handles = [
            module.register_forward_hook(lambda m, args, out, name=name: record(name, m, out))
            for name, module in _layers(model)
        ]
        try:
            source = "the batch given"
            if batch is None:
                batch, source = _one_batch(learn)
            elif isinstance(batch, torch.Tensor):
                batch = (batch, None)  # inputs alone, as predict takes them
            param = next(iter(model.parameters()), None)
            if param is not None:
                batch = to_device(batch, param.device)
            learn._predict_batch(batch)
        finally:
            for handle in handles:
                handle.remove()
            learn.run.put_back(learn, snapshot, "summary()")
    try:
        inputs = first_tensor(inputs_of(batch))
    except TypeError:  # a batch of another structure: its first tensor
        inputs = first_tensor(batch)
    return SummaryText(_table(model, rows, inputs, source))


def _table(
    model: nn.Module,
    rows: list[tuple[str, str, int | None, str]],
    inputs: torch.Tensor | None,
    source: str,
) -> str:
    head = ("Layer (type)", "Output shape", "Param #", "Trainable")
    cells = [(label, shape, "" if n is None else f"{n:,}", flag) for label, shape, n, flag in rows]
    widths = [max(len(r[i]) for r in [head, *cells]) for i in range(4)]

    def line(r: tuple[str, ...]) -> str:
        return f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip()

    rule = "-" * len(line(tuple("x" * w for w in widths)))
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    dtype = "" if inputs is None else str(inputs.dtype).removeprefix("torch.")
    given = "no tensor" if inputs is None else f"{describe_output(inputs)} {dtype}"
    where = "no parameters" if not params else f"on {params[0].device}"
    return "\n".join(
        [
            f"{type(model).__name__} (input: {given}, {source}; model {where})",
            rule,
            line(head),
            rule,
            *(line(c) for c in cells),
            rule,
            f"Total params: {total:,}",
            f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}",
        ]
    )


# ------------------------------------------------------------------------------- repr(learn)


def _items(dl: Any, ds: Any) -> str | None:
    """How much data one split holds: items when the dataset says, else batches."""
    if ds is not None:
        tensors = tensors_of(ds)
        return f"{len(tensors[0] if tensors is not None else ds)} items"
    if dl is None:
        return None
    dataset = getattr(dl, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return f"{len(dataset)} items"
    n = length_of(dl)
    return f"{n} batches" if n is not None else "batches of unknown number"


def describe_data(learn: Learner) -> str:
    """``train 8000 items / valid 1000 items, batch 64 (valid 128)``, or ``no data``."""
    dls = learn.dls
    train, valid = _items(dls.train, dls.train_ds), _items(dls.valid, dls.valid_ds)
    if train is None and valid is None:
        return "no data"
    parts = [f"train {train or 'none'}", f"valid {valid or 'none'}"]
    batch = dls.batch_size or getattr(dls.train, "batch_size", None)
    valid_batch = dls.valid_batch_size or getattr(dls.valid, "batch_size", None)
    if not batch:
        return " / ".join(parts)
    extra = f" (valid {valid_batch})" if valid_batch and valid_batch != batch else ""
    return f"{' / '.join(parts)}, batch {batch}{extra}"


def _name(obj: Any) -> str:
    inner = getattr(obj, "func", obj)  # a functools.partial names its function
    return getattr(inner, "__name__", type(inner).__name__)


def describe(learn: Learner) -> str:
    """``repr(learn)``: the model, loss, data, optimizer, lr, device and plugins in order."""
    from ..hooks.guards import plugin_name

    model = learn.model
    n = sum(p.numel() for p in model.parameters() if not nn.parameter.is_lazy(p))
    opt = (
        type(learn.opt).__name__
        if learn.opt is not None
        else f"{_name(learn.opt_func)} (made by the first fit)"
    )
    plugins = ", ".join(plugin_name(p) for p in learn.plugins)
    return (
        f"Learner(model={type(model).__name__} ({n:,} parameters),\n"
        f"        loss={_name(learn.loss_func)},\n"
        f"        data={describe_data(learn)},\n"
        f"        opt={opt}, lr={learn.lr:g}, device={learn.device},\n"
        f"        plugins=[{plugins}])"
    )
