"""pluglearn: a small, fixed PyTorch training loop whose every extension is a pluggy plugin.

from pluglearn import Learner, DataLoaders, hookimpl, Accuracy
dls = DataLoaders.from_datasets((x_train, y_train), (x_valid, y_valid), batch_size=64)
learn = Learner(model, dls, lr=0.1, plugins=[Accuracy()])
learn.fit(3)
"""

from .callbacks import (
    Accuracy,
    AverageMetric,
    AvgLoss,
    Checkpoint,
    ConsoleReport,
    DefaultLoader,
    Device,
    EarlyStopping,
    GradCheck,
    GradCheckError,
    GradientAccumulation,
    ManualBackward,
    MetricAdapter,
    MetricsLogger,
    MultiprocessLoader,
    ProgressBar,
    Recorder,
    SaveBest,
    TerminateOnNaN,
    TrainStep,
)
from .checkpoint import CheckpointError
from .data import DataLoaders, TensorBatchLoader
from .exceptions import (
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
)
from .learner import Learner
from .plugins import PluginError, PluginWarning, hookimpl, load_entry_point_plugins

__version__ = "0.1.0"

__all__ = [
    "Accuracy",
    "AverageMetric",
    "AvgLoss",
    "CancelBatchException",
    "CancelEpochException",
    "CancelException",
    "CancelFitException",
    "CancelTrainException",
    "CancelValidateException",
    "Checkpoint",
    "CheckpointError",
    "ConsoleReport",
    "DataLoaders",
    "DefaultLoader",
    "Device",
    "EarlyStopping",
    "GradCheck",
    "GradCheckError",
    "GradientAccumulation",
    "Learner",
    "ManualBackward",
    "MetricAdapter",
    "MetricsLogger",
    "MultiprocessLoader",
    "PluginError",
    "PluginWarning",
    "ProgressBar",
    "Recorder",
    "SaveBest",
    "TensorBatchLoader",
    "TerminateOnNaN",
    "TrainStep",
    "hookimpl",
    "load_entry_point_plugins",
]
