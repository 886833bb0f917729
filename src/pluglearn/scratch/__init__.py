"""The notebook "Implementing a Neural Network from Scratch", as a library.

The fastai course's notebooks (part 2: ``03_backprop``, ``04_minibatch_training``) run with only
their imports changed to ``from pluglearn.scratch import ...`` and give the same values:
``tests/scratch/notebook_cells.txt`` holds every code cell so changed, and
``tests/scratch/test_notebook_as_printed.py`` runs them. Every piece is written by hand and
tested against its torch twin (``tests/scratch``); it imports torch and fastcore only, never the
Learner. Tensor shapes and derivatives sit in margin comments.

Notebook name -> pluglearn (the same name unless said)::

    lin(x, w, b)  (w is (in, out))    lin                 functional.py
    relu, mse                         relu, mse           functional.py
    log_softmax, logsumexp, nll       log_softmax (stable), logsumexp, nll; the first, naive
                                      log_softmax is log_softmax_naive      functional.py
    accuracy                          accuracy            functional.py
    F.cross_entropy                   cross_entropy, CrossEntropy (module)  functional.py, losses.py
    Module (forward / bwd)            Module (+ parameter registration, zero_grad)  modules.py
    Lin(w, b), Relu, Mse              Lin, Relu, Mse      layers.py, losses.py
    Linear(n_in, n_out)               Linear, a Lin that makes its weights: the notebook's
                                      randn draws times sqrt(2 / n_in) (Kaiming)  layers.py
    Model(w1, b1, w2, b2),            Model: both forms; the second has autograd on
      Model(n_in, nh, n_out)          (03_backprop)       layers.py
    MLP(n_in, nh, n_out)              MLP (l1, relu, l2; autograd on, weights (in, out))
                                                          layers.py
    nn.Sequential                     Sequential          layers.py
    MyModule (registration)           MyModule            registration.py
    Optimizer(params, lr)             Optimizer; SGD adds momentum, weight decay and the
                                      manual gradients (.g)                 optim.py
    Dataset, Sampler, BatchSampler    Dataset, Sampler, BatchSampler        data.py
    collate                           collate (any nesting, like default_collate)  data.py
    DataLoader(ds, batchs,            DataLoader, `batchs` (or `batches`) as the notebook's
      n_workers, collate_fn)          versions spell it; DataLoader(ds, bs), torch's DataLoader(ds,
                                      batch_size=64, shuffle=True)          data.py
    fit(epochs, model, ...), get_dls  fit, get_dls        training.py

Left to torch, as the notebook leaves them: 04_minibatch_training's ``Model`` of ``nn.Linear``
layers (its training loop reads ``nn.Linear``'s ``weight`` and ``bias``), ``Model(layers)``,
``SequentialModel`` and its "PyTorch DataLoader" section.

The production loaders the Learner uses, resumable mid-epoch and with a persistent worker pool,
are in :mod:`pluglearn.data.epochs` and :mod:`pluglearn.data.multiprocess`.
"""

from .data import BatchSampler, DataLoader, Dataset, Sampler, collate
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
from .layers import MLP, Lin, Linear, Model, Relu, Sequential
from .losses import CrossEntropy, Mse
from .modules import Module, Parameter, is_parameter
from .optim import SGD, Optimizer
from .registration import MyModule
from .training import fit, get_dls

__all__ = [
    "MLP",
    "SGD",
    "BatchSampler",
    "CrossEntropy",
    "DataLoader",
    "Dataset",
    "Lin",
    "Linear",
    "Model",
    "Module",
    "Mse",
    "MyModule",
    "Optimizer",
    "Parameter",
    "Relu",
    "Sampler",
    "Sequential",
    "accuracy",
    "collate",
    "cross_entropy",
    "fit",
    "get_dls",
    "is_parameter",
    "lin",
    "log_softmax",
    "log_softmax_naive",
    "logsumexp",
    "mse",
    "nll",
    "relu",
]
