"""The resumable loaders of pluglearn.data.epochs: exact O(1) resume at every cut point, a plain
state that records the settings, refusal of a state saved with other settings or none, and the
settings checked with the fix (sizes, generators, the global seed when none is given)."""

from __future__ import annotations

import io

import pytest
import torch

from pluglearn.data.epochs import EpochBatches, EpochOrder, ItemLoader, check_batch_size
from pluglearn.scratch import DataLoader, Dataset
from tests.helpers import exact


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ds(n: int) -> Dataset:
    return Dataset(torch.arange(n, dtype=torch.float32) * 10, torch.arange(n))


class CountingDataset(Dataset):
    """A real Dataset that counts item fetches."""

    def __init__(self, n: int):
        super().__init__(torch.arange(n, dtype=torch.float32), torch.arange(n))
        self.fetches = 0

    def __getitem__(self, i):
        self.fetches += 1
        return super().__getitem__(i)


def _epoch(loader) -> list[list[int]]:
    """The y-values (= indices) of one epoch's batches."""
    return [yb.tolist() for _, yb in loader]


def _roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would go."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_batches_equal_the_notebook_loader_over_epochs():
    # the production loader draws the orders and batches the scratch DataLoader draws
    ours = ItemLoader(_ds(23), 5, shuffle=True, generator=_gen(1))
    notebook = DataLoader(_ds(23), batch_size=5, shuffle=True, generator=_gen(1))
    for _ in range(3):
        assert _epoch(ours) == _epoch(notebook)


def _reference(n: int, bs: int, drop_last: bool, shuffle: bool, epochs: int) -> list:
    loader = ItemLoader(_ds(n), bs, shuffle=shuffle, drop_last=drop_last, generator=_gen(7))
    return [_epoch(loader) for _ in range(epochs)]


@pytest.mark.parametrize(
    ("n", "bs", "drop_last"), [(10, 3, False), (10, 3, True), (6, 2, False), (1, 4, False)]
)
@pytest.mark.parametrize("shuffle", [True, False])
def test_resume_at_every_cut_point(n, bs, drop_last, shuffle):
    epochs = 3
    ref = _reference(n, bs, drop_last, shuffle, epochs)
    for e in range(epochs):
        for k in range(len(ref[e]) + 1):
            first = ItemLoader(_ds(n), bs, shuffle=shuffle, drop_last=drop_last, generator=_gen(7))
            for _ in range(e):
                _epoch(first)
            it = iter(first)
            for _ in range(k):
                next(it)
            state = _roundtrip(first.state_dict())
            # A different seed: everything must come from the state.
            ds = CountingDataset(n)
            resumed = ItemLoader(ds, bs, shuffle=shuffle, drop_last=drop_last, generator=_gen(99))
            resumed.load_state_dict(state)
            rest = ref[e][k:] if k < len(ref[e]) else []
            got = _epoch(resumed) if rest else []
            assert got == rest, (e, k)
            assert ds.fetches == sum(len(b) for b in rest)  # skipped batches never fetched
            for later in range(e + 1, epochs):
                assert _epoch(resumed) == ref[later], (e, k, later)


def test_state_after_last_batch_points_at_next_epoch():
    loader = ItemLoader(_ds(7), 3, shuffle=True, generator=_gen(7))
    ref = _reference(7, 3, False, True, 2)
    assert _epoch(loader) == ref[0]
    state = loader.state_dict()
    assert state["epoch"] == 1 and not state["in_epoch"]
    resumed = ItemLoader(_ds(7), 3, shuffle=True)
    resumed.load_state_dict(state)
    assert _epoch(resumed) == ref[1]


def test_state_dict_layout_is_plain_and_loads_with_weights_only():
    loader = ItemLoader(_ds(10), 4, shuffle=True, generator=_gen(0))
    it = iter(loader)
    next(it)
    state = _roundtrip(loader.state_dict())
    settings = {"batch_size", "drop_last", "shuffle", "n_items"}
    position = {"epoch", "cursor", "in_epoch"}
    assert state.keys() == settings | position | {"rng", "rng_epoch_start"}
    assert (state["batch_size"], state["cursor"], state["epoch"], state["n_items"]) == (4, 4, 0, 10)
    assert state["rng"].dtype == torch.uint8
    assert ItemLoader(_ds(3), 1).state_dict().keys() == settings | position


def test_state_dict_of_a_loaded_but_unstarted_loader_round_trips():
    ref = _reference(9, 2, False, True, 2)
    first = ItemLoader(_ds(9), 2, shuffle=True, generator=_gen(7))
    it = iter(first)
    next(it), next(it)
    middle = ItemLoader(_ds(9), 2, shuffle=True)
    middle.load_state_dict(first.state_dict())
    last = ItemLoader(_ds(9), 2, shuffle=True)
    last.load_state_dict(middle.state_dict())  # saved before the resumed epoch started
    assert _epoch(last) == ref[0][2:] and _epoch(last) == ref[1]


@pytest.mark.parametrize(
    ("other", "match"),
    [
        (dict(dataset=_ds(11), batch_size=3), "n_items=10 but this loader has n_items=11"),
        (
            dict(dataset=_ds(10), batch_size=4),
            r"saved with batch_size=3 but this loader has batch_size=4 .*skip or repeat.*"
            r"resume with batch_size=3",
        ),
        (dict(dataset=_ds(10), batch_size=3, shuffle=False), "shuffle=True but .*shuffle=False"),
        (dict(dataset=_ds(10), batch_size=3, drop_last=True), "drop_last=False but"),
    ],
)
def test_load_state_dict_refuses_other_settings(other, match):
    loader = ItemLoader(_ds(10), 3, shuffle=True)
    next(iter(loader))
    with pytest.raises(ValueError, match=match):
        ItemLoader(**{"shuffle": True, **other}).load_state_dict(loader.state_dict())


