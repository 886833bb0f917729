"""DefaultLoader: answers ``make_dataloader`` for in-memory tensors and map-style datasets.

For a ``TensorDataset`` or an ``(x, y)`` tuple of tensors it returns a
:class:`~pluglearn.data.loaders.TensorBatchLoader` (one index operation per batch); for any
other map-style dataset an :class:`~pluglearn.data.epochs.ItemLoader`
(``__getitem__`` per item, then collate). When the Learner trains on CUDA the in-memory loader
gathers each batch straight into pinned memory, so ``Device`` copies it with
``non_blocking=True``. Both shuffle the training set with
``learn.dls.generator`` and can resume mid-epoch. Under torch.distributed ``batch_size`` is the
global batch and each rank gets its slice of every batch (see :mod:`pluglearn.data.loaders`).
It answers last, so a plugin such as ``MultiprocessLoader`` takes over by answering first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..data.arrays import tensors_of
from ..data.loaders import TensorBatchLoader
from ..distributed.ranks import rank, world_size
from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


class DefaultLoader:
    """The built-in answer to ``make_dataloader``."""

    @hookimpl(trylast=True)
    def make_dataloader(self, learn: Learner, dataset: Any, train: bool) -> Any:
        dls = learn.dls
        batch_size = dls.batch_size if train else dls.valid_batch_size
        drop_last = dls.drop_last and train
        tensors = tensors_of(dataset)
        # under torch.distributed each rank takes its slice of every global batch
        here, world = rank(), world_size()
        if tensors is not None and dls.collate_fn is None:
            pin = learn.device.type == "cuda"  # gathered into pinned memory: a non_blocking copy
            return TensorBatchLoader(
                tensors,
                batch_size,
                train,
                drop_last,
                dls.generator,
                rank=here,
                world_size=world,
                skip_empty=not train,
                pin_memory=pin,
            )
        if tensors is not None and isinstance(dataset, (tuple, list)):
            from torch.utils.data import TensorDataset

            dataset = TensorDataset(*tensors)  # collate_fn gets (x, y) items, not the columns
        from ..data.batch_ops import collate
        from ..data.epochs import ItemLoader

        return ItemLoader(
            dataset,
            batch_size,
            shuffle=train,
            drop_last=drop_last,
            collate_fn=dls.collate_fn or collate,
            generator=dls.generator,
            rank=here,
            world_size=world,
            skip_empty=not train,
        )
