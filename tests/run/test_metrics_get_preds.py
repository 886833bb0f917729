"""``learn.get_preds()`` (:class:`pluglearn.run.metrics.GatherPreds`): every validation batch's
predictions and targets joined in item order, their per-item lists checked against each batch's
``count_items`` answer, and refusals that name what did not join (``preds`` or ``targets``).

More get_preds tests, of batch structures: tests/data/test_batch_ops.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner, hookimpl
from pluglearn.data.batch_rules import TORCH_LISTS
from tests.data.test_batch_ops import Boxes, Sentences, detection_collate, pad_collate
from tests.plugins.test_metrics import (
    IgnoredTargets,
    make_data,
    make_learner,
    make_model,
    with_ignored_targets,
)


def loaders(collate_fn, n_valid: int = 10) -> DataLoaders:
    """8 training and ``n_valid`` validation images of :class:`Boxes`, in batches of 4."""
    return DataLoaders(
        *[
            torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_fn)
            for ds in (Boxes(8, 0), Boxes(n_valid, 1))
        ]
    )


class PerImageBoxes:
    """A detector's predictions: a list with one (1, 4) tensor of boxes per image; the loss is
    each image's box against the mean of its true boxes."""

    @hookimpl
    def predict(self, learn):
        return list(learn.model(learn.xb).unsqueeze(1))

    @hookimpl
    def compute_loss(self, learn):
        predicted = torch.cat(learn.preds)
        return F.mse_loss(predicted, torch.stack([b.mean(0) for b in learn.yb[: len(predicted)]]))


def detector(plugins) -> Learner:
    torch.manual_seed(0)
    learn = Learner(nn.Linear(4, 4), loaders(detection_collate), plugins=plugins)
    learn.remove_plugin("ProgressBar")
    return learn


def test_get_preds_joins_per_item_lists_of_predictions_and_targets_in_item_order():
    learn = detector([PerImageBoxes()])
    learn.fit(1)
    preds, targets = learn.get_preds()  # batches of 4, 4 and 2 images
    valid = Boxes(10, 1)
    assert isinstance(preds, list) and len(preds) == 10
    with torch.no_grad():
        expected = learn.model(valid.x)
    for pred, row in zip(preds, expected, strict=True):
        assert pred.shape == (1, 4)
        torch.testing.assert_close(pred[0], row)
    assert isinstance(targets, list) and len(targets) == 10
    assert all(torch.equal(t, b) for t, b in zip(targets, valid.boxes, strict=True))


class SkipsLastImage(PerImageBoxes):
    """A detector that leaves out the last image of every batch (its list is one short)."""

    @hookimpl
    def predict(self, learn):
        return super().predict(learn)[:-1]


def test_get_preds_refuses_a_list_of_predictions_missing_an_item_and_names_the_predictions():
    learn = detector([SkipsLastImage()])
    with pytest.raises(ValueError) as info:
        learn.get_preds()
    assert str(info.value) == (
        "concat: preds is a list of 3 entries in batch 0, which holds 4 items: below the top of "
        f"a batch a list holds one entry per item. {TORCH_LISTS}"
    )


def scaled_collate(items: list) -> tuple:
    """The images scaled by the batch's largest value, which the targets keep (one number for
    the batch: a 0-dim tensor) beside each image's boxes."""
    xb, boxes = detection_collate(items)
    scale = xb.abs().max()
    return xb / scale, {"boxes": boxes, "scale": scale}


class CountImages:
    """Counts a batch's images, the entries of its per-item list of boxes: the default count
    would take the targets' first tensor, the batch's one scale."""

    @hookimpl
    def count_items(self, batch):
        return len(batch[1]["boxes"])


class ScaledBoxLoss:
    @hookimpl
    def compute_loss(self, learn):
        boxes = learn.yb["boxes"]
        return F.mse_loss(learn.preds, torch.stack([b.mean(0) for b in boxes]))


def test_get_preds_checks_per_item_target_lists_against_the_count_items_answer():
    torch.manual_seed(0)
    learn = Learner(
        nn.Linear(4, 4), loaders(scaled_collate), plugins=[CountImages(), ScaledBoxLoss()]
    )
    learn.remove_plugin("ProgressBar")
    learn.fit(1)
    preds, targets = learn.get_preds()
    valid = Boxes(10, 1)
    assert all(torch.equal(t, b) for t, b in zip(targets["boxes"], valid.boxes, strict=True))
    scales = [valid.x[i : i + 4].abs().max() for i in range(0, 10, 4)]
    assert torch.equal(targets["scale"], torch.stack(scales))  # one per batch
    with torch.no_grad():
        scaled = [x / s for x, s in zip(valid.x.split(4), scales, strict=True)]
        expected = learn.model(torch.cat(scaled))
    torch.testing.assert_close(preds, expected)
    # the loss is weighed by the images too: the per-image average over ragged batches
    means = torch.stack([b.mean(0) for b in valid.boxes])
    per_image = F.mse_loss(expected, means).item()
    assert learn.metrics["valid_loss"] == pytest.approx(per_image, rel=1e-6)


class PaddedToSix:
    """Pads each batch's per-token predictions to the longest sentence (6 tokens), as the
    predictions' refusal advises; the loss reads the batch's own length."""

    @hookimpl
    def predict(self, learn):
        logits = learn.model(learn.xb)
        return F.pad(logits, (0, 0, 0, 6 - logits.shape[1]))

    @hookimpl
    def compute_loss(self, learn):
        preds = learn.preds[:, : learn.yb.shape[1]]
        return F.cross_entropy(preds.flatten(0, 1), learn.yb.flatten(), ignore_index=-100)


def test_get_preds_names_the_targets_when_they_alone_differ_in_length_between_batches():
    torch.manual_seed(0)
    dl = torch.utils.data.DataLoader(Sentences(), batch_size=4, collate_fn=pad_collate)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 3))
    learn = Learner(model, DataLoaders(dl, dl), plugins=[PaddedToSix()])
    learn.remove_plugin("ProgressBar")
    with pytest.raises(ValueError) as info:
        learn.get_preds()
    assert str(info.value) == (
        "concat: targets has shape (4, 3) in batch 0 but (4, 6) in batch 1: tensors join on dim 0 "
        "only, so every other dimension must agree. Pad them to one length where they are made "
        "(predictions in `predict`, targets in the loader's collate_fn; e.g. to the dataset's "
        "longest sequence), or make them a list of per-item tensors."
    )


def test_get_preds_asks_count_items_with_the_learner():
    # a count_items plugin that reads the Learner (its loss's ignore_index) serves get_preds too
    xv, yv = make_data(7, seed=2)
    yv = with_ignored_targets(yv)
    model = make_model()
    learn = make_learner(model, [], [(xv[:4], yv[:4]), (xv[4:], yv[4:])], [IgnoredTargets()])
    learn.loss_func = nn.CrossEntropyLoss(ignore_index=-1)
    preds, targets = learn.get_preds()
    with torch.no_grad():
        torch.testing.assert_close(preds, model(xv))
    assert torch.equal(targets, yv)
    assert learn.metrics["valid_loss"] == pytest.approx(learn.loss_func(preds, yv).item())
