"""The built-in plugins of pluglearn, one concept per module.

The plugins users add are importable from ``pluglearn`` itself (``from pluglearn import
Accuracy``); everything else from the module that defines it, e.g.
``pluglearn.plugins.train_step.TrainStep``. ``pluglearn plugins`` lists them with their hooks.
"""
