"""learn.export / load_learner: predictions equal in a fresh process, refusals at export time,
the pickle opt-in, and the Learner that load_learner gives."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pluglearn import (
    DataLoaders,
    ExportError,
    HFModel,
    Learner,
    MixedPrecision,
    hookimpl,
    load_learner,
)
from tests import processes
from tests.support.export_models import MLP, Configured, Hidden, TinyHF, smooth_loss

ROOT = Path(__file__).resolve().parents[2]
G = torch.Generator().manual_seed(0)
X = torch.randn(40, 5, generator=G)
Y = (X[:, 0] > 0).long()
IDS = torch.randint(2, 20, (40, 6), generator=G)
LABELS = (IDS[:, 0] % 2 == 0).long()


def dls() -> DataLoaders:
    return DataLoaders.from_datasets((X[:32], Y[:32]), (X[32:], Y[32:]), batch_size=8, seed=0)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, i: int) -> dict:
        ids = IDS[self.lo + i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": LABELS[i]}


def tokens(rows: slice) -> dict:
    return {"input_ids": IDS[rows], "attention_mask": torch.ones_like(IDS[rows])}


def trained(name: str) -> tuple[Learner, dict]:
    """A Learner fitted one epoch, and what to pass to its export."""
    torch.manual_seed(0)
    if name == "sequential":
        model = nn.Sequential(
            nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2)
        )
        learn, kwargs = Learner(model, dls(), defaults=False), {}
    elif name == "mixed_precision":
        plugins = [MixedPrecision()]
        learn = Learner(MLP(5, 16, 2, p=0.3), dls(), smooth_loss, plugins=plugins, defaults=False)
        kwargs = {}
    elif name == "hf":
        hf = DataLoaders.from_datasets(Tokens(0, 32), Tokens(32, 40), batch_size=8, seed=0)
        learn = Learner(TinyHF(), hf, plugins=[HFModel(), MixedPrecision()], defaults=False)
        kwargs = {}
    else:  # "model_args"
        learn = Learner(Hidden(5, 6, scale=2.0), dls(), defaults=False)
        kwargs = {"model_args": {"n_in": 5, "width": 6, "scale": 2.0}}
    learn.fit(1)
    return learn, kwargs


CASES = ("sequential", "mixed_precision", "hf", "model_args")

FRESH_PROCESS = """
import pickle, sys, torch
from safetensors.torch import load_file, save_file

def unpickled(*args, **kwargs):
    raise AssertionError("a normal export must not unpickle anything")

class NoUnpickler:
    def __init__(self, *args, **kwargs):
        unpickled()

pickle.load = pickle.loads = torch.load = unpickled
pickle.Unpickler = NoUnpickler

from pluglearn import load_learner

folder = sys.argv[1]
inputs, out = load_file(folder + "/inputs.safetensors"), {}
for name in sys.argv[2:]:
    learn = load_learner(f"{folder}/{name}.export")
    if name == "hf":
        one = {"input_ids": inputs["ids_one"], "attention_mask": inputs["mask_one"]}
        batch = {"input_ids": inputs["ids_batch"], "attention_mask": inputs["mask_batch"]}
    else:
        one, batch = inputs["x_one"], inputs["x_batch"]
    out[name + ".one"], out[name + ".batch"] = learn.predict(one), learn.predict(batch)
    if name == "sequential":
        dl = [(inputs["x_batch"], inputs["y_batch"])]
        out[name + ".get_preds"] = learn.get_preds(dl=dl)[0]
        out[name + ".valid_loss"] = torch.tensor(learn.validate(dl=dl)["valid_loss"])
