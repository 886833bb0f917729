"""learn.summary() and repr(learn): the table from one real forward pass, the run put back exactly
(a fit after summary() equals the fit without it), and a repr that names what a Learner trains."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch
from torch import nn

from pluglearn import Accuracy, DataLoaders, HFModel, Learner, hookimpl
from pluglearn.diagnostics.summary import SummaryText, describe_output
from tests.plugins.test_hf import TinyHF

X = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(1))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)
    )


# Not the shared make_learner: 6-feature data and the test's own model.
def make_learner(model: nn.Module, valid: bool = True, **kwargs) -> Learner:
    dls = DataLoaders.from_datasets(
        (X[:32], Y[:32]), (X[32:], Y[32:]) if valid else None, batch_size=8, seed=3
    )
    return Learner(model, dls, defaults=False, **kwargs)


# Not the shared make_learner: torch's own DataLoader.
def torch_loader_learner(model: nn.Module) -> Learner:
    """A shuffled torch DataLoader and no validation set: summary() draws a training batch,
    and the DataLoader's base seed, from torch's global generator."""
    train = torch.utils.data.TensorDataset(X[:32], Y[:32])
    return Learner(model, DataLoaders(torch.utils.data.DataLoader(train, 8, shuffle=True)))


def rows(text: str) -> list[list[str]]:
    """The table's layer rows, split on runs of two or more spaces."""
    lines = text.splitlines()
    body = lines[lines.index(lines[1], 2) + 1 :]  # after the second rule
    body = body[: body.index(lines[1])]
    return [[c for c in line.split("  ") if c.strip()] for line in body]


def test_the_table_lists_each_layer_its_output_shape_and_parameters_and_the_totals():
    model = make_model()
    model[4].bias.requires_grad_(False)
    text = make_learner(model).summary()
    assert isinstance(text, SummaryText) and repr(text) == str(text)
    assert [[c.strip() for c in r] for r in rows(text)] == [
        ["0 (Linear)", "8 x 8", "56", "True"],  # the first validation batch: 8 items
        ["1 (BatchNorm1d)", "8 x 8", "16", "True"],
        ["2 (ReLU)", "8 x 8", "0"],
        ["3 (Dropout)", "8 x 8", "0"],
        ["4 (Linear)", "8 x 3", "27", "partly"],
    ]
    assert text.splitlines()[0] == (
        "Sequential (input: 8 x 6 float32, the first batch of the validation set; model on cpu)"
    )
    assert text.splitlines()[-3:] == [
        "Total params: 99",
        "Trainable params: 96",
        "Non-trainable params: 3",
    ]
    assert sum(p.numel() for p in model.parameters()) == 99


