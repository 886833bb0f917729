"""The built-in plugins of pluglearn, one concept per module."""

from .accumulate import GradientAccumulation
from .checkpoint import Checkpoint
from .device import Device, to_device
from .gradcheck import GradCheck, GradCheckError, GradCheckWarning
from .loaders import DefaultLoader
from .logger import MetricsLogger
from .manual_backward import ManualBackward
from .metrics import Accuracy, AverageMetric, AvgLoss, MetricAdapter
from .multiprocess_loader import MultiprocessLoader
from .progress import ProgressBar
from .recorder import Recorder
from .report import ConsoleReport
from .stopping import EarlyStopping, MetricNotFoundError, SaveBest, TerminateOnNaN
from .train_step import TrainStep

__all__ = [
    "Accuracy",
    "AverageMetric",
    "AvgLoss",
    "Checkpoint",
    "ConsoleReport",
    "DefaultLoader",
    "Device",
    "EarlyStopping",
    "GradCheck",
    "GradCheckError",
    "GradCheckWarning",
    "GradientAccumulation",
    "ManualBackward",
    "MetricAdapter",
    "MetricNotFoundError",
    "MetricsLogger",
    "MultiprocessLoader",
    "ProgressBar",
    "Recorder",
    "SaveBest",
    "TerminateOnNaN",
    "TrainStep",
    "to_device",
]
