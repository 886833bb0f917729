"""The AttributeError for a Learner attribute that does not exist, with the name that does.

A newcomer guesses names from other libraries (``learn.optimizer``, ``learn.epochs``,
``learn.criterion``); ``Learner.__getattr__`` runs only when a lookup misses and asks this module
for the error. Known guesses map to the real attribute, with what it holds; any other public name
gets the closest attribute by spelling. The attributes are documented in
``docs/learner_state.md``.

Example::

    >>> learn.optimizer
    AttributeError: 'Learner' object has no attribute 'optimizer': use learn.opt, the optimizer
    (created by fit(); None before the first fit). The Learner's attributes are listed in ...
"""

from __future__ import annotations

import difflib
from typing import Any

#: names from other libraries (or natural guesses) -> (the pluglearn attribute, what it is)
GUESSES: dict[str, tuple[str, str]] = {
    "optimizer": ("opt", "the optimizer (created by fit(); None before the first fit)"),
    "optim": ("opt", "the optimizer (created by fit(); None before the first fit)"),
    "optimiser": ("opt", "the optimizer (created by fit(); None before the first fit)"),
    "epochs": ("n_epochs", "the epochs of the current fit (learn.epoch is the one running)"),
    "num_epochs": ("n_epochs", "the epochs of the current fit"),
    "max_epochs": ("n_epochs", "the epochs of the current fit"),
    "current_epoch": ("epoch", "the epoch running, from 0"),
    "criterion": ("loss_func", "the loss function"),
    "loss_fn": ("loss_func", "the loss function"),
    "loss_function": ("loss_func", "the loss function"),
    "net": ("model", "the model"),
    "module": ("model", "the model"),
    "dataloaders": ("dls", "the DataLoaders (learn.dls.train, learn.dls.valid)"),
    "data": ("dls", "the DataLoaders (learn.dls.train, learn.dls.valid)"),
    "train_dl": ("dls", "the training loader, learn.dls.train"),
    "valid_dl": ("dls", "the validation loader, learn.dls.valid"),
    "callbacks": ("plugins", "the registered plugins"),
    "cbs": ("plugins", "the registered plugins"),
    "x": ("xb", "the inputs of the current batch"),
    "y": ("yb", "the targets of the current batch"),
    "pred": ("preds", "the model's output for the current batch"),
    "outputs": ("preds", "the model's output for the current batch"),
    "batch_idx": ("iter", "the batch index in the current pass, from 0"),
    "iteration": ("iter", "the batch index in the current pass, from 0"),
    "n_batches": ("n_iter", "the batches of the current pass"),
    "global_step": ("opt_steps", "optimizer steps over the Learner's life"),
    "is_training": ("training", "True in a training pass"),
    "learning_rate": ("lr", "the base learning rate"),
}


def missing_attribute(learn: Any, name: str) -> AttributeError:
    """The error for ``learn.<name>`` that does not exist: what to use instead, if anything."""
    message = f"{type(learn).__name__!r} object has no attribute {name!r}"
    known = _public_names(learn)
    if name in GUESSES and GUESSES[name][0] in known:
        real, what = GUESSES[name]
        return AttributeError(
            f"{message}: use learn.{real}, {what}. The Learner's attributes are listed in "
            "docs/learner_state.md."
        )
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    hint = f": did you mean learn.{close[0]}?" if close else "."
    return AttributeError(
        f"{message}{hint} The Learner's attributes are listed in docs/learner_state.md."
    )


def _public_names(learn: Any) -> list[str]:
    """The public attributes, properties and methods, read without touching ``__getattr__``."""
    own = object.__getattribute__(learn, "__dict__")
    return sorted({n for n in (*dir(type(learn)), *own) if not n.startswith("_")})
