"""The notebook's training loop: ``fit`` and ``get_dls``.

``fit`` trains for ``epochs`` epochs (train mode: forward, loss, ``loss.backward()``, step, zero
grad) and after each validates (eval mode, no grad), printing ``epoch, loss, accuracy`` weighted
by batch size. It works with a ``torch.nn`` model and ``torch.optim`` or with the scratch
``Optimizer``; the Learner (:class:`pluglearn.Learner`) is this loop with hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from pluglearn.scratch.data import DataLoader
from pluglearn.scratch.functional import accuracy

__all__ = ["fit", "get_dls"]


def fit(
    epochs: int,
    model: Any,
    loss_func: Callable[[Any, Any], torch.Tensor],
    opt: Any,
    train_dl: Iterable[Any],
    valid_dl: Iterable[Any],
) -> tuple[float, float]:
    """Train ``epochs`` epochs; return the last epoch's ``(valid loss, valid accuracy)``."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fit: epochs must be an int >= 1, got {epochs!r}; e.g. fit(3, ...)")
    for epoch in range(epochs):
        model.train()
        for xb, yb in train_dl:
            loss = loss_func(model(xb), yb)  # (n, c), (n,) -> ()
            loss.backward()
            opt.step()
            opt.zero_grad()

        model.eval()
        with torch.no_grad():
            tot_loss, tot_acc, count = 0.0, 0.0, 0
            for xb, yb in valid_dl:
                pred, n = model(xb), len(xb)
                count += n
                tot_loss += loss_func(pred, yb).item() * n  # batch means -> sums
                tot_acc += accuracy(pred, yb).item() * n
        if count == 0:
            raise ValueError("fit: the validation loader gave no batches; give it some data")
        print(epoch, tot_loss / count, tot_acc / count)
    return tot_loss / count, tot_acc / count


def get_dls(train_ds: Any, valid_ds: Any, bs: int, **kwargs: Any) -> tuple[DataLoader, DataLoader]:
    """A shuffled training loader with batches of ``bs`` and an ordered validation loader with
    batches of ``2 * bs`` (no gradients to keep, so twice as many fit); ``kwargs`` (e.g.
    ``n_workers``, ``collate_fn``) go to both."""
    return (
        DataLoader(train_ds, batch_size=bs, shuffle=True, **kwargs),
        DataLoader(valid_ds, batch_size=bs * 2, **kwargs),
    )
