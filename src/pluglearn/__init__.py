"""pluglearn: a small, fixed PyTorch training loop whose every extension is a pluggy plugin.

from pluglearn import Learner, DataLoaders, hookimpl, Accuracy
dls = DataLoaders.from_datasets((x_train, y_train), (x_valid, y_valid), batch_size=64)
learn = Learner(model, dls, lr=0.1, plugins=[Accuracy()])
learn.fit(3)

The top level holds what users touch: the Learner, DataLoaders, ``hookimpl``, the cancel
exceptions, the built-in plugins and the errors users catch. The plugins and errors load when
first used (``from pluglearn import DDP`` imports the distributed package then), so
``import pluglearn`` costs little beyond torch. Everything else is imported from the module that
defines it (``pluglearn.plugins.train_step.TrainStep``,
``pluglearn.data.loaders.TensorBatchLoader``, ``pluglearn.hooks.entrypoints.autoload_plugins``).
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from .data.loaders import DataLoaders
from .exceptions import (
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
)
from .hooks.markers import hookimpl
from .learner import Learner

if _TYPE_CHECKING:  # what the lazy names are, for type checkers and readers
    from .checkpoint.files import CheckpointError
    from .checkpoint.plugin import Checkpoint
    from .checkpoint.weights import WeightsError
    from .distributed.ddp import DDP
    from .distributed.fsdp import FSDP
    from .hooks.guards import PluginError, PluginWarning
    from .inference.export import load_learner
    from .inference.export_spec import ExportError
    from .plugins.accumulate import GradientAccumulation
    from .plugins.clipping import GradientClipping
    from .plugins.compile import Compile
    from .plugins.console_report import ConsoleReport
    from .plugins.device import Device
    from .plugins.gradcheck import GradCheck, GradCheckError
    from .plugins.hf import HFModel
    from .plugins.manual_backward import ManualBackward
    from .plugins.metric_adapter import MetricAdapter
    from .plugins.metrics import Accuracy, AverageMetric, AvgLoss
    from .plugins.metrics_logger import MetricsLogger
    from .plugins.mixed_precision import MixedPrecision
    from .plugins.mlflow_logger import MLflowLogger
    from .plugins.multiprocess_loader import MultiprocessLoader
    from .plugins.profiler import Profiler
    from .plugins.progress import ProgressBar
    from .plugins.recorder import Recorder
    from .plugins.scheduler import Scheduler
    from .plugins.stopping import EarlyStopping, SaveBest, TerminateOnNaN
    from .plugins.tensorboard import TensorBoardLogger
    from .plugins.validate_every import ValidateEvery
    from .plugins.wandb_logger import WandbLogger

#: public name -> the module that defines it, imported on first use
_LAZY = {
    "Accuracy": "plugins.metrics",
    "AverageMetric": "plugins.metrics",
    "AvgLoss": "plugins.metrics",
    "Checkpoint": "checkpoint.plugin",
    "CheckpointError": "checkpoint.files",
    "Compile": "plugins.compile",
    "ConsoleReport": "plugins.console_report",
    "DDP": "distributed.ddp",
    "Device": "plugins.device",
    "EarlyStopping": "plugins.stopping",
    "ExportError": "inference.export_spec",
    "FSDP": "distributed.fsdp",
    "GradCheck": "plugins.gradcheck",
    "GradCheckError": "plugins.gradcheck",
    "GradientAccumulation": "plugins.accumulate",
    "GradientClipping": "plugins.clipping",
    "HFModel": "plugins.hf",
    "MLflowLogger": "plugins.mlflow_logger",
    "ManualBackward": "plugins.manual_backward",
    "MetricAdapter": "plugins.metric_adapter",
    "MetricsLogger": "plugins.metrics_logger",
    "MixedPrecision": "plugins.mixed_precision",
    "MultiprocessLoader": "plugins.multiprocess_loader",
    "PluginError": "hooks.guards",
    "PluginWarning": "hooks.guards",
    "Profiler": "plugins.profiler",
    "ProgressBar": "plugins.progress",
    "Recorder": "plugins.recorder",
    "SaveBest": "plugins.stopping",
    "Scheduler": "plugins.scheduler",
    "TensorBoardLogger": "plugins.tensorboard",
    "TerminateOnNaN": "plugins.stopping",
    "ValidateEvery": "plugins.validate_every",
    "WandbLogger": "plugins.wandb_logger",
    "WeightsError": "checkpoint.weights",
    "load_learner": "inference.export",
}

__version__ = "0.1.0"

__all__ = [
    "DDP",
    "FSDP",
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
    "Compile",
    "ConsoleReport",
    "DataLoaders",
    "Device",
    "EarlyStopping",
    "ExportError",
    "GradCheck",
    "GradCheckError",
    "GradientAccumulation",
    "GradientClipping",
    "HFModel",
    "Learner",
    "MLflowLogger",
    "ManualBackward",
    "MetricAdapter",
    "MetricsLogger",
    "MixedPrecision",
    "MultiprocessLoader",
    "PluginError",
    "PluginWarning",
    "Profiler",
    "ProgressBar",
    "Recorder",
    "SaveBest",
    "Scheduler",
    "TensorBoardLogger",
    "TerminateOnNaN",
    "ValidateEvery",
    "WandbLogger",
    "WeightsError",
    "hookimpl",
    "load_learner",
]


def __getattr__(name: str) -> _Any:
    if name == "dist":  # the rank helpers, as ``from pluglearn import dist``
        return _importlib.import_module(".distributed.ranks", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pluglearn' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