save_file(out, folder + "/outputs.safetensors")
"""


@pytest.mark.parametrize("name", CASES)
def test_predict_after_load_learner_equals_predict_before_export(tmp_path, name):
    learn, kwargs = trained(name)
    back = load_learner(learn.export(tmp_path / "m.export", **kwargs))
    assert back.model is not learn.model
    for x in (tokens(33), tokens(slice(32, 37))) if name == "hf" else (X[33], X[32:]):
        expected = learn.predict(x)
        got = back.predict(x)
        assert got.dtype == expected.dtype and torch.equal(got, expected)


@pytest.mark.slow  # a new interpreter imports torch: seconds on a busy machine
def test_predict_after_load_learner_in_a_fresh_process_equals_predict_before_export(tmp_path):
    inputs = {
        "x_one": X[33],
        "x_batch": X[32:],
        "y_batch": Y[32:],
        "ids_one": IDS[33],
        "mask_one": torch.ones_like(IDS[33]),
        "ids_batch": IDS[32:37],
        "mask_batch": torch.ones_like(IDS[32:37]),
    }
    save_file({k: v.clone() for k, v in inputs.items()}, tmp_path / "inputs.safetensors")
    expected = {}
    for name in CASES:
        learn, kwargs = trained(name)
        learn.export(tmp_path / f"{name}.export", **kwargs)
        one, batch = (tokens(33), tokens(slice(32, 37))) if name == "hf" else (X[33], X[32:])
        expected[name + ".one"], expected[name + ".batch"] = (
            learn.predict(one),
            learn.predict(batch),
        )
    plain = Learner(trained("sequential")[0].model, dls())  # default plugins, as load_learner's
    dl = [(X[32:], Y[32:])]
    expected["sequential.get_preds"] = plain.get_preds(dl=dl)[0]
    expected["sequential.valid_loss"] = torch.tensor(plain.validate(dl=dl)["valid_loss"])
    run = processes.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path), *CASES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = load_file(tmp_path / "outputs.safetensors")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    assert expected["mixed_precision.one"].dtype == torch.bfloat16  # autocast was recorded
    assert expected["hf.one"].shape == (2,) and expected["hf.batch"].shape == (5, 2)


# ------------------------------------------------------------------- the Learner load_learner gives


def test_the_loaded_learner_predicts_in_eval_mode_and_refuses_to_fit_without_data(tmp_path):
    learn, _ = trained("sequential")
    back = load_learner(learn.export(tmp_path / "m.export"))
    assert not back.model.training and back.dls.item_shape == (5,)
    assert [type(p).__name__ for p in back.plugins][:2] == ["AvgLoss", "ProgressBar"]
    with pytest.raises(ValueError, match=r"no training data.*learn.dls = DataLoaders"):
        back.fit(1)
    with pytest.raises(ValueError, match="no validation data"):
        back.validate()


def test_a_learner_without_datasets_exports_no_item_shape_and_predict_asks_for_batched(tmp_path):
    ready = DataLoaders([(X[:8], Y[:8])])
    torch.manual_seed(0)
    learn = Learner(nn.Linear(5, 2), ready, defaults=False)
    back = load_learner(learn.export(tmp_path / "m.export"))
    with pytest.raises(ValueError, match="Pass batched=True"):
        back.predict(X[0])
    assert torch.equal(back.predict(X[:3], batched=True), learn.predict(X[:3], batched=True))


def test_a_plugin_given_to_load_learner_replaces_the_recorded_one_of_its_class(tmp_path):
    learn, _ = trained("mixed_precision")
    path = learn.export(tmp_path / "m.export")
    assert [type(p).__name__ for p in load_learner(path).plugins].count("MixedPrecision") == 1
    mine = MixedPrecision()
    back = load_learner(path, plugins=[mine])
    assert [p for p in back.plugins if isinstance(p, MixedPrecision)] == [mine]


def test_a_loss_that_cannot_be_recorded_warns_and_is_given_back_at_load(tmp_path):
    learn, _ = trained("sequential")
    learn.loss_func = lambda preds, targets: nn.functional.cross_entropy(preds, targets)
    with pytest.warns(UserWarning, match=r"loss function is not recorded.*lambda"):
        path = learn.export(tmp_path / "m.export")
    back = load_learner(path)
    assert torch.equal(back.predict(X[33]), learn.predict(X[33]))  # predict needs no loss
    with pytest.raises(ExportError, match=r"without its loss function.*loss_func=\.\.\."):
        back.validate(dl=[(X[32:], Y[32:])])
    given = load_learner(path, loss_func=nn.functional.cross_entropy)
    assert given.validate(dl=[(X[32:], Y[32:])])["valid_loss"] > 0


def test_export_leaves_the_model_and_the_random_state_unchanged(tmp_path):
    learn, _ = trained("sequential")
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    rng = torch.get_rng_state()
    learn.export(tmp_path / "m.export")
    assert torch.equal(rng, torch.get_rng_state())  # the rebuild's initialisation put back
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in before.items())


def test_a_compiled_model_exports_its_plain_model(tmp_path):
    learn, _ = trained("sequential")
    plain = learn.model
    learn.model = torch.compile(plain, backend="eager")
    back = load_learner(learn.export(tmp_path / "m.export"))
    assert type(back.model) is nn.Sequential
    assert torch.equal(back.predict(X[32:]), Learner(plain, dls()).predict(X[32:]))


def test_a_float64_model_comes_back_in_float64(tmp_path):
    torch.manual_seed(0)
    learn = Learner(MLP(5, 4, 2).double(), DataLoaders.from_datasets((X.double(), Y)))
    back = load_learner(learn.export(tmp_path / "m.export"))
    assert back.model.head.weight.dtype == torch.float64
    assert torch.equal(back.predict(X[:4].double()), learn.predict(X[:4].double()))


def test_get_config_and_recorded_user_loss_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Configured((5, 7, 2), activation=nn.GELU)
    learn = Learner(model, dls(), loss_func=smooth_loss, defaults=False)
    back = load_learner(learn.export(tmp_path / "m.export"))
    assert isinstance(back.model.net[1], nn.GELU) and back.loss_func is smooth_loss
    assert torch.equal(back.predict(X[:4]), learn.predict(X[:4]))


# ------------------------------------------------------------------------- refused at export


def refused(learn: Learner, tmp_path: Path, **kwargs) -> str:
    path = tmp_path / "refused.export"
    with pytest.raises(ExportError) as info:
        learn.export(path, **kwargs)
    assert not path.exists()  # nothing written
    return str(info.value)


def test_a_class_whose_arguments_are_stored_nowhere_is_refused_naming_model_args(tmp_path):
    learn = Learner(Hidden(5, 6), dls())
    text = refused(learn, tmp_path)
    assert "model (Hidden)" in text and "n_in, width are stored under no attribute" in text
    assert "learn.export(path, model_args={...})" in text
    text = refused(learn, tmp_path, model_args={"n_in": 5, "widht": 6})
    assert "model_args names ['widht']" in text


def test_arguments_that_rebuild_another_model_are_refused_naming_the_difference(tmp_path):
    learn = Learner(Hidden(5, 6, scale=3.0), dls())
    text = refused(learn, tmp_path, model_args={"n_in": 5, "width": 6})
    assert "an argument is a torch.Tensor (model(scale))" in text  # the buffer, not a float
    text = refused(learn, tmp_path, model_args={"n_in": 5, "width": 6, "scale": 1.0})
    assert "buffer model.scale (not saved with the weights) differs" in text
    text = refused(learn, tmp_path, model_args={"n_in": 5, "width": 7, "scale": 3.0})
    assert "layers.0.weight is (7, 5) float32 rebuilt, (6, 5) float32 in the model" in text
    mlp = MLP(5, 4, 2)
    mlp.p = 0.9  # a setting changed after construction: the rebuild would not have it
    mlp.body[2].p = 0.2
    text = refused(Learner(mlp, dls()), tmp_path)
    assert "model.body.2.p is 0.9 rebuilt, 0.2 in the model" in text


def test_a_class_defined_in_main_or_in_a_function_is_refused_with_the_fix(tmp_path):
    main_class = type("Net", (nn.Linear,), {"__module__": "__main__"})
    text = refused(Learner(main_class(5, 2), dls()), tmp_path)
    assert "defined in __main__" in text and "move it into a module" in text

    class Local(nn.Linear):
        pass

    text = refused(Learner(Local(5, 2), dls()), tmp_path)
    assert "defined inside a function" in text and "move it into a module" in text


def test_an_argument_json_cannot_hold_is_refused_naming_it(tmp_path):
    model = Configured((5, 2))
    model.config["activation"] = lambda: nn.ReLU()
    assert "is a lambda" in refused(Learner(model, dls()), tmp_path)
    model.config["activation"] = torch.zeros(2)
    text = refused(Learner(model, dls()), tmp_path)
    assert "model(activation)" in text and "torch.Tensor" in text


def test_mixed_dtypes_are_refused_with_the_fix(tmp_path):
    model = MLP(5, 4, 2)
    model.head.double()
    assert "mix the dtypes float32, float64" in refused(Learner(model, dls()), tmp_path)


class Unrecordable:
    """A predict plugin that keeps none of its arguments."""

    def __init__(self, factor: float) -> None:
        self._factor = factor

    @hookimpl
    def predict(self, learn):
        return learn.model(learn.xb) * self._factor


def test_a_predict_plugin_that_cannot_be_rebuilt_is_refused(tmp_path):
    learn = Learner(nn.Linear(5, 2), dls(), plugins=[Unrecordable(2.0)])
    text = refused(learn, tmp_path)
    assert "plugin Unrecordable" in text and "factor" in text and "get_config()" in text


# ---------------------------------------------------------------------------- pickle, opt-in


def test_a_pickled_export_is_read_only_with_unsafe(tmp_path):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    learn = Learner(layer, DataLoaders.from_datasets((torch.randn(8, 3, 8), torch.randn(8, 3, 8))))
    assert "d_model, nhead are stored under no attribute" in refused(learn, tmp_path)
    path = learn.export(tmp_path / "m.export", pickle=True)
    with pytest.raises(ExportError, match=r"pickled model.*load_learner\(path, unsafe=True\)"):
        load_learner(path)
    back = load_learner(path, unsafe=True)
    x = torch.randn(2, 3, 8)
    assert torch.equal(back.predict(x), learn.predict(x))
    with pytest.raises(ValueError, match="model_args= goes with a JSON export"):
        learn.export(tmp_path / "n.export", pickle=True, model_args={})


def test_nothing_is_written_when_pickling_fails(tmp_path):
    learn = Learner(nn.Linear(5, 2), dls(), loss_func=lambda p, t: p.sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = refused(learn, tmp_path, pickle=True)
    assert "cannot pickle" in text


def test_a_loss_module_is_recorded_by_its_arguments_and_one_with_tensors_is_not(tmp_path):
    torch.manual_seed(0)
    smoothed = nn.CrossEntropyLoss(label_smoothing=0.2)
    learn = Learner(nn.Linear(5, 2), dls(), loss_func=smoothed)
    back = load_learner(learn.export(tmp_path / "m.export"))
    assert isinstance(back.loss_func, nn.CrossEntropyLoss) and back.loss_func.label_smoothing == 0.2
    learn.loss_func = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]))
    with pytest.warns(
        UserWarning,
        match=r"not recorded \(cannot export loss_func.*is a torch.Tensor \(loss_func\(weight\)\)",
    ):
        learn.export(tmp_path / "w.export")
