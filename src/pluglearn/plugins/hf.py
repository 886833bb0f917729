"""HFModel: train models that take a dict batch and return ``.loss`` / ``.logits`` (Hugging Face).

A Hugging Face model is called as ``model(**batch)`` on a dict such as ``{"input_ids": ...,
"attention_mask": ..., "labels": ...}`` and returns an object holding the loss it computed
from ``labels`` and the ``logits``. One line adapts it::

    learn = Learner(model, dls, plugins=[HFModel(), Accuracy()])
    learn.fit(3)

With it, ``predict`` calls ``model(**learn.batch)`` and answers the logits (so ``learn.preds``,
``Accuracy``, ``MetricAdapter`` and ``get_preds`` see logits), ``compute_loss`` answers the
model's own ``output.loss``, and ``learn.yb`` is ``batch["labels"]`` (see
:func:`pluglearn.data.batch_ops.targets_of`). When the model returns no loss (a model without a loss
head, or ``labels`` missing) the Learner's ``loss_func(logits, labels)`` is used instead.
Any ``torch.nn.Module`` that follows the convention works; ``transformers`` is not imported.
The dataset returns dicts of tensors (the loaders collate them into dicts of stacked tensors),
or the loader yields such dicts (a tokenizer's ``BatchEncoding`` is one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..data.batch_ops import LABELS
from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


class HFModel:
    """The adapter for Hugging Face style models (see the module doc).

    ``logits`` names the output field used as predictions (``"logits"``; e.g.
    ``"start_logits"`` for another head)."""

    def __init__(self, logits: str = "logits") -> None:
        if not isinstance(logits, str) or not logits:
            raise TypeError(f"HFModel(logits=...) takes an attribute name, got {logits!r}.")
        self.logits = logits
        # the model's output of each batch in flight, until its compute_loss: keyed by the batch
        # object, so a validate() run from a hook of this batch keeps its own
        self._outputs: dict[int, Any] = {}

    @hookimpl
    def predict(self, learn: Learner) -> Any:
        batch = learn.batch
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"HFModel expects dict batches (model(**batch)), got a {type(batch).__name__}: "
                "make the dataset return dicts such as {'input_ids': ..., 'labels': ...}, or "
                "remove HFModel to use the (xb, yb) default step."
            )
        model = learn.wrapped_model if learn.wrapped_model is not None else learn.model
        output = model(**batch)
        logits = getattr(output, self.logits, None)
        if logits is None:
            raise TypeError(
                f"HFModel: the model returned a {type(output).__name__} without "
                f"{self.logits!r}: return an object with .loss and .{self.logits} (transformers: "
                f"return_dict=True, the default), or name the field: HFModel(logits='...')."
            )
        if LABELS in batch:  # compute_loss follows (learn.predict() passes no labels)
            self._outputs[id(batch)] = output
        return logits

    @hookimpl
    def compute_loss(self, learn: Learner) -> Any:
        output = self._outputs.pop(id(learn.batch), None)
        loss = getattr(output, "loss", None)
        if loss is not None:
            return loss
        if LABELS not in learn.batch:
            raise KeyError(
                f"HFModel: this batch has no {LABELS!r} entry (keys: {', '.join(learn.batch)}), "
                f"so there is no loss to train on: add {LABELS!r} to the dataset's items."
            )
        return learn.loss_func(learn.preds, learn.batch[LABELS])

    @hookimpl
    def cleanup_batch(self, learn: Learner) -> None:
        self._outputs.pop(id(learn.batch), None)  # a batch cancelled before its loss
