"""learn.lr_find: the sweep, its stop and suggestion, and that a fit after it is bit-identical."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pluglearn import AvgLoss, Checkpoint, DataLoaders, Learner, ProgressBar, hookimpl
from pluglearn.plugins.lr_find import LRFindResult, suggest

X = torch.randn(96, 6, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] + X[:, 1] > 0).long()


# Not the shared make_learner: 6-feature, 2-class data of its own and a dropout MLP.
def make(opt_func=None, plugins=(), defaults=False) -> Learner:
    """Shuffled loaders from datasets, dropout, SGD with momentum: every state lr_find touches."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    dls = DataLoaders.from_datasets((X[:64], Y[:64]), (X[64:], Y[64:]), batch_size=8)
    opt = opt_func or (lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9))
    return Learner(model, dls, lr=0.05, opt_func=opt, plugins=plugins, defaults=defaults)


def weights(learn: Learner) -> list[torch.Tensor]:
    return [t.clone() for t in learn.model.state_dict().values()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("num_it", [5, 20])  # shorter than an epoch, and more than two epochs
@pytest.mark.slow
def test_a_fit_after_lr_find_gives_the_weights_of_a_fit_without_it(num_it):
    plain = make()
    plain.fit(2)
    swept = make()
    result = swept.lr_find(num_it=num_it, stop_div=False)
    assert len(result.losses) == num_it
    assert swept.opt is None  # the sweep made it, the fit makes a fresh one as without a sweep
    swept.fit(2)
    assert same(weights(swept), weights(plain))


@pytest.mark.slow
def test_lr_find_between_fits_puts_back_the_optimizer_state_and_position():
    plain = make()
    plain.fit(1)
    plain.fit(1)
    swept = make()
    swept.fit(1)
    momentum = [s["momentum_buffer"].clone() for s in swept.opt.state.values()]
    position = (swept.epoch, swept.train_iter, swept.opt_steps)
    swept.lr_find(num_it=12)
    assert same([s["momentum_buffer"] for s in swept.opt.state.values()], momentum)
    assert (swept.epoch, swept.train_iter, swept.opt_steps) == position
    assert [g["lr"] for g in swept.opt.param_groups] == [0.05]
    swept.fit(1)
    assert same(weights(swept), weights(plain))


def test_lr_find_with_ready_loaders_and_default_plugins_leaves_the_fit_unchanged():
    def ready():
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Linear(16, 2))
        train = [(X[i : i + 8], Y[i : i + 8]) for i in range(0, 64, 8)]
        return Learner(model, DataLoaders(train, [(X[64:], Y[64:])]), lr=0.1)

    plain = ready()
    plain.fit(2)
    swept = ready()
    swept.remove_plugin("ProgressBar")
    swept.add_plugin(ProgressBar())
    swept.lr_find(num_it=10)
    swept.fit(2)
    assert same(weights(swept), weights(plain))


def test_the_sweep_is_exponential_and_the_model_modes_are_put_back():
    learn = make()
    learn.model.eval()
    learn.model[0].train()
    result = learn.lr_find(start_lr=1e-4, end_lr=1.0, num_it=9, stop_div=False)
    assert result.lrs[0] == pytest.approx(1e-4) and result.lrs[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:], strict=False)]
    assert ratios == pytest.approx([10**0.5] * 8)
    assert [m.training for m in learn.model.modules()] == [False, True, False, False, False]


@pytest.mark.slow
def test_a_diverging_loss_ends_the_sweep_early():
    learn = make(opt_func=torch.optim.SGD)
    result = learn.lr_find(start_lr=1e-3, end_lr=1e6, num_it=100)
    assert result.diverged and len(result.losses) < 100
    last = result.smoothed[-1]
    assert not math.isfinite(last) or last > 4 * min(result.smoothed[:-1])


def test_hooks_fire_as_in_a_fit_without_validation_or_report():
    seen: list[str] = []

    class Log:
        @hookimpl
        def after_create_opt(self, learn):
            seen.append(f"after_create_opt:{learn.run.running}")

        @hookimpl
        def before_fit(self):
            seen.append("before_fit")

        @hookimpl
        def before_train(self):
            seen.append("before_train")

        @hookimpl
        def after_loss(self, learn):
            seen.append(f"after_loss:{learn.opt.param_groups[0]['lr']:.0e}")

        @hookimpl
        def before_validate(self):
            seen.append("before_validate")

        @hookimpl
        def report(self):
            seen.append("report")

        @hookimpl
        def cleanup_fit(self):
            seen.append("cleanup_fit")

    learn = make(plugins=[Log()])
    learn.lr_find(start_lr=1e-3, end_lr=1e-1, num_it=3)
    assert seen == [
        "after_create_opt:lr_find",
        "before_fit",
        "before_train",
        "after_loss:1e-03",
        "after_loss:1e-02",
        "after_loss:1e-01",
        "cleanup_fit",
    ]


