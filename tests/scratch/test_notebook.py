"""The notebook's own code cells (fastai course part 2, 03_backprop and 04_minibatch_training),
typed in with only their imports changed to ``pluglearn.scratch``: they run and give the values
torch gives. Random data of MNIST's shape (784 features) stands in for MNIST, so no download."""

from __future__ import annotations

import multiprocessing
from itertools import islice

import fastcore.test as fct
import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

from pluglearn.scratch import (
    BatchSampler,
    DataLoader,
    Dataset,
    Lin,
    Model,
    Module,
    Mse,
    MyModule,
    Optimizer,
    Relu,
    Sampler,
    accuracy,
    collate,
    fit,
    get_dls,
    lin,
    log_softmax,
    logsumexp,
    mse,
    nll,
    relu,
)

N, M, NH = 256, 784, 50


def _data(c: int = 10):
    g = torch.Generator().manual_seed(42)
    x_train, x_valid = torch.rand(N, M, generator=g), torch.rand(N // 2, M, generator=g)
    y_train = torch.randint(0, c, (N,), generator=g)
    y_valid = torch.randint(0, c, (N // 2,), generator=g)
    return x_train, y_train, x_valid, y_valid


# --- 03_backprop ------------------------------------------------------------------------


def test_backprop_notebook_forward_and_backward_equal_autograd():
    torch.manual_seed(42)
    x_train, y_train, x_valid, _ = _data()
    _n, m = x_train.shape
    nh = 50
    w1 = torch.randn(m, nh)
    b1 = torch.zeros(nh)
    w2 = torch.randn(nh, 1)
    b2 = torch.zeros(1)

    t = lin(x_valid, w1, b1)
    assert t.shape == (N // 2, 50)
    t = relu(t)
    assert (t >= 0).all()

    def model(xb):
        l1 = lin(xb, w1, b1)
        l2 = relu(l1)
        return lin(l2, w2, b2)

    res = model(x_valid)
    assert res.shape == (N // 2, 1)
    y_train = y_train.float()
    preds = model(x_train)
    torch.testing.assert_close(mse(preds, y_train), F.mse_loss(preds[:, 0], y_train))

    # the gradients saved "for testing against later", from autograd this time
    def mkgrad(x):
        return x.clone().requires_grad_(True)

    chks = w1, w2, b1, b2, x_train
    w12, w22, b12, b22, xt2 = tuple(map(mkgrad, chks))
    loss = mse(lin(relu(lin(xt2, w12, b12)), w22, b22), y_train)
    loss.backward()
    w1g, w2g, b1g, b2g, ig = (t.grad for t in (w12, w22, b12, b22, xt2))

    # the notebook's Model of Lin, Relu and Mse
    model = Model(w1, b1, w2, b2)
    loss = model(x_train, y_train)
    model.backward()
    fct.test_close(loss, mse(preds, y_train), eps=1e-3)
    fct.test_close(w2g, w2.g, eps=0.01)
    fct.test_close(b2g, b2.g, eps=0.01)
    fct.test_close(w1g, w1.g, eps=0.01)
    fct.test_close(b1g, b1.g, eps=0.01)
    fct.test_close(ig, x_train.g, eps=0.01)
    for ours, theirs in [(w1.g, w1g), (b1.g, b1g), (w2.g, w2g), (b2.g, b2g), (x_train.g, ig)]:
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_backprop_notebook_module_subclasses_written_by_the_reader():
    torch.manual_seed(42)
    x_train, y_train, _, _ = _data()
    y_train = y_train.float()
    w1, b1 = torch.randn(M, NH, dtype=torch.float64), torch.zeros(NH, dtype=torch.float64)
    w2, b2 = torch.randn(NH, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    x_train, y_train = x_train.double(), y_train.double()

    class Relu(Module):
        def forward(self, inp):
            return inp.clamp_min(0.0)

        def bwd(self, out, inp):
            inp.g = (inp > 0).float() * out.g

    class Lin(Module):
        def __init__(self, w, b):
            self.w, self.b = w, b

        def forward(self, inp):
            return inp @ self.w + self.b

        def bwd(self, out, inp):
            inp.g = self.out.g @ self.w.t()
            self.w.g = inp.t() @ self.out.g
            self.b.g = self.out.g.sum(0)

    class Mse(Module):
        def forward(self, inp, targ):
            return (inp.squeeze() - targ).pow(2).mean()

        def bwd(self, out, inp, targ):
            inp.g = 2 * (inp.squeeze() - targ).unsqueeze(-1) / targ.shape[0]

    class Model:
        def __init__(self, w1, b1, w2, b2):
            self.layers = [Lin(w1, b1), Relu(), Lin(w2, b2)]
            self.loss = Mse()

        def __call__(self, x, targ):
            for layer in self.layers:
                x = layer(x)
            return self.loss(x, targ)

        def backward(self):
            self.loss.backward()
            for layer in reversed(self.layers):
                layer.backward()

    model = Model(w1, b1, w2, b2)
    model(x_train, y_train)
    model.backward()
    refs = [t.clone().requires_grad_() for t in (w1, b1, w2, b2, x_train)]
    F.mse_loss(F.relu(refs[4] @ refs[0] + refs[1]) @ refs[2] + refs[3], y_train[:, None]).backward()
    for ours, ref in zip((w1, b1, w2, b2, x_train), refs, strict=True):
        torch.testing.assert_close(ours.g, ref.grad, rtol=1e-10, atol=1e-10)


def test_library_lin_relu_mse_are_the_notebook_ones():
    # the library's Lin, Relu, Mse (not the cells' own): same values as the cells' formulas
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(5, 3, generator=g), torch.randn(3, 4, generator=g), torch.randn(4)
    layer = Lin(w, b)
    torch.testing.assert_close(layer(x), x @ w + b)
    torch.testing.assert_close(Relu()(x), x.clamp_min(0.0))
    out, targ = torch.randn(5, 1, generator=g), torch.randn(5, generator=g)
    torch.testing.assert_close(Mse()(out, targ), (out[:, 0] - targ).pow(2).mean())


# --- 04_minibatch_training --------------------------------------------------------------


def test_minibatch_notebook_losses_and_accuracy_equal_torch():
    torch.manual_seed(1)
    x_train, y_train, _, _ = _data()
    model = nn.Sequential(nn.Linear(M, NH), nn.ReLU(), nn.Linear(NH, 10))
    pred = model(x_train)
    fct.test_close(logsumexp(pred), pred.logsumexp(-1))
    sm_pred = log_softmax(pred)
    torch.testing.assert_close(sm_pred, F.log_softmax(pred, -1))
    assert torch.equal(sm_pred[[0, 1, 2], y_train[:3]], sm_pred[range(3), y_train[:3]])
    loss = nll(sm_pred, y_train)
    fct.test_close(F.nll_loss(F.log_softmax(pred, -1), y_train), loss, 1e-3)
    fct.test_close(F.cross_entropy(pred, y_train), loss, 1e-3)
    bs = 50
    preds, yb = model(x_train[0:bs]), y_train[0:bs]
    assert accuracy(preds, yb) == (preds.argmax(dim=1) == yb).float().mean()


def test_mymodule_registers_its_layers_like_nn_module():
    m, nh = M, NH
    mdl = MyModule(m, nh, 10)
    assert repr(mdl) == (
        "{'l1': Linear(in_features=784, out_features=50, bias=True), "
        "'l2': Linear(in_features=50, out_features=10, bias=True)}"
    )
    assert [p.shape for p in mdl.parameters()] == [(50, 784), (50,), (10, 50), (10,)]
    twin = nn.Module()  # torch's own registration of the same layers
    twin.l1, twin.l2 = mdl.l1, mdl.l2
    assert all(a is b for a, b in zip(mdl.parameters(), twin.parameters(), strict=True))


def _train(opt_func, epochs: int = 2, bs: int = 50, lr: float = 0.5):
    torch.manual_seed(1)
    x_train, y_train, _, _ = _data()
    n = len(x_train)
    model = nn.Sequential(nn.Linear(M, NH), nn.ReLU(), nn.Linear(NH, 10))
    opt = opt_func(model.parameters(), lr=lr)
    loss_func = F.cross_entropy
    for _epoch in range(epochs):
        for i in range(0, n, bs):
            s = slice(i, min(n, i + bs))
            xb, yb = x_train[s], y_train[s]
            preds = model(xb)
            loss = loss_func(preds, yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
    return [p.detach() for p in model.parameters()]


def test_optimizer_steps_like_torch_sgd():
    ours, torchs = _train(Optimizer), _train(optim.SGD)
    for a, b in zip(ours, torchs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lr must be > 0"):
        Optimizer([torch.zeros(2)], lr=0)


def test_dataset_sampler_batchsampler_collate_dataloader_cells():
    torch.manual_seed(1)
    x_train, y_train, x_valid, y_valid = _data()
    train_ds, valid_ds = Dataset(x_train, y_train), Dataset(x_valid, y_valid)
    assert len(train_ds) == len(x_train)
    xb, yb = train_ds[0:5]
    assert xb.shape == (5, 28 * 28) and yb.shape == (5,)

    bs = 50
    ss = Sampler(train_ds)
    it = iter(ss)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert list(islice(ss, 5)) == [0, 1, 2, 3, 4]
    ss = Sampler(train_ds, shuffle=True)
    assert sorted(ss) == list(range(N))
    batchs = BatchSampler(ss, 4)
    assert [len(b) for b in islice(batchs, 5)] == [4] * 5

    train_samp = BatchSampler(Sampler(train_ds, shuffle=True), bs)
    valid_samp = BatchSampler(Sampler(valid_ds, shuffle=False), bs)
    train_dl = DataLoader(train_ds, batchs=train_samp)
    valid_dl = DataLoader(valid_ds, batchs=valid_samp, collate_fn=collate)
    xb, yb = next(iter(valid_dl))
    assert torch.equal(xb, x_valid[:bs]) and torch.equal(yb, y_valid[:bs])
    seen = torch.cat([yb for _, yb in train_dl])
    assert len(seen) == N and seen.sort().values.equal(y_train.sort().values)
    # the notebook's collate is (stack xs, stack ys); ours agrees on (x, y) items
    items = (train_ds[i] for i in [3, 6, 8, 1])  # a generator, as the DataLoader passes
    xs, ys = collate(items)
    assert torch.equal(xs, x_train[[3, 6, 8, 1]]) and torch.equal(ys, y_train[[3, 6, 8, 1]])


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="the notebook's pool forks"
)
def test_multiprocessing_dataloader_calls_collate_fn_in_the_workers():
    x_train, y_train, _, _ = _data()
    train_ds = Dataset(x_train, y_train)
    train_samp = BatchSampler(Sampler(train_ds, shuffle=False), 50)

    def doubled(b):  # a collate_fn of one's own: the course's pool version never called it
        xb, yb = collate(b)
        return xb * 2, yb

    train_dl = DataLoader(train_ds, batchs=train_samp, n_workers=2, collate_fn=doubled)
    it = iter(train_dl)
    xb, yb = next(it)
    assert xb.shape == (50, 784) and yb.shape == (50,)
    assert torch.equal(xb, 2 * x_train[:50])
    rest = list(it)
    in_process = list(DataLoader(train_ds, batchs=train_samp, collate_fn=doubled))
    assert len(rest) + 1 == len(in_process) == len(train_dl)
    for (a, b), (c, d) in zip([(xb, yb), *rest], in_process, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert multiprocessing.active_children() == []  # the pool ends with the epoch


def test_fit_and_get_dls_train_like_the_notebook(capsys):
    torch.manual_seed(1)
    x_train, y_train, x_valid, y_valid = _data(c=2)
    x_train[:, :20] += y_train[:, None]  # make the classes learnable in a few epochs
    x_valid[:, :20] += y_valid[:, None]
    train_ds, valid_ds = Dataset(x_train, y_train), Dataset(x_valid, y_valid)
    bs = 32
    train_dl, valid_dl = get_dls(train_ds, valid_ds, bs)
    assert (train_dl.batchs.bs, valid_dl.batchs.bs) == (32, 64)
    assert train_dl.batchs.sampler.shuffle and not valid_dl.batchs.sampler.shuffle
    model = nn.Sequential(nn.Linear(M, NH), nn.ReLU(), nn.Linear(NH, 2))
    opt = Optimizer(model.parameters(), lr=0.05)
    loss, acc = fit(5, model, F.cross_entropy, opt, train_dl, valid_dl)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1", "2", "3", "4"]
    with torch.no_grad():  # the returned numbers are the validation set's, weighted by batch
        preds = model(x_valid)
    fct.test_close(loss, F.cross_entropy(preds, y_valid).item(), eps=1e-4)
    fct.test_close(acc, accuracy(preds, y_valid).item(), eps=1e-6)
    assert acc > 0.8
