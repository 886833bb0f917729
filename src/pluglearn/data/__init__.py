"""Data for pluglearn: DataLoaders and the in-memory tensor loader (``loaders``), MNIST
(``mnist``), the bundled digits (``digits``) and the production loaders. ``DataLoaders`` is
importable from ``pluglearn``; everything else from the module that defines it."""
