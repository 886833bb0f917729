"""``learn.predict(x)``: predictions for one item or a batch, in eval mode and without gradients.

The input goes through the same ``predict`` hook as a batch of the loop (inside every
``forward_context``, so ``MixedPrecision`` applies), so an adapter such as ``HFModel`` or a
user's own ``predict`` plugin answers it too. No other hook fires: nothing is recorded,
counted or logged. Every module's train/eval mode, the batch state and the position are put
back afterwards, and ``predict`` may run from inside a hook.

Is ``x`` one item or a batch? ``batched=None`` compares ``x`` with an item of the Learner's
dataset (the inputs of ``train_ds``, else ``valid_ds``): the same number of dimensions is one
item, one more is a batch. Without a dataset, the item shape its DataLoaders record is used
(``DataLoaders.item_shape``: ``load_learner`` sets it from the export). Pass ``batched=True`` /
``False`` to say it, which is required when the Learner was given ready loaders and no item
shape.

Example::

    learn.fit(3)
    probs = learn.predict(x_valid[0]).softmax(-1)    # one item: shape (n_classes,)
    preds = learn.predict(x_valid[:16])              # a batch: shape (16, n_classes)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..data.arrays import tensors_of
from ..data.batch_ops import (
    LABELS,
    detach,
    first_tensor,
    inputs_of,
    is_pair,
    map_tensors,
    take,
    to_device,
)

if TYPE_CHECKING:
    from ..learner import Learner


def _reference_input(learn: Learner) -> Any:
    """The inputs of one item of the Learner's dataset, or None when it has none."""
    from ..run.rng import random_states_kept

    for ds in (learn.dls.train_ds, learn.dls.valid_ds):
        if ds is None:
            continue
        tensors = tensors_of(ds)
        if tensors is not None:
            return tensors[0][0]
        with random_states_kept():  # __getitem__ may draw random numbers (augmentation)
            item = ds[0]
        if is_pair(item) or isinstance(item, Mapping):
            return inputs_of(item)
        return item
    return None


def item_shape(learn: Learner) -> tuple[int, ...] | None:
    """The shape of one input item (of its first tensor): an item of the Learner's dataset's,
    else the one its DataLoaders record (``item_shape``), else None.

    Example::

        item_shape(Learner(model, DataLoaders.from_datasets((x, y))))  # x of shape (n, 4): (4,)
    """
    reference = first_tensor(_reference_input(learn))
    if reference is not None:
        return tuple(reference.shape)
    return getattr(learn.dls, "item_shape", None)


def is_one_item(learn: Learner, x: Any) -> bool:
    """Whether ``x`` is one item (see the module doc), or an error saying to pass ``batched``."""
    leaf = first_tensor(x)
    if leaf is None:
        raise TypeError(
            f"learn.predict() got a {type(x).__name__} holding no tensor: pass a tensor (or a "
            "dict/tuple of tensors) shaped like the dataset's inputs."
        )
    shape = item_shape(learn)
    if shape is None:
        raise ValueError(
            "learn.predict() cannot tell whether x is one item or a batch: this Learner has no "
            "dataset to compare it with (it was given ready loaders) and no item shape "
            "(DataLoaders.item_shape). Pass batched=True (x is a batch) or batched=False (x is "
            "one item)."
        )
    if leaf.ndim == len(shape):
        return True
    if leaf.ndim == len(shape) + 1:
        return False
    raise ValueError(
        f"learn.predict(): x has {leaf.ndim} dimension(s) {tuple(leaf.shape)}, but an item of "
        f"the dataset has {len(shape)} {shape}: pass one item of that "
        f"shape, or a batch with one more (leading) dimension, or say which with batched=."
    )


def _model_device(learn: Learner) -> torch.device | None:
    param = next(iter(learn.model.parameters()), None)
    return None if param is None else param.device


def predict(learn: Learner, x: Any, batched: bool | None = None) -> Any:
    """The body of :meth:`Learner.predict` (see the module doc)."""
    if batched is not None and not isinstance(batched, bool):
        raise TypeError(f"batched must be True, False or None, got {batched!r}.")
    if isinstance(x, Mapping) and LABELS in x:
        x = {k: v for k, v in x.items() if k != LABELS}
    one = is_one_item(learn, x) if batched is None else not batched
    xb = map_tensors(lambda t: t.unsqueeze(0), x) if one else x
    device = _model_device(learn)
    if device is not None:
        xb = to_device(xb, device)
    preds = detach(learn._predict_batch(xb if isinstance(xb, Mapping) else (xb, None)))
    return take(preds, 0) if one else preds