def test_lr_find_from_inside_a_hook_is_refused():
    class Nested:
        @hookimpl
        def after_batch(self, learn):
            learn.lr_find()

    learn = make(plugins=[Nested()])
    with pytest.raises(RuntimeError, match=r"lr_find\(\) cannot run inside another call"):
        learn.fit(1)


def test_checkpoints_are_not_written_during_the_sweep(tmp_path):
    ckpt = Checkpoint(tmp_path, every_n_batches=1)
    learn = make(plugins=[ckpt])
    learn.lr_find(num_it=4)
    assert list(tmp_path.iterdir()) == []
    assert learn.plugins[0] is ckpt
    learn.fit(1)
    assert list(tmp_path.glob("*.pt"))


@pytest.mark.slow
def test_plot_returns_a_figure_or_writes_the_file(tmp_path):
    result = make().lr_find(num_it=6)
    assert type(result.plot()).__name__ == "Figure"
    path = result.plot(tmp_path / "lr.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_the_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = [10.0**k for k in range(-6, 1)]
    smoothed = [5.0, 4.9, 4.0, 2.0, 1.5, 1.4, 9.0]  # central slopes -0.5, -1.45, -1.25, ...
    assert suggest(lrs, smoothed) == 1e-4
    assert suggest(lrs[:3], [1.0, 2.0, 3.0]) == pytest.approx(1e-7)  # no descent: min / 10
    assert suggest([], []) is None


def test_the_result_holds_a_suggestion_within_the_sweep():
    result = make().lr_find(start_lr=1e-5, end_lr=1.0, num_it=30, stop_div=False)
    assert isinstance(result, LRFindResult)
    assert 1e-6 <= result.suggestion <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_lr": 1.0, "end_lr": 0.1}, "goes up from start_lr > 0"),
        ({"start_lr": 0.0}, "goes up from start_lr > 0"),
        ({"num_it": 1}, r"num_it=1\): give an int >= 2"),
        ({"end_lr": float("nan")}, "finite number"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make().lr_find(**kwargs)


def recorded(learn: Learner) -> tuple:
    rec = learn.plugin("Recorder")
    epochs = [{k: v for k, v in e.items() if k != "time"} for e in rec.epochs]
    return list(rec.steps), list(rec.losses), list(rec.lrs), list(rec.moms), epochs


@pytest.mark.parametrize("fits_before", [0, 1])
@pytest.mark.slow
def test_plugins_state_after_lr_find_is_the_state_without_it(fits_before):
    from pluglearn import Recorder

    def learner() -> Learner:  # each built and run in turn: the loaders seed from torch's RNG
        learn = make(plugins=[Recorder()], defaults=True)
        learn.remove_plugin("ProgressBar")
        for _ in range(fits_before):
            learn.fit(1)
        return learn

    plain = learner()
    plain_sums = copy.deepcopy(plain.plugin("AvgLoss").sums)
    plain.fit(1)
    swept = learner()
    before = recorded(swept)
    swept.lr_find(num_it=12, stop_div=False)
    assert recorded(swept) == before  # the sweep's 12 batches are not in the history
    assert swept.plugin("AvgLoss").sums == plain_sums
    swept.fit(1)
    assert recorded(swept) == recorded(plain)
    assert len(recorded(plain)[0]) == 8 * (fits_before + 1)
    assert same(weights(swept), weights(plain))


def user_loader(kind: str):
    """A user's own shuffling training loader that carries state between epochs."""
    from torch.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(X[:64], Y[:64])
    if kind == "generator":  # torch's reproducibility recipe
        return DataLoader(
            ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3)
        )
    if kind == "global":  # draws its order from torch's global generator
        return DataLoader(ds, batch_size=8, shuffle=True)
    if kind == "tensor":  # pluglearn's loader handed over ready: a state_dict and a generator
        from pluglearn.data.loaders import TensorBatchLoader

        return TensorBatchLoader(
            (X[:64], Y[:64]), 8, True, generator=torch.Generator().manual_seed(3)
        )
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(ds, batch_size=8, shuffle=True)


@pytest.mark.parametrize("kind", ["generator", "global", "tensor", "stateful"])
@pytest.mark.slow
def test_lr_find_puts_back_a_user_loader_and_its_generator(kind):
    """Its order must be the same after the sweep as without it: the sweep draws from the
    loader's generator (or the global one) and advances a stateful loader."""
    if kind == "stateful":
        pytest.importorskip("torchdata.stateful_dataloader")

    def learner() -> Learner:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
        dls = DataLoaders(user_loader(kind), [(X[64:], Y[64:])])
        return Learner(model, dls, lr=0.05, defaults=False)

    plain = learner()
    plain.fit(2)
    swept = learner()
    swept.lr_find(num_it=12, stop_div=False)  # one and a half epochs of the loader
    swept.fit(2)
    assert same(weights(swept), weights(plain))


# ------------------------------------------------------- the suggestion on a trained model


# Not the shared make_learner: the bundled digits and the example's MLP.
def digits_learner(epochs: int) -> Learner:
    """The example's MLP on the bundled digits, SGD with momentum, trained ``epochs`` first."""
    from pluglearn.data.digits import load_digits

    splits = load_digits(seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 50), nn.ReLU(), nn.Linear(50, 10))
    dls = DataLoaders.from_datasets(splits.train, splits.valid, batch_size=64, seed=0)
    sgd = lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9)  # noqa: E731
    learn = Learner(model, dls, lr=0.05, opt_func=sgd, plugins=[AvgLoss()], defaults=False)
    learn.fit(epochs)
    return learn