def test_sampler_resumes_mid_epoch_on_its_own():
    ref = EpochOrder(8, shuffle=True, generator=_gen(4))
    orders = [list(ref) for _ in range(2)]
    first = EpochOrder(8, shuffle=True, generator=_gen(4))
    it = iter(first)
    head = [next(it) for _ in range(5)]
    resumed = EpochOrder(8, shuffle=True)
    resumed.load_state(_roundtrip(first.state()))
    assert head + list(resumed) == orders[0] and list(resumed) == orders[1]


def test_superseded_iterator_is_refused():
    loader = ItemLoader(_ds(6), 2, shuffle=True, generator=_gen(0))
    old = iter(loader)
    next(old)
    assert len(_epoch(loader)) == 3  # a new iter() starts a new epoch
    with pytest.raises(RuntimeError, match="superseded"):
        next(old)
    assert loader.state_dict()["epoch"] == 2  # the abandoned epoch still counts


def test_sizes_and_generators_are_checked_with_the_fix():
    with pytest.raises(TypeError, match=exact(
        "expected a dataset with __len__ or an int size, got bool: give a map-style dataset "
        "(one with __len__ and __getitem__)"
    )):  # fmt: skip
        EpochOrder(True)
    with pytest.raises(ValueError, match=exact(
        "the dataset is empty (size 0): give the loader at least one item"
    )):  # fmt: skip
        EpochOrder([])
    assert list(EpochOrder(1)) == [0]  # one item is enough
    with pytest.raises(TypeError, match=exact(
        "generator must be a torch.Generator, got int: pass e.g. "
        "generator=torch.Generator().manual_seed(0)"
    )):  # fmt: skip
        EpochOrder(3, True, generator=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a non-CPU generator")
def test_a_generator_off_the_cpu_is_refused():
    g = torch.Generator(device="cuda")
    with pytest.raises(ValueError, match=r"^generator must live on the CPU, got one on cuda"):
        EpochOrder(3, True, generator=g)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (True, TypeError, "batch_size must be a positive int, got True: e.g. 64"),
        (2.0, TypeError, "batch_size must be a positive int, got 2.0: e.g. 64"),
        (0, ValueError, "batch_size must be a positive int, got 0: e.g. 64"),
    ],
)
def test_a_batch_size_must_be_a_positive_int(bad, error, message):
    with pytest.raises(error, match=exact(message)):
        check_batch_size(bad)
    assert check_batch_size(1) == 1


def test_without_a_generator_the_shuffle_is_seeded_from_torch_global_generator():
    torch.manual_seed(3)
    order = EpochOrder(10, shuffle=True)
    torch.manual_seed(3)
    seed = iter(torch.utils.data.DataLoader([0]))._base_seed  # torch's draw of a base seed
    assert list(order) == torch.randperm(10, generator=torch.Generator().manual_seed(seed)).tolist()
    assert list(EpochOrder(4)) == [0, 1, 2, 3]  # no shuffle by default


def state_of(**changes):
    batches = EpochBatches(EpochOrder(10, True, torch.Generator().manual_seed(0)), 2)
    return {**batches.state_dict(), **changes}


def test_a_state_without_settings_or_with_others_is_refused_naming_them():
    state = {k: v for k, v in state_of().items() if k not in ("drop_last", "n_items")}
    with pytest.raises(ValueError, match=exact(
        "the saved loader state has no drop_last, n_items: it was written by an older pluglearn "
        "or another loader; start a new run instead of resuming from it"
    )):  # fmt: skip
        EpochBatches(EpochOrder(10, True), 2).load_state_dict(state)
    for key, now, why in [
        ("shuffle", False, "the saved position is a place in a different order"),
        ("n_items", 12, "the saved permutation covers another dataset"),
    ]:
        loader = EpochBatches(EpochOrder(now if key == "n_items" else 10, key != "shuffle"), 2)
        saved = state_of()[key]
        with pytest.raises(ValueError, match=exact(
            f"cannot resume: the loader state was saved with {key}={saved!r} but this loader has "
            f"{key}={now!r} ({why}): resume with {key}={saved!r}, the setting of the saved run, "
            "or start a new run without resume_from"
        )):  # fmt: skip
            loader.load_state_dict(state_of())
    with pytest.raises(ValueError, match=exact(
        "corrupt loader state: cursor 3 is not at a batch boundary of batch_size=2; resume from "
        "a checkpoint this loader saved"
    )):  # fmt: skip
        EpochBatches(EpochOrder(10, True), 2).load_state_dict(state_of(cursor=3, in_epoch=True))


def test_a_corrupt_position_is_refused():
    for epoch, cursor, in_epoch in [(-1, 0, False), (0, 10, True), (0, 3, False)]:
        state = {**EpochOrder(10).state(), "epoch": epoch, "cursor": cursor, "in_epoch": in_epoch}
        with pytest.raises(ValueError, match=exact(
            f"corrupt loader state: epoch {epoch}, cursor {cursor} of 10 items, "
            f"in_epoch={in_epoch}: resume from a checkpoint this loader saved"
        )):  # fmt: skip
            EpochOrder(10).load_state(state)
    for other in (EpochOrder(10, True), EpochOrder(11)):
        with pytest.raises(ValueError, match=r"^cannot resume: the loader state was saved with"):
            other.load_state(EpochOrder(10).state())
