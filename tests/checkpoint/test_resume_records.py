"""What a checkpoint record holds to resume its run: a loader without state has the order its
interrupted epoch drew (to replay it), and one pluglearn knows nothing about also the digest of
the batch at the cut (to check the replay); a stateful loader, or a cut at an epoch's end, needs
neither. And a model whose keys collide without wrapper prefixes is refused when saving."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pluglearn import Checkpoint, DataLoaders, Learner, WeightsError
from pluglearn.checkpoint.files import checkpoints_in
from tests.checkpoint.test_weights_refusals import WeightBesideModule
from tests.helpers import batches, tiny_data
from tests.run.test_replay_refusals import Stream


def _records(tmp_path, train) -> list[dict]:
    """Every record of a 1-epoch fit on ``train`` checkpointed after each batch, in order."""
    x, y = tiny_data(12)
    dls = train if isinstance(train, DataLoaders) else DataLoaders(train, batches(x[8:], y[8:], 2))
    learn = Learner(nn.Linear(4, 3), dls, lr=0.1, defaults=False)
    learn.fit(1, plugins=[Checkpoint(tmp_path, every_n_batches=1, keep_last=None)])
    return [torch.load(path, weights_only=True) for path in checkpoints_in(tmp_path)]


def _loaders():
    x, y = tiny_data(8)
    return {
        "stateful": DataLoaders.from_datasets((x, y), (x, y), batch_size=2),
        "known": batches(x, y, 2),  # a list: replayed, its order known
        "unknown": Stream(batches(x, y, 2)),  # replayed, and its batch checked by a digest
    }


@pytest.mark.parametrize(
    ("kind", "order", "digest"),
    [("stateful", False, False), ("known", True, False), ("unknown", True, True)],
)
def test_a_mid_epoch_record_holds_the_order_and_digest_its_loader_needs_and_no_more(
    tmp_path, kind, order, digest
):
    *mid_epoch, epoch_end = _records(tmp_path, _loaders()[kind])
    assert mid_epoch and epoch_end["loop"]["position"] == 0
    for record in mid_epoch:
        assert (record["order"] is not None) == order, record["loop"]
        assert (record["fingerprint"] is not None) == digest, record["loop"]
    assert epoch_end["order"] is None and epoch_end["fingerprint"] is None


def test_a_model_whose_keys_collide_without_prefixes_is_refused_at_its_first_checkpoint(tmp_path):
    x, y = tiny_data(8)
    dls = DataLoaders(batches(x, y, 4), batches(x, y, 4))
    learn = Learner(WeightBesideModule(), dls, lr=0.1, defaults=False)
    with pytest.raises(WeightsError) as info:
        learn.fit(1, plugins=[Checkpoint(tmp_path, every_n_batches=1)])
    assert str(info.value) == (
        "the model: keys 'module.weight' and another both become 'weight' without their "
        "wrapper prefixes ('_orig_mod.', 'module.'): save the unwrapped model's state dict."
    )
