"""The notebook "Implementing a Neural Network from Scratch", as a library.

Every piece is written by hand and tested against its torch twin: the functions (``lin``,
``relu``, ``mse``, ``log_softmax``, ``logsumexp``, ``nll``, ``cross_entropy``), modules with a
manual backward (``Module``, ``Linear``, ``ReLU``, ``MSE``, ``CrossEntropy``, ``Sequential``),
``SGD``, the data pipeline (``Dataset``, ``Sampler``, ``BatchSampler``, ``collate``,
``DataLoader``) and a sound multiprocessing loader. It imports torch and fastcore only, never the
Learner.
"""

from .data import BatchSampler, DataLoader, Dataset, EpochPlan, Sampler, collate
from .functional import (
    accuracy,
    cross_entropy,
    lin,
    log_softmax,
    log_softmax_naive,
    logsumexp,
    mse,
    nll,
    relu,
)
from .modules import (
    MLP,
    MSE,
    CrossEntropy,
    Linear,
    Module,
    Parameter,
    ReLU,
    Sequential,
    is_parameter,
)
from .multiprocess import MultiprocessDataLoader, WorkerError
from .optim import SGD

__all__ = [
    "MLP",
    "MSE",
    "SGD",
    "BatchSampler",
    "CrossEntropy",
    "DataLoader",
    "Dataset",
    "EpochPlan",
    "Linear",
    "Module",
    "MultiprocessDataLoader",
    "Parameter",
    "ReLU",
    "Sampler",
    "Sequential",
    "WorkerError",
    "accuracy",
    "collate",
    "cross_entropy",
    "is_parameter",
    "lin",
    "log_softmax",
    "log_softmax_naive",
    "logsumexp",
    "mse",
    "nll",
    "relu",
]
