"""TensorBoardLogger: the event files, read back with tensorboard's own reader, hold the run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("tensorboard", reason="TensorBoardLogger needs pip install tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from pluglearn import Accuracy, AvgLoss, DataLoaders, Learner, Recorder, hookimpl
from pluglearn.plugins.tensorboard import TensorBoardLogger


class Keep:
    def __init__(self) -> None:
        self.epochs: list[dict] = []

    @hookimpl
    def report(self, metrics):
        self.epochs.append(dict(metrics))


class Decay:
    """Halves the lr after every optimizer step, so each batch trains with its own lr."""

    @hookimpl
    def after_step(self, learn):
        for group in learn.opt.param_groups:
            group["lr"] /= 2


# Not the shared make_learner: 3-feature data in ragged batches of 6.
def make_learner(plugins) -> Learner:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, generator=g), torch.randint(0, 3, (20,), generator=g)
    train = [(x[i : i + 6], y[i : i + 6]) for i in range(0, 20, 6)]  # 4 batches
    torch.manual_seed(0)
    return Learner(
        nn.Linear(3, 3), DataLoaders(train, [(x, y)]), lr=0.4, plugins=plugins, defaults=False
    )


def read(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


def test_per_batch_loss_and_lr_and_per_epoch_metrics_read_back(tmp_path):
    rec, keep = Recorder(), Keep()
    learn = make_learner([AvgLoss(), Accuracy(), Decay(), rec, keep, TensorBoardLogger(tmp_path)])
    learn.fit(2)
    acc = read(tmp_path)
    loss, lr = acc.Scalars("train/loss"), acc.Scalars("train/lr")
    assert [e.step for e in loss] == list(range(8)) == [e.step for e in lr]  # 0-based batches
    assert [e.value for e in loss] == pytest.approx(rec.losses, rel=1e-6)
    assert [e.value for e in lr] == pytest.approx(rec.lrs, rel=1e-6)  # the lr each batch used
    assert lr[0].value == pytest.approx(0.4) and lr[1].value == pytest.approx(0.2)
    for key in ("train_loss", "valid_loss", "accuracy"):
        events = acc.Scalars(f"epoch/{key}")
        assert [e.step for e in events] == [0, 1]  # the data's epochs, from 0
        assert [e.value for e in events] == pytest.approx([m[key] for m in keep.epochs])


def test_hyperparameters_and_final_metrics_are_in_the_hparams_plugin(tmp_path):
    keep = Keep()
    learn = make_learner(
        [AvgLoss(), Accuracy(), keep, TensorBoardLogger(tmp_path, hparams={"hidden": 7})]
    )
    learn.fit(1)
    content = read(tmp_path).PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = start.session_start_info.hparams
    assert values["lr"].number_value == pytest.approx(0.4)
    assert values["opt"].string_value == "SGD"
    assert values["n_epochs"].number_value == 1 and values["hidden"].number_value == 7
    assert values["model"].string_value == "Linear"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert tags == {"epoch/train_loss", "epoch/valid_loss", "epoch/accuracy"}


def test_every_n_logs_one_batch_in_n(tmp_path):
    learn = make_learner([TensorBoardLogger(tmp_path, every=3)])
    learn.fit(2)
    assert [e.step for e in read(tmp_path).Scalars("train/loss")] == [0, 3, 6]


def test_bad_arguments_name_the_fix(tmp_path):
    with pytest.raises(TypeError, match="pass str\\(value\\)"):
        TensorBoardLogger(tmp_path, hparams={"layers": [50, 10]})
    with pytest.raises(ValueError, match="every must be a positive int"):
        TensorBoardLogger(tmp_path, every=0)