def fastai_steep(lrs, smoothed, num_it):
    """The oracle: fastai's rule written out with torch. Drop the first num_it // 10 points,
    find the minimum of the rest, and take the lr where the forward slope of the smoothed loss
    against log(lr) is most negative before it."""
    skip = num_it // 10
    losses, logs = torch.tensor(smoothed[skip:]), torch.tensor(lrs[skip:]).log()
    low = int(torch.where(losses.isfinite(), losses, math.inf).argmin())
    slopes = (losses[1 : low + 1] - losses[:low]) / (logs[1 : low + 1] - logs[:low])
    return lrs[skip + int(slopes.argmin())]


@pytest.mark.slow
def test_on_a_partly_trained_model_the_suggestion_skips_the_noisy_start_of_the_sweep():
    learn = digits_learner(epochs=1)
    result = learn.lr_find()
    assert result.suggestion == fastai_steep(result.lrs, result.smoothed, 100)
    assert result.suggestion > 1e-3  # the old rule: 1.2e-07, the sweep's second lr
    before = learn.validate()["valid_loss"]
    learn.fit(1, lr=result.suggestion)
    assert learn.metrics["valid_loss"] < 0.9 * before  # it trains; the sweep's start does not


def test_the_suggestion_skips_the_first_tenth_of_the_sweep():
    lrs = [10.0 ** (k / 4) for k in range(-28, 2)]  # 30 points: the first 3 are skipped
    smoothed = [9.0, 6.0, 5.0] + [5.0 - 0.01 * i for i in range(20)] + [4.0, 3.0, 2.9, 9, 9, 9, 9]
    assert suggest(lrs, smoothed) == lrs[23]  # 4.0 -> 3.0 (not 9 -> 6 at the start)
    assert suggest(lrs, smoothed, num_it=100) == lrs[23]  # the first 10 of a planned 100


# ----------------------------------------------------------------- what a person looks at


def test_the_result_prints_as_one_short_line():
    result = make(opt_func=torch.optim.SGD).lr_find(start_lr=1e-3, end_lr=1e6, num_it=100)
    text = repr(result)
    assert str(result) == text and "\n" not in text and len(text) < 160, text
    assert f"suggestion={result.suggestion:.2e}" in text
    assert f"lrs {result.lrs[0]:.1e}..{result.lrs[-1]:.1e}" in text
    assert f"{len(result.lrs)} points" in text and "diverged=True" in text


@pytest.mark.slow
def test_the_plot_shows_its_labels_and_the_useful_loss_range():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    result = make(opt_func=torch.optim.SGD).lr_find(start_lr=1e-3, end_lr=1e6, num_it=100)
    assert result.diverged
    fig = result.plot()
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    for label in (ax.xaxis.label, ax.yaxis.label):  # inside the figure, not cut off
        box = label.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0, label.get_text()
        assert box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, label.get_text()
    bottom, top = ax.get_ylim()
    finite = [s for s in result.smoothed if math.isfinite(s)]
    low = finite.index(min(finite))
    highest = max(finite[: low + 1])  # the sweep up to its minimum, the start among it
    assert bottom <= min(finite) and highest <= top <= highest + 0.25 * (highest - min(finite))
    assert top < max(finite)  # the diverged tail is cut off


# ---------------------------------------------------------------------- no suggestion


def test_a_loss_nan_from_the_first_batch_warns_why_and_fit_refuses_the_missing_lr():
    torch.manual_seed(1)
    x = X.clone()
    x[:, 2] = float("nan")  # every item: the loss is nan from the first batch on
    dls = DataLoaders.from_datasets((x[:64], Y[:64]), (x[64:], Y[64:]), batch_size=8)
    learn = Learner(nn.Linear(6, 2), dls, lr=0.05, defaults=False)
    with pytest.warns(UserWarning, match=r"lr_find found no lr to suggest") as caught:
        result = learn.lr_find()
    message = str(caught[0].message)
    assert "the loss was nan at the first batch (lr 1.0e-07)" in message
    assert "NaN or inf in the inputs" in message and "suggestion is None" in message
    assert result.suggestion is None and result.notes == [message]
    with pytest.raises(TypeError, match=r"lr must be a number, got None") as info:
        learn.fit(1, lr=result.suggestion)
    assert "lr_find" in str(info.value)
    assert learn.epoch == 0 and learn.lr == 0.05  # refused before anything ran


def test_fit_without_lr_keeps_the_learner_s_lr():
    learn = make()
    learn.lr = 0.02
    learn.fit(1)
    assert [g["lr"] for g in learn.opt.param_groups] == [0.02]
