"""Checkpoints and weights: the files (names, runs, safe reads: ``files``), their atomic writing
(``atomic_write``), a run captured into a checkpoint and restored from one (``resume``), what a
resume checks first (``compatibility``), model weights on disk (``weights``: ``learn.save`` /
``learn.load``) and the ``Checkpoint`` plugin (``plugin``). ``Checkpoint``, ``CheckpointError``
and ``WeightsError`` are importable from ``pluglearn``."""
