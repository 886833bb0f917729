"""Device and to_device: nested batches and the model move; a clear error without CUDA; a GPU fit;
the default Device of every Learner (the best available device, nothing per batch on the CPU).

On a CPU-only machine the ``meta`` device stands in for an accelerator: moving to it really
changes every tensor's device, so the tests can tell a moved batch from one left in place.
"""

from __future__ import annotations

import copy
import io
from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import Accuracy, DataLoaders, Device, Learner, ProgressBar, hookimpl
from pluglearn.data.batch_ops import to_device
from pluglearn.data.loaders import TensorBatchLoader
from pluglearn.plugins.device import available_devices, move_batch, pick_device

META = torch.device("meta")
Pair = namedtuple("Pair", ["left", "right"])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


def tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from tensors_in(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from tensors_in(o)


# ----------------------------------------------------------------------------------- to_device


def test_to_device_moves_tensors_nested_in_tuples_lists_dicts_and_namedtuples():
    a, b, c, d = torch.ones(2), torch.zeros(3, dtype=torch.long), torch.arange(4.0), torch.eye(2)
    batch = {"x": (a, [b, 7, "label"]), "pair": Pair(c, {"deep": d}), "none": None}
    moved = to_device(batch, META)

    assert all(t.device == META for t in tensors_in(moved))
    assert len(list(tensors_in(moved))) == 4
    assert type(moved["x"]) is tuple and type(moved["x"][1]) is list
    assert type(moved["pair"]) is Pair and moved["pair"]._fields == ("left", "right")
    assert moved["x"][1][1:] == [7, "label"] and moved["none"] is None
    for before, after in zip(tensors_in(batch), tensors_in(moved), strict=True):
        assert (before.shape, before.dtype) == (after.shape, after.dtype)
        assert before.device.type == "cpu"  # the input is left as it was


def test_to_device_keeps_values():
    x = torch.randn(3, 2)
    moved = to_device([(x, {"y": x * 2})], torch.device("cpu"))
    assert torch.equal(moved[0][0], x) and torch.equal(moved[0][1]["y"], x * 2)


# -------------------------------------------------------------------------------------- Device


class DictModel(nn.Module):
    """A model whose input is a dict, to check that nested batches reach it moved."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 2)

    def forward(self, inputs):
        return self.lin(inputs["x"])


class Probe:
    """Records where the batch and the predictions are."""

    def __init__(self) -> None:
        self.batch_devices: list[torch.device] = []
        self.pred_devices: list[torch.device] = []

    @hookimpl
    def before_batch(self, learn):
        self.batch_devices += [t.device for t in tensors_in(learn.batch)]

    @hookimpl
    def after_pred(self, learn):
        self.pred_devices.append(learn.preds.device)


def dict_batches(n: int = 8, bs: int = 4):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)
    return [({"x": x[i : i + bs]}, y[i : i + bs]) for i in range(0, n, bs)]


def test_device_moves_the_model_and_every_batch_before_other_plugins_see_it():
    probe = Probe()  # listed first: Device's before_batch is tryfirst, so the probe sees moved data
    learn = Learner(
        DictModel(),
        DataLoaders(dict_batches(), dict_batches()),
        plugins=[probe, Device("meta")],
        defaults=False,
    )
    learn.fit(1)
    assert all(p.device == META for p in learn.model.parameters())
    assert probe.batch_devices and all(d == META for d in probe.batch_devices)
    assert probe.pred_devices == [META] * 4  # 2 training and 2 validation batches


def test_device_moves_the_model_for_a_standalone_validation():
    probe = Probe()
    learn = Learner(
        DictModel(),
        DataLoaders(dict_batches(), dict_batches()),
        plugins=[probe, Device("meta")],
        defaults=False,
    )
    learn.validate()
    assert all(p.device == META for p in learn.model.parameters())
    assert probe.pred_devices == [META] * 2


def test_device_cpu_fit_matches_a_plain_fit():
    probe = Probe()
    model = DictModel()
    ref = copy.deepcopy(model)
    silent = ProgressBar(file=io.StringIO())
    learn = Learner(
        model,
        DataLoaders(dict_batches(), dict_batches()),
        plugins=[probe, Device("cpu"), Accuracy(), silent],
    )
    learn.fit(2)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(d.type == "cpu" for d in probe.batch_devices + probe.pred_devices)

    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        for xb, yb in dict_batches():
            F.cross_entropy(ref(xb), yb).backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_device_cuda_without_cuda_is_a_clear_error(name):
    with pytest.raises(ValueError, match="CUDA is not available on this machine") as info:
        Device(name)
    assert "Device('cpu')" in str(info.value)


@no_cuda
def test_default_device_is_the_cpu_without_an_accelerator():
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("MPS is available here")
    assert Device().device == torch.device("cpu")


# ------------------------------------------------------------- choosing the device


@pytest.mark.parametrize(
    ("available", "best"),
    [
        (["cuda:0", "cuda:1", "mps", "cpu"], "cuda"),
        (["cuda:0", "cpu"], "cuda"),
        (["mps", "cpu"], "mps"),
        (["xpu:0", "cpu"], "cpu"),  # only cuda, then mps, are picked without being asked
        (["cpu"], "cpu"),
    ],
)
def test_no_request_picks_cuda_then_mps_then_the_cpu(available, best):
    assert pick_device(None, available) == torch.device(best)


@pytest.mark.parametrize("name", ["cpu", "meta", "cuda", "cuda:1", "mps"])
def test_a_present_device_is_given_as_asked(name):
    assert pick_device(name, ["cuda:0", "cuda:1", "mps", "cpu"]) == torch.device(name)


@pytest.mark.parametrize(
    ("name", "available", "says"),
    [
        ("cuda", ["cpu"], "CUDA is not available on this machine, which has cpu"),
        ("cuda:0", ["mps", "cpu"], "CUDA is not available on this machine, which has mps, cpu"),
        ("cuda:2", ["cuda:0", "cuda:1", "cpu"], "no such device, only cuda:0, cuda:1, cpu"),
        ("mps", ["cuda:0", "cpu"], "'mps' is not available on this machine, which has cuda:0"),
    ],
)
def test_a_missing_device_is_an_error_naming_those_the_machine_has(name, available, says):
    with pytest.raises(ValueError, match=says) as plugin:
        pick_device(name, available)
    assert str(plugin.value).startswith(f"Device({name!r}): ")
    with pytest.raises(ValueError, match=says) as argument:
        pick_device(name, available, "device")  # the Learner's argument: named as the user wrote it
    assert str(argument.value).startswith(f"Learner(device={name!r}): ")
    present = name.split(":")[0] in {a.split(":")[0] for a in available}  # only the index is not
    fix = "device='cuda' for the current one" if present else "device=None to pick the best"
    assert fix in str(argument.value)


def test_a_name_that_is_no_device_is_refused():
    with pytest.raises(ValueError, match=r"Device\('gpu'\) is not a device name.*give one of cpu"):
        pick_device("gpu", ["cpu"])


def test_this_machine_lists_the_cpu_last_and_its_cuda_devices_when_it_has_them():
    found = available_devices()
    assert found[-1] == "cpu"
    assert [d for d in found if d.startswith("cuda")] == [
        f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    ]


# -------------------------------------------------------------- the Learner's default


def from_datasets(n: int = 8):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)
    return DataLoaders.from_datasets((x, y), (x, y), batch_size=4, seed=0)


def devices_of(learn: Learner) -> list[Device]:
    return [p for p in learn.plugins if isinstance(p, Device)]


def test_every_learner_has_a_default_device_after_the_other_defaults():
    learn = Learner(nn.Linear(3, 2), from_datasets())
    assert learn.device == pick_device(None, available_devices())
    assert [type(p).__name__ for p in learn.plugins][-1] == "Device"
    bare = Learner(nn.Linear(3, 2), from_datasets(), defaults=False)
    assert devices_of(bare) and bare.device == learn.device  # a provider: kept without defaults


def test_on_the_cpu_the_default_walks_no_batch_and_implements_no_batch_hook():
    learn = Learner(nn.Linear(3, 2), from_datasets(), device="cpu", defaults=False)
    assert learn.device == torch.device("cpu")
    assert not learn.hooks.implemented("before_batch")  # nothing is called per batch for it
    assert "Device" in {i.plugin for i in learn.hooks.impls["before_fit"]}  # moves the model
    accelerator = Device("meta")
    assert type(accelerator).__name__ == "Device" and isinstance(accelerator, Device)
    assert hasattr(accelerator, "before_batch") and not hasattr(Device("cpu"), "before_batch")


def test_the_default_cpu_fit_equals_a_hand_written_loop():
    model = nn.Linear(3, 2)
    ref = copy.deepcopy(model)
    learn = Learner(model, from_datasets(), lr=0.1, defaults=False)
    learn.fit(2)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)
    order = torch.Generator().manual_seed(0)
    for _ in range(2):
        perm = torch.randperm(8, generator=order)
        for i in range(0, 8, 4):
            F.cross_entropy(ref(x[perm[i : i + 4]]), y[perm[i : i + 4]]).backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_device_plugin_replaces_the_default_and_learn_device_says_so():
    learn = Learner(DictModel(), DataLoaders(dict_batches()), plugins=[Device("meta")])
    assert [p.device for p in devices_of(learn)] == [META] and learn.device == META
    same = Learner(nn.Linear(3, 2), from_datasets(), device="meta", plugins=[Device("meta")])
    assert len(devices_of(same)) == 1


def test_device_and_a_device_plugin_naming_two_devices_are_refused():
    with pytest.raises(
        ValueError, match=r"Learner\(device='cpu'\) and the plugin Device\('meta'\)"
    ):
        Learner(nn.Linear(3, 2), from_datasets(), device="cpu", plugins=[Device("meta")])


@no_cuda
def test_a_missing_device_is_refused_when_the_learner_is_made():
    with pytest.raises(ValueError, match=r"Learner\(device='cuda'\): CUDA is not available"):
        Learner(nn.Linear(3, 2), from_datasets(), device="cuda")


class FailAt:
    """Raises in the first training batch."""

    @hookimpl
    def after_loss(self, learn):
        raise RuntimeError("boom")


@pytest.mark.parametrize("fails", [False, True])
def test_a_fits_own_device_sets_the_default_aside_for_that_fit_only(fails):
    probe = Probe()
    learn = Learner(DictModel(), DataLoaders(dict_batches(), dict_batches()), defaults=False)
    default = devices_of(learn)[0]
    plugins = [probe, Device("meta"), *([FailAt()] if fails else [])]
    if fails:
        with pytest.raises(RuntimeError, match="boom"):
            learn.fit(1, plugins=plugins)
    else:
        learn.fit(1, plugins=plugins)
    assert probe.batch_devices and all(d == META for d in probe.batch_devices)
    assert all(p.device == META for p in learn.model.parameters())  # nothing moved it back
    assert devices_of(learn) == [default] and learn.device == default.device
    assert learn.plugins[-1] is default  # back in its place, after the other defaults


def test_a_second_device_plugin_is_refused_naming_the_one_to_remove():
    learn = Learner(nn.Linear(3, 2), from_datasets(), plugins=[Device("meta")])
    with pytest.raises(
        ValueError, match=r"remove the other first \(learn.remove_plugin\('Device'\)"
    ):
        learn.add_plugin(Device("cpu"))


def test_two_device_plugins_at_once_are_refused_and_a_refused_one_leaves_the_default():
    with pytest.raises(ValueError, match=r"\[Device\('meta'\), Device\('cpu'\)\]: a Learner"):
        Learner(nn.Linear(3, 2), from_datasets(), plugins=[Device("meta"), Device("cpu")])
    learn = Learner(nn.Linear(3, 2), from_datasets())
    default = devices_of(learn)[0]

    class NotAHook(Device):
        @hookimpl
        def before_batchh(self, learn):  # a typo: refused at registration
            pass

    with pytest.raises(Exception, match="before_batchh"):
        learn.add_plugin(NotAHook("cpu"))
    assert devices_of(learn) == [default] and learn.plugins[-1] is default


def test_a_scratch_model_without_to_trains_where_its_tensors_are_or_is_refused():
    from pluglearn import ManualBackward
    from pluglearn.scratch import CrossEntropy, Linear, Sequential

    net = Sequential(Linear(3, 2, generator=torch.Generator().manual_seed(0)))
    kwargs = {"loss_func": CrossEntropy(), "plugins": [ManualBackward()], "defaults": False}
    learn = Learner(net, from_datasets(), **kwargs)
    assert learn.device == torch.device("cpu")  # where its tensors are, whatever the machine has
    learn.fit(1)
    elsewhere = Learner(net, from_datasets(), device="meta", **kwargs)
    with pytest.raises(TypeError, match=r"Device\('meta'\) cannot move a Sequential, which has no"):
        elsewhere.fit(1)


def test_learn_device_cannot_be_assigned_and_the_error_says_how_to_choose_it():
    learn = Learner(nn.Linear(3, 2), from_datasets())
    with pytest.raises(AttributeError, match=r"Learner\(\.\.\., device='meta'\)"):
        learn.device = "meta"


def test_without_a_device_plugin_learn_device_is_where_the_model_is():
    learn = Learner(nn.Linear(3, 2).to("meta"), from_datasets())
    learn.remove_plugin("Device")
    assert learn.device == META


class WhereInAfterCreateOpt:
    """The model's device when a plain after_create_opt runs (a resume loads after it)."""

    def __init__(self) -> None:
        self.device: torch.device | None = None

    @hookimpl
    def after_create_opt(self, learn):
        self.device = next(learn.model.parameters()).device
        raise RuntimeError("seen")  # stop before any batch: meta tensors cannot be summed


def test_the_model_moves_before_a_resume_loads_the_optimizer_state():
    where = WhereInAfterCreateOpt()
    learn = Learner(DictModel(), DataLoaders(dict_batches()), plugins=[where, Device("meta")])
    with pytest.raises(RuntimeError, match="seen"):
        learn.fit(1)
    assert where.device == META


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_device_plugin_survives_copy_and_pickle_with_its_hooks(device):
    import pickle

    plugin = Device(device)
    for copied in (copy.deepcopy(plugin), pickle.loads(pickle.dumps(plugin))):
        assert type(copied) is type(plugin) and copied.device == plugin.device
        assert hasattr(copied, "before_batch") == (device != "cpu")


def test_move_batch_moves_every_tensor_of_a_nested_batch():
    batch = {"x": (torch.ones(2), [torch.zeros(1), "id"])}
    moved = move_batch(batch, META)
    assert all(t.device == META for t in tensors_in(moved)) and moved["x"][1][1] == "id"


@needs_cuda
def test_the_default_learner_trains_on_cuda_from_pinned_batches():
    probe = Probe()
    pinned: list[bool] = []

    class Pinned:
        @hookimpl(tryfirst=True)
        def before_batch(self, learn):  # listed first: sees the loader's batch before Device
            pinned.extend(t.is_pinned() for t in learn.batch)

    learn = Learner(nn.Linear(3, 2), from_datasets(), plugins=[Pinned(), probe], defaults=False)
    assert learn.device.type == "cuda"
    learn.fit(1)
    assert pinned and all(pinned)  # gathered into pinned memory by the in-memory loader
    assert all(d.type == "cuda" for d in probe.batch_devices + probe.pred_devices)
    assert all(p.device.type == "cuda" for p in learn.model.parameters())


@needs_cuda
def test_the_pinned_loader_yields_the_batches_of_the_plain_one():
    x, y = torch.randn(10, 3), torch.arange(10)
    for shuffle in (False, True):
        plain = TensorBatchLoader((x, y), 4, shuffle, generator=torch.Generator().manual_seed(0))
        pinned = TensorBatchLoader(
            (x, y), 4, shuffle, generator=torch.Generator().manual_seed(0), pin_memory=True
        )
        for (a, b), (c, d) in zip(plain, pinned, strict=True):
            assert torch.equal(a, c) and torch.equal(b, d) and c.is_pinned() and d.is_pinned()


@needs_cuda
def test_fit_on_cuda_puts_parameters_and_predictions_on_the_gpu():
    probe = Probe()
    model = DictModel()
    ref = copy.deepcopy(model)
    learn = Learner(
        model,
        DataLoaders(dict_batches(), dict_batches()),
        plugins=[probe, Device("cuda"), Accuracy(), ProgressBar(file=io.StringIO())],
    )
    learn.fit(2)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert probe.pred_devices and all(d.type == "cuda" for d in probe.pred_devices)
    assert all(d.type == "cuda" for d in probe.batch_devices)
    preds, targets = learn.get_preds()
    assert preds.device.type == "cuda" and targets.device.type == "cuda"
    assert isinstance(learn.metrics["accuracy"], float)

    opt = torch.optim.SGD(ref.parameters(), lr=0.1)  # the same steps on the CPU
    for _ in range(2):
        for xb, yb in dict_batches():
            F.cross_entropy(ref(xb), yb).backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.cpu(), q, rtol=1e-4, atol=1e-5)
