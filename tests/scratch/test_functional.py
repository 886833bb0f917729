"""pluglearn.scratch.functional against its torch twins (torch is the oracle)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pluglearn.scratch.functional import (
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

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-12, "atol": 1e-12}}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(n: int = 6, c: int = 4, dtype: torch.dtype = torch.float64, scale: float = 3.0):
    return torch.randn(n, c, generator=_gen(1), dtype=dtype) * scale


def _targets(n: int = 6, c: int = 4) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=_gen(2))


# ---- equality with torch ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_lin_matches_f_linear(dtype):
    # the notebook's w is (in, out); torch's Linear.weight is its transpose, (out, in)
    g = _gen()
    x, w, b = (torch.randn(*s, generator=g, dtype=dtype) for s in [(5, 3), (3, 4), (4,)])
    torch.testing.assert_close(lin(x, w, b), F.linear(x, w.T, b), **TOL[dtype])
    torch.testing.assert_close(lin(x, w), F.linear(x, w.T), **TOL[dtype])
    x3 = torch.randn(2, 5, 3, generator=g, dtype=dtype)  # extra leading dims
    torch.testing.assert_close(lin(x3, w, b), F.linear(x3, w.T, b), **TOL[dtype])
    assert lin(x, w, b).shape == (5, 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_torch(dtype):
    x = torch.tensor([-2.0, -0.0, 0.0, 1.5, 3.0], dtype=dtype)
    torch.testing.assert_close(relu(x), F.relu(x))
    assert relu(x).dtype == dtype
    assert relu(x).tolist() == [0.0, 0.0, 0.0, 1.5, 3.0]
    assert relu(torch.tensor([float("nan")], dtype=dtype)).isnan().all()


def test_relu_autograd_slope_at_zero_matches_f_relu():
    x = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    relu(x).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    F.relu(x).sum().backward()
    assert ours.tolist() == x.grad.tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head", [(6, 1), (6,)])
def test_mse_matches_f_mse_loss(dtype, head):
    out = torch.randn(*head, generator=_gen(3), dtype=dtype)
    targ = torch.randn(6, generator=_gen(4), dtype=dtype)
    got = mse(out, targ)
    assert got.ndim == 0
    torch.testing.assert_close(got, F.mse_loss(out.reshape(6), targ), **TOL[dtype])


def test_mse_hand_value_and_no_silent_broadcast():
    out = torch.tensor([[1.0], [2.0], [4.0]])
    targ = torch.tensor([1.0, 0.0, 1.0])
    assert mse(out, targ).item() == pytest.approx((0 + 4 + 9) / 3)
    # the notebook's bug: (n, 1) - (n,) broadcasts to (n, n); mse must not do that
    assert mse(out, targ).item() != pytest.approx((out - targ).pow(2).mean().item())


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_logsumexp_match_torch(dtype):
    x = _logits(dtype=dtype)
    torch.testing.assert_close(logsumexp(x), torch.logsumexp(x, -1), **TOL[dtype])
    torch.testing.assert_close(log_softmax(x), F.log_softmax(x, -1), **TOL[dtype])
    torch.testing.assert_close(log_softmax_naive(x), F.log_softmax(x, -1), **TOL[dtype])
    torch.testing.assert_close(logsumexp(x, dim=0), torch.logsumexp(x, 0), **TOL[dtype])
    torch.testing.assert_close(log_softmax(x, dim=0), F.log_softmax(x, 0), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_nll_cross_entropy_accuracy_match_torch(dtype):
    x, t = _logits(dtype=dtype), _targets()
    lp = F.log_softmax(x, -1)
    torch.testing.assert_close(nll(lp, t), F.nll_loss(lp, t), **TOL[dtype])
    torch.testing.assert_close(cross_entropy(x, t), F.cross_entropy(x, t), **TOL[dtype])
    expected = (x.argmax(1) == t).float().mean()
    torch.testing.assert_close(accuracy(x, t), expected)


def test_nll_and_accuracy_hand_values():
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]))
    t = torch.tensor([0, 2])
    assert nll(lp, t).item() == pytest.approx(-(torch.log(torch.tensor(0.5 * 0.7))).item() / 2)
    assert accuracy(lp, t).item() == 1.0
    assert accuracy(lp, torch.tensor([1, 2])).item() == 0.5


def test_autograd_through_scratch_matches_torch():
    x = _logits().requires_grad_()
    t = _targets()
    cross_entropy(x, t).backward()
    ours = x.grad.clone()
    x.grad = None
    F.cross_entropy(x, t).backward()
    torch.testing.assert_close(ours, x.grad, rtol=1e-12, atol=1e-12)
    # the max-shift in logsumexp is detached: the gradient is exactly softmax
    x.grad = None
    logsumexp(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.softmax(x.detach(), -1), rtol=1e-12, atol=1e-12)


# ---- stability ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_stable_forms_survive_huge_logits_where_naive_overflows(dtype):
    x = torch.tensor([[1e4, 0.0, -1e4], [1e4, 1e4 - 1.0, 5.0]], dtype=dtype)
    t = torch.tensor([0, 1])
    naive = log_softmax_naive(x)
    assert not torch.isfinite(naive).all()  # exp(1e4) = inf -> inf/inf = nan
    lse, ls = logsumexp(x), log_softmax(x)
    assert torch.isfinite(lse).all()
    torch.testing.assert_close(lse, torch.logsumexp(x, -1), **TOL[dtype])
    torch.testing.assert_close(ls, F.log_softmax(x, -1), **TOL[dtype])
    ce = cross_entropy(x, t)
    assert torch.isfinite(ce)
    torch.testing.assert_close(ce, F.cross_entropy(x, t), **TOL[dtype])


def test_logsumexp_infinite_rows_match_torch():
    x = torch.tensor([[-torch.inf, -torch.inf], [torch.inf, 0.0], [-torch.inf, 2.0]])
    torch.testing.assert_close(logsumexp(x), torch.logsumexp(x, -1))


# ---- errors -------------------------------------------------------------------------------------
def test_lin_errors_name_the_problem():
    x, w, b = torch.randn(5, 3), torch.randn(3, 4), torch.randn(4)
    with pytest.raises(ValueError, match=r"transpose w if it is \(out, in\)"):
        lin(x, w.T, b)
    with pytest.raises(ValueError, match=r"b must have shape \(4,\)"):
        lin(x, w, torch.randn(3))
    with pytest.raises(ValueError, match="floating-point"):
        lin(torch.ones(5, 3, dtype=torch.long), w, b)
    with pytest.raises(ValueError, match="float64"):
        lin(x.double(), w, b)


def test_mse_shape_mismatch_raises():
    with pytest.raises(ValueError, match="does not match target shape"):
        mse(torch.randn(4, 2), torch.randn(4))
    with pytest.raises(ValueError, match="does not match target shape"):
        mse(torch.randn(4, 1), torch.randn(5))


def test_class_target_errors():
    lp = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"integer class indices.*target\.long\(\)"):
        nll(lp, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="3 rows"):
        nll(lp, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        cross_entropy(lp, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        nll(lp, torch.tensor([0, -1, 2]))  # negative indices must not wrap around
    with pytest.raises(ValueError, match=r"shape \(n, c\)"):
        cross_entropy(torch.randn(4), torch.tensor([0]))
    with pytest.raises(ValueError, match="1-D"):
        accuracy(lp, torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="floating-point"):
        log_softmax(torch.tensor([[1, 2]]))


# ---- properties ---------------------------------------------------------------------------------
_floats = st.floats(-100.0, 100.0, allow_nan=False, allow_infinity=False)
_matrices = st.integers(1, 5).flatmap(
    lambda c: st.lists(st.lists(_floats, min_size=c, max_size=c), min_size=1, max_size=5)
)


@settings(max_examples=60, deadline=None)
@given(rows=_matrices, c=st.floats(-1e3, 1e3, allow_nan=False))
def test_logsumexp_shift_property(rows, c):
    x = torch.tensor(rows, dtype=torch.float64)
    torch.testing.assert_close(logsumexp(x + c), logsumexp(x) + c, rtol=1e-12, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(rows=_matrices)
def test_log_softmax_rows_are_distributions(rows):
    x = torch.tensor(rows, dtype=torch.float64)
    ls = log_softmax(x)
    assert (ls <= 1e-12).all()
    torch.testing.assert_close(ls.exp().sum(-1), torch.ones(x.shape[0], dtype=torch.float64))
    torch.testing.assert_close(ls, F.log_softmax(x, -1), rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(rows=_matrices, data=st.data())
def test_log_softmax_invariant_to_row_shift(rows, data):
    x = torch.tensor(rows, dtype=torch.float64)
    shifts = data.draw(st.lists(st.floats(-1e3, 1e3), min_size=len(rows), max_size=len(rows)))
    shifted = x + torch.tensor(shifts, dtype=torch.float64)[:, None]
    torch.testing.assert_close(log_softmax(shifted), log_softmax(x), rtol=1e-9, atol=1e-9)
