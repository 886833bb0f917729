"""Hook names from fastai, Lightning, Keras and Hugging Face, with their pluglearn equivalents.

A plugin ported from another framework keeps its old method names; a did-you-mean on
``on_train_batch_end`` would suggest a wrong hook, so the registration error (with
``@hookimpl``) or warning (without it: the method would never run) names the pluglearn hook
that does the same job instead. Names that are also pluglearn hooks
(``before_fit``, ``after_epoch``, ``before_step``, ...) are not here: they just work.

Example::

    suggest("on_train_batch_end")
    # "'on_train_batch_end' is a Lightning / Keras hook name; in pluglearn use 'after_batch'
    #  (check learn.training: it fires for validation batches too)."
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["COMMON_METHOD_NAMES", "FOREIGN_HOOKS", "ForeignHook", "suggest"]


class ForeignHook(NamedTuple):
    """Where a name comes from, the pluglearn hook(s) to use, and what to mind."""

    framework: str
    hooks: tuple[str, ...]
    note: str = ""


_TRAIN_ONLY = "check learn.training: it fires for validation batches too"
_VALID_ONLY = "check `not learn.training`: it fires for training batches too"
_PASS = "it fires for each pass; learn.training says which"

FOREIGN_HOOKS: dict[str, ForeignHook] = {
    # fastai / miniai
    "after_create": ForeignHook("fastai", ("before_fit",), "the Learner has no creation event"),
    "before_backward": ForeignHook("fastai", ("after_loss",), "it fires just before backward"),
    "after_cancel_fit": ForeignHook("fastai", ("cleanup_fit",), "it always runs, cancel or not"),
    "after_cancel_epoch": ForeignHook("fastai", ("cleanup_epoch",), "it always runs"),
    "after_cancel_train": ForeignHook("fastai", ("cleanup_train",), "it always runs"),
    "after_cancel_validate": ForeignHook("fastai", ("cleanup_validate",), "it always runs"),
    "after_cancel_batch": ForeignHook("fastai", ("cleanup_batch",), "it always runs"),
    "after_cancel_step": ForeignHook("fastai", ("after_step",), ""),
    "get_loss": ForeignHook("miniai", ("compute_loss",), "return the loss tensor"),
    "before_valid": ForeignHook("miniai", ("before_validate",), ""),
    "after_valid": ForeignHook("miniai", ("after_validate",), ""),
    # Lightning
    "setup": ForeignHook("Lightning", ("before_fit",), ""),
    "teardown": ForeignHook("Lightning", ("cleanup_fit",), "it always runs"),
    "on_fit_start": ForeignHook("Lightning", ("before_fit",), ""),
    "on_fit_end": ForeignHook("Lightning", ("after_fit", "cleanup_fit"), "cleanup_fit always runs"),
    "on_train_epoch_start": ForeignHook("Lightning", ("before_train",), "the train pass starts"),
    "on_train_epoch_end": ForeignHook("Lightning", ("after_train",), ""),
    "on_validation_start": ForeignHook("Lightning", ("before_validate",), ""),
    "on_validation_end": ForeignHook("Lightning", ("after_validate",), ""),
    "on_validation_epoch_start": ForeignHook("Lightning", ("before_validate",), ""),
    "on_validation_epoch_end": ForeignHook("Lightning", ("after_validate", "report"), ""),
    "on_train_batch_start": ForeignHook("Lightning", ("before_batch",), _TRAIN_ONLY),
    "on_validation_batch_start": ForeignHook("Lightning", ("before_batch",), _VALID_ONLY),
    "on_validation_batch_end": ForeignHook("Lightning", ("after_batch",), _VALID_ONLY),
    "on_before_backward": ForeignHook("Lightning", ("after_loss",), "it fires before backward"),
    "on_after_backward": ForeignHook("Lightning", ("after_backward",), ""),
    "on_before_optimizer_step": ForeignHook("Lightning", ("before_step",), ""),
    "optimizer_step": ForeignHook("Lightning", ("step",), "return True when you stepped"),
    "on_before_zero_grad": ForeignHook("Lightning", ("after_step",), ""),
    "optimizer_zero_grad": ForeignHook("Lightning", ("zero_grad",), "return True when done"),
    "training_step": ForeignHook(
        "Lightning", ("predict", "compute_loss"), "the loop calls them; return preds, then loss"
    ),
    "validation_step": ForeignHook("Lightning", ("predict", "compute_loss"), _PASS),
    "configure_optimizers": ForeignHook(
        "Lightning", ("after_create_opt",), "or pass Learner(opt_func=...)"
    ),
    "on_exception": ForeignHook("Lightning", ("on_error",), ""),
    "on_save_checkpoint": ForeignHook("Lightning", ("state_dict",), "return your state"),
    "on_load_checkpoint": ForeignHook("Lightning", ("load_state_dict",), ""),
    "on_epoch_start": ForeignHook("Lightning / Keras", ("before_epoch",), ""),
    # Lightning and Keras share these
    "on_epoch_end": ForeignHook("Lightning / Keras", ("after_epoch",), "learn.metrics is set"),
    "on_train_batch_end": ForeignHook("Lightning / Keras", ("after_batch",), _TRAIN_ONLY),
    "on_train_start": ForeignHook("Lightning", ("before_fit",), ""),
    "on_train_end": ForeignHook("Lightning / Keras / Hugging Face", ("after_fit",), ""),
    "on_batch_start": ForeignHook("Lightning", ("before_batch",), _PASS),
    "on_batch_end": ForeignHook("Lightning / Keras", ("after_batch",), _PASS),
    # Keras
    "on_train_begin": ForeignHook("Keras / Hugging Face", ("before_fit",), ""),
    "on_epoch_begin": ForeignHook("Keras / Hugging Face", ("before_epoch",), ""),
    "on_batch_begin": ForeignHook("Keras", ("before_batch",), _PASS),
    "on_train_batch_begin": ForeignHook("Keras", ("before_batch",), _TRAIN_ONLY),
    "on_test_begin": ForeignHook("Keras", ("before_validate",), ""),
    "on_test_end": ForeignHook("Keras", ("after_validate",), ""),
    "on_test_batch_begin": ForeignHook("Keras", ("before_batch",), _VALID_ONLY),
    "on_test_batch_end": ForeignHook("Keras", ("after_batch",), _VALID_ONLY),
    # Hugging Face Trainer
    "on_init_end": ForeignHook("Hugging Face", ("before_fit",), ""),
    "on_step_begin": ForeignHook("Hugging Face", ("before_batch",), _TRAIN_ONLY),
    "on_step_end": ForeignHook("Hugging Face", ("after_step",), ""),
    "on_evaluate": ForeignHook("Hugging Face", ("report",), "it receives the merged metrics"),
    "on_log": ForeignHook("Hugging Face", ("report",), "it receives the merged metrics"),
    "on_save": ForeignHook("Hugging Face", ("state_dict",), "return your state"),
}


#: foreign hook names that are also ordinary method names: only refused when marked @hookimpl,
#: while a method of another of these names without the marker warns (it never runs)
COMMON_METHOD_NAMES = frozenset({"setup", "teardown", "get_loss"})


def suggest(name: str) -> str | None:
    """A sentence naming the pluglearn hook(s) for a foreign hook ``name``, or None."""
    hook = FOREIGN_HOOKS.get(name)
    if hook is None:
        return None
    targets = " or ".join(f"'{h}'" for h in hook.hooks)
    note = f" ({hook.note})" if hook.note else ""
    return f"'{name}' is a {hook.framework} hook name; in pluglearn use {targets}{note}."
