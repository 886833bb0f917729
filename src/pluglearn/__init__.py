"""pluglearn: a small, fixed PyTorch training loop whose every extension is a pluggy plugin.

from pluglearn import Learner, DataLoaders, hookimpl, Accuracy
dls = DataLoaders.from_datasets((x_train, y_train), (x_valid, y_valid), batch_size=64)
learn = Learner(model, dls, lr=0.1, plugins=[Accuracy()])
learn.fit(3)

The top level holds what users touch: the Learner, DataLoaders, ``hookimpl``, the cancel
exceptions, the built-in plugins and the errors users catch. Everything else is imported from
the module that defines it (``pluglearn.callbacks.train_step.TrainStep``,
``pluglearn.data.loaders.TensorBatchLoader``, ``pluglearn.plugins.entrypoints.autoload_plugins``).
"""

from .callbacks.accumulate import GradientAccumulation
from .callbacks.checkpoint import Checkpoint
from .callbacks.clipping import GradientClipping
from .callbacks.compile import Compile
from .callbacks.ddp import DDP
from .callbacks.device import Device
from .callbacks.fsdp import FSDP
from .callbacks.gradcheck import GradCheck, GradCheckError
from .callbacks.hf import HFModel
from .callbacks.logger import MetricsLogger
from .callbacks.manual_backward import ManualBackward
from .callbacks.metric_adapter import MetricAdapter
from .callbacks.metrics import Accuracy, AverageMetric, AvgLoss
from .callbacks.mixed_precision import MixedPrecision
from .callbacks.mlflow_logger import MLflowLogger
from .callbacks.multiprocess_loader import MultiprocessLoader
from .callbacks.profiler import Profiler
from .callbacks.progress import ProgressBar
from .callbacks.recorder import Recorder
from .callbacks.report import ConsoleReport
from .callbacks.scheduler import Scheduler
from .callbacks.stopping import EarlyStopping, SaveBest, TerminateOnNaN
from .callbacks.tensorboard import TensorBoardLogger
from .callbacks.validate_every import ValidateEvery
from .callbacks.wandb_logger import WandbLogger
from .checkpoint import CheckpointError
from .data.loaders import DataLoaders
from .exceptions import (
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
)
from .export import load_learner
from .export_spec import ExportError
from .learner import Learner
from .plugins.guards import PluginError, PluginWarning
from .plugins.markers import hookimpl
from .weights import WeightsError

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