class OwnWeight(nn.Module):
    """A parameter of its own beside a child: it gets a row of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        return self.lin(x) * self.scale


def test_a_module_with_parameters_of_its_own_and_a_given_batch():
    text = make_learner(OwnWeight()).summary(batch=X[:5])
    assert [[c.strip() for c in r] for r in rows(text)] == [
        ["lin (Linear)", "5 x 3", "21", "True"],
        ["OwnWeight (OwnWeight)", "5 x 3", "3", "True"],  # the root's output comes last
    ]
    assert "input: 5 x 6 float32, the batch given" in text


def state_of_everything(learn: Learner) -> tuple:
    model = learn.model
    return (
        [m.training for m in model.modules()],
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.grad for p in model.parameters()],
        torch.get_rng_state(),
        random.getstate(),
        np.random.get_state()[1].copy(),
        learn.dls.generator.get_state(),
    )


def assert_same(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]
    assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert a[2] == b[2]  # no gradient was made (all None)
    assert torch.equal(a[3], b[3]) and a[4] == b[4] and (a[5] == b[5]).all()
    assert torch.equal(a[6], b[6])


LEARNERS = {
    "validation-batch": make_learner,
    "shuffled-train-batch": lambda model: make_learner(model, valid=False),
    "torch-dataloader": torch_loader_learner,
}


@pytest.mark.parametrize("kind", LEARNERS)
def test_summary_puts_everything_back_and_a_fit_after_it_is_the_fit_without_it(kind):
    torch.manual_seed(5)
    learn = LEARNERS[kind](make_model())
    learn.model.train()
    learn.model[3].eval()  # a mixed set of modes, to be put back module by module
    before = state_of_everything(learn)
    learn.summary()
    assert_same(before, state_of_everything(learn))

    learn.fit(2)
    torch.manual_seed(5)
    plain = LEARNERS[kind](make_model())
    plain.fit(2)
    for p, q in zip(
        learn.model.state_dict().values(), plain.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q)


def test_summary_goes_through_the_predict_hook_for_dict_batches():
    items = {
        "input_ids": torch.randint(0, 20, (12, 5), generator=torch.Generator().manual_seed(0)),
        "attention_mask": torch.ones(12, 5, dtype=torch.long),
        "labels": torch.randint(0, 2, (12,), generator=torch.Generator().manual_seed(1)),
    }

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return {k: v[i] for k, v in items.items()}

    dls = DataLoaders.from_datasets(Dicts(), Dicts(), batch_size=4, seed=0)
    text = Learner(TinyHF(), dls, plugins=[HFModel()], defaults=False).summary()
    assert [r[0].strip() for r in rows(text)] == [
        "emb (Embedding)",
        "drop (Dropout)",
        "head (Linear)",
    ]
    assert [r[1].strip() for r in rows(text)] == ["8 x 5 x 8", "8 x 8", "8 x 2"]
    assert "input: 8 x 5 int64" in text


def test_summary_from_inside_a_hook_is_refused():
    class Nested:
        @hookimpl
        def after_batch(self, learn):
            learn.summary()

    learn = make_learner(make_model(), plugins=[Nested()])
    with pytest.raises(RuntimeError, match=r"Learner.summary\(\) was called from inside a hook"):
        learn.fit(1)


def test_without_data_or_with_lazy_layers_summary_says_what_to_do():
    no_data = Learner(make_model(), DataLoaders.for_inference(), defaults=False)
    with pytest.raises(ValueError, match=r"no data: pass one, learn.summary\(batch=\(xb, yb\)\)"):
        no_data.summary()
    lazy = make_learner(nn.Sequential(nn.LazyLinear(3)))
    with pytest.raises(ValueError, match=r"lazy layers before their first forward \(0.weight"):
        lazy.summary()


def test_describe_output_of_nested_outputs():
    assert describe_output(torch.zeros(())) == "scalar"
    assert describe_output([torch.zeros(2, 1), None]) == "2 x 1, -"
    assert describe_output({"logits": torch.zeros(4, 2), "loss": None}) == "logits: 4 x 2"


# ----------------------------------------------------------------------------- repr


def test_repr_names_the_model_data_loss_optimizer_lr_device_and_plugins_in_order():
    learn = make_learner(make_model(), lr=0.05, plugins=[Accuracy()])
    text = repr(learn)
    assert text == (
        "Learner(model=Sequential (99 parameters),\n"
        "        loss=cross_entropy,\n"
        "        data=train 32 items / valid 8 items, batch 8 (valid 16),\n"
        "        opt=SGD (made by the first fit), lr=0.05, device=cpu,\n"
        "        plugins=[Accuracy, TrainStep, DefaultLoader, Device])"
    )
    learn.fit(1, lr=0.2)
    assert "opt=SGD, lr=0.2, device=cpu" in repr(learn)


def test_repr_of_ready_loaders_and_of_a_learner_without_data():
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=10)
    ready = Learner(make_model(), DataLoaders(loader), defaults=False)
    assert "data=train 40 items / valid none, batch 10," in repr(ready)
    batches = Learner(make_model(), DataLoaders([(X, Y)] * 3), defaults=False)
    assert "data=train 3 batches / valid none," in repr(batches)
    empty = Learner(make_model(), DataLoaders.for_inference(), defaults=False)
    assert "data=no data," in repr(empty)


def test_repr_is_safe_while_a_fit_runs_in_another_thread():
    seen: list[str] = []
    started, release = threading.Event(), threading.Event()

    class Hold:
        @hookimpl
        def after_batch(self, learn):
            started.set()
            release.wait(5)

    learn = make_learner(make_model(), plugins=[Hold()])
    worker = threading.Thread(target=learn.fit, args=(1,))
    worker.start()
    started.wait(5)
    seen.append(repr(learn))
    release.set()
    worker.join()
    assert "Learner(model=Sequential" in seen[0]
