"""The built-in plugins of pluglearn, one concept per module."""

from .device import Device, to_device
from .loaders import DefaultLoader
from .logger import MetricsLogger
from .metrics import Accuracy, AverageMetric, AvgLoss, MetricAdapter
from .progress import ProgressBar
from .recorder import Recorder
from .report import ConsoleReport
from .train_step import TrainStep

__all__ = [
    "Accuracy",
    "AverageMetric",
    "AvgLoss",
    "ConsoleReport",
    "DefaultLoader",
    "Device",
    "MetricAdapter",
    "MetricsLogger",
    "ProgressBar",
    "Recorder",
    "TrainStep",
    "to_device",
]
