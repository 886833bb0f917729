"""Data for pluglearn: DataLoaders, the in-memory tensor loader, MNIST and the bundled digits."""

from .loaders import DataLoaders, TensorBatchLoader

__all__ = ["DataLoaders", "TensorBatchLoader"]
