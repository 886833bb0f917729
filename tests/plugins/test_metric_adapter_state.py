"""MetricAdapter's checkpoint state: an older checkpoint's one-count layout, a metric of one's own
with ``state_dict`` but nothing of torchmetrics, and the state of an adapter that has counted no
train batch. Real fits, crashed and resumed, against the uninterrupted run."""

from __future__ import annotations

import io
import warnings

import pytest

from pluglearn import (
    Checkpoint,
    DataLoaders,
    Learner,
    MetricAdapter,
    ProgressBar,
    Recorder,
    hookimpl,
)
from pluglearn.checkpoint.files import checkpoints_in, load_checkpoint, save_checkpoint
from tests.helpers import CrashAt
from tests.plugins.test_metric_adapter import CrashInValidation
from tests.plugins.test_metrics import (
    TORCHMETRICS,
    batches,
    hit_rate,
    make_data,
    make_learner,
    make_model,
    multiclass_f1,
)

pytestmark = TORCHMETRICS

CRASHES = [lambda: CrashAt(1, 2), CrashInValidation]
CRASH_IDS = ["mid-epoch", "in-validation"]


# Not the shared make_learner: loaders with a state, so that a resume replays nothing (and warns
# of nothing: the resumed fits below turn warnings into errors).
def learner(metric, plugins=()) -> Learner:
    """40 training items in batches of 8 (shuffled), 12 validating; ``metric`` reported as
    ``train_m`` and ``m``."""
    xt, yt = make_data(40, seed=5)
    xv, yv = make_data(12, seed=6)
    dls = DataLoaders.from_datasets((xt, yt), (xv, yv), batch_size=8, seed=3)
    adapter = MetricAdapter(metric, name="m", phases=("train", "valid"))
    quiet = ProgressBar(file=io.StringIO())
    return Learner(make_model(), dls, lr=0.5, plugins=[adapter, Recorder(), quiet, *plugins])


def epochs(learn: Learner) -> list[dict]:
    """Every epoch's reported metrics but the time."""
    return [{k: v for k, v in e.items() if k != "time"} for e in learn.plugin("Recorder").epochs]


def crashed_checkpoint(tmp_path, make_metric, crash) -> dict:
    """The newest checkpoint of a 2-epoch fit that ``crash`` kills in epoch 1."""
    crashing = learner(make_metric(), [Checkpoint(tmp_path / "run", every_n_batches=1)])
    with pytest.raises(RuntimeError, match="killed"):
        crashing.fit(2, plugins=[crash()])
    return load_checkpoint(checkpoints_in(tmp_path / "run")[-1])


def resumed_without_warnings(make_metric, path) -> Learner:
    resumed = learner(make_metric())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchmetrics' "compute before update" among them
        resumed.fit(2, resume_from=path)
    return resumed


@pytest.mark.parametrize("crash", CRASHES, ids=CRASH_IDS)
def test_a_checkpoint_in_the_older_one_count_layout_resumes_like_the_uninterrupted_fit(
    tmp_path, crash
):
    # before update_counts a checkpoint held the one metric's count as "updates": resumed, the
    # metric counts its updates (no torchmetrics warning) and reports what the fit without a
    # crash reports, also where nothing is left of the train pass (in-validation)
    done = learner(multiclass_f1())
    done.fit(2)
    state = crashed_checkpoint(tmp_path, multiclass_f1, crash)
    current = state["plugins"]["MetricAdapter[m]"]
    assert set(current) == {"train", "update_counts"} and list(current["update_counts"]) == [""]
    state["plugins"]["MetricAdapter[m]"] = {
        "train": current["train"],
        "updates": current["update_counts"][""],
    }
    older = save_checkpoint(state, tmp_path / "older.pt")
    resumed = resumed_without_warnings(multiclass_f1, older)
    assert epochs(resumed) == epochs(done)
    assert "train_m" in epochs(done)[-1]


