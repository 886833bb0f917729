"""MixedPrecision against torch.autocast written by hand, and bf16 vs fp32 on the digits MLP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import Accuracy, DataLoaders, Learner, MixedPrecision
from pluglearn.data.digits import load_digits

CUDA = torch.cuda.is_available()


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 50), nn.ReLU(), nn.Linear(50, 10))


def digit_batches(n: int = 640, bs: int = 64):
    (x, y), _ = load_digits()
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, n, bs)]


def test_bf16_weights_are_bit_identical_to_autocast_written_by_hand():
    train = digit_batches()
    net, ref = mlp(), mlp()
    Learner(net, DataLoaders(train), lr=0.3, plugins=[MixedPrecision()]).fit(2)
    opt = torch.optim.SGD(ref.parameters(), lr=0.3)
    for _ in range(2):
        for xb, yb in train:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(ref(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)
        assert p.dtype == torch.float32  # the weights keep their dtype
    fp32 = mlp()
    Learner(fp32, DataLoaders(train), lr=0.3).fit(2)
    assert not torch.equal(fp32[0].weight, net[0].weight)  # autocast did change the compute


def accuracy_after(plugins) -> float:
    (x, y), (xv, yv) = load_digits()
    dls = DataLoaders.from_datasets((x, y), (xv, yv), batch_size=32, seed=1)
    learn = Learner(mlp(), dls, lr=0.2, plugins=[Accuracy(), *plugins], defaults=False)
    learn.fit(6)
    return learn.metrics["accuracy"]


@pytest.mark.slow
def test_bf16_trains_the_digits_mlp_to_the_fp32_accuracy_band():
    fp32, bf16 = accuracy_after([]), accuracy_after([MixedPrecision()])
    assert fp32 > 0.9 and bf16 > 0.9
    assert abs(fp32 - bf16) <= 0.03, (fp32, bf16)


def test_validation_runs_under_autocast_too():
    seen = []

    class Probe:
        from pluglearn import hookimpl

        @hookimpl
        def after_pred(self, learn):
            seen.append((learn.training, learn.preds.dtype))

    train = digit_batches(128)
    learn = Learner(mlp(), DataLoaders(train, train[:1]), plugins=[MixedPrecision(), Probe()])
    learn.fit(1)
    assert seen == [(True, torch.bfloat16)] * 2 + [(False, torch.bfloat16)]


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"torch\.bfloat16"):
        MixedPrecision(torch.float32)
    with pytest.raises(ValueError, match=r"go with dtype=torch\.float16"):
        MixedPrecision(torch.bfloat16, init_scale=2.0**10)


DEVICES = ["cpu", *(["cuda"] if CUDA else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_with_a_grad_scaler_matches_the_hand_written_amp_loop(device):
    from pluglearn import GradientClipping

    train = [(x.to(device), y.to(device)) for x, y in digit_batches()]
    net, ref = mlp().to(device), mlp().to(device)
    plugins = [GradientClipping(0.5), MixedPrecision(torch.float16, init_scale=2.0**20)]
    learn = Learner(net, DataLoaders(train), lr=0.3, plugins=plugins)
    learn.fit(2)
    opt = torch.optim.SGD(ref.parameters(), lr=0.3)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**20)
    skipped = 0
    for _ in range(2):
        for xb, yb in train:
            with torch.autocast(device, dtype=torch.float16):
                loss = F.cross_entropy(ref(xb), yb)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            skipped += scaler.get_scale() < before
            opt.zero_grad()
    assert skipped >= 1  # the huge initial scale overflows: steps were skipped
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)
    state = learn.plugin("MixedPrecision").scaler.state_dict()
    assert state["scale"] == scaler.get_scale()