class HitRate:
    """A metric of one's own: update, compute, reset, state_dict and load_state_dict, and nothing
    of torchmetrics (no ``persistent``, no ``named_modules``)."""

    def __init__(self) -> None:
        self.reset()

    def update(self, preds, targets) -> None:
        self.hits += int((preds.argmax(1) == targets).sum())
        self.n += len(targets)

    def compute(self) -> float:
        return self.hits / self.n

    def reset(self) -> None:
        self.hits, self.n = 0, 0

    def state_dict(self) -> dict:
        return {"hits": self.hits, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.hits, self.n = state["hits"], state["n"]


@pytest.mark.parametrize("crash", CRASHES, ids=CRASH_IDS)
def test_a_metric_of_one_s_own_with_a_state_dict_resumes_like_the_uninterrupted_fit(
    tmp_path, crash
):
    done = learner(HitRate())
    done.fit(2)
    state = crashed_checkpoint(tmp_path, HitRate, crash)
    saved = state["plugins"]["MetricAdapter[m]"]
    # its own state_dict, and no update counts: it holds no torchmetrics metric
    assert set(saved["train"]) == {"hits", "n"} and saved["update_counts"] == {}
    assert saved["train"]["n"] in (16, 40)  # batches 0 and 1 of epoch 1, or all five
    resumed = resumed_without_warnings(HitRate, checkpoints_in(tmp_path / "run")[-1])
    assert epochs(resumed) == epochs(done)
    assert 0 < epochs(done)[-1]["train_m"] < 1


def test_an_adapter_that_counted_no_train_batch_saves_no_train_state():
    xt, yt = make_data(10, seed=1)
    xv, yv = make_data(7, seed=2)
    fresh = MetricAdapter(multiclass_f1(), phases=("train", "valid"))
    assert fresh.state_dict() == {"train": None}
    # validation starts afresh every pass: a validation-only adapter saves nothing after a fit
    valid_only = MetricAdapter(multiclass_f1(), name="f1")
    learn = make_learner(make_model(), batches(xt, yt, 4), batches(xv, yv, 4), [valid_only])
    learn.fit(1)
    assert "f1" in learn.metrics
    assert valid_only.state_dict() == {"train": None}


def test_loading_a_state_without_train_values_resets_the_train_metric():
    xt, yt = make_data(10, seed=1)
    xv, yv = make_data(7, seed=2)
    model = make_model()
    adapter = MetricAdapter(HitRate(), name="hits", phases=("train", "valid"))
    learn = make_learner(model, batches(xt, yt, 4), batches(xv, yv, 4), [adapter], lr=0)
    learn.fit(1)
    assert adapter.collect_metrics(learn, "train") == {"train_hits": pytest.approx(0.3)}
    assert hit_rate(model, xt, yt) == pytest.approx(0.3)
    adapter.load_state_dict({"train": None})
    assert adapter.collect_metrics(learn, "train") is None  # nothing counted: nothing reported
    assert adapter.metrics["train"].n == 0
    assert adapter.collect_metrics(learn, "valid") == {
        "hits": pytest.approx(hit_rate(model, xv, yv))
    }


class CrashAtTheStep:
    """Raises ``RuntimeError("killed")`` in training batch 3 of epoch 1 after its loss (the
    adapter holds the batch for ``update``) and before its checkpoint."""

    @hookimpl
    def after_backward(self, learn):
        if (learn.epoch, learn.iter) == (1, 3):
            raise RuntimeError("killed")


def test_the_same_learner_resumed_after_a_crash_between_backward_and_step_is_exact(tmp_path):
    # the crashed fit left batch 3's gradients in the model and the batch in the adapter (kept
    # for update) when the fit resumes from batch 2's checkpoint on the same Learner: the fit
    # starts with no gradient and the load drops the batch, so batch 3 is trained and counted
    # once
    done = learner(HitRate())
    done.fit(2)
    learn = learner(HitRate(), [Checkpoint(tmp_path, every_n_batches=1)])
    with pytest.raises(RuntimeError, match="killed"):
        learn.fit(2, plugins=[CrashAtTheStep()])
    learn.fit(2, resume_from=tmp_path)
    assert epochs(learn) == epochs(done)
