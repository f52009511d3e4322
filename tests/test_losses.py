"""Each loss against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import causalclip
from causalclip.heads.losses import bce, bernoulli_kl, hsic, mask_l1, uniform_bce


def lower_median(v: np.ndarray) -> float:
    """The lower of the two middle values for an even count, torch.median's convention (NumPy averages them)."""
    return float(np.sort(v)[(len(v) - 1) // 2])


def hsic_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Direct textbook formula: tr(K H L H) / (n-1)^2 with explicit matrices H = I - 11'/n, Gaussian kernels
    exp(-|x_i - x_j|^2 / (2 sigma^2)), sigma^2 = the lower median of the off-diagonal squared distances, i.e. the
    same bandwidth as the median heuristic in ``hsic`` (n(n-1) pairs is always an even count)."""
    n = len(x)

    def gram(a):
        d2 = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
        sigma2 = lower_median(d2[~np.eye(n, dtype=bool)])
        return np.exp(-d2 / (2 * sigma2))

    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(gram(x) @ h @ gram(y) @ h) / (n - 1) ** 2)


def test_hsic_is_public_api():
    assert causalclip.hsic is hsic


@pytest.mark.parametrize("n", [7, 31, 64, 256])
def test_hsic_matches_numpy_formula(n):
    """Same bandwidths on both sides, so the two agree to float64 precision: a tolerance far below the 3 % that
    separates (n-1)^2 from n^2 at n = 64 (and the 0.8 % at n = 256)."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 5))
    y = np.tanh(x[:, :3]) + 0.3 * rng.normal(size=(n, 3))
    got = hsic(torch.tensor(x), torch.tensor(y)).item()
    ref = hsic_numpy(x, y)
    assert ref > 0.01  # dependent samples: a value well away from 0, so a relative comparison means something
    assert got == pytest.approx(ref, rel=1e-9)


def test_hsic_matches_numpy_with_exact_bandwidth():
    """With the bandwidth fixed identically on both sides the two computations agree to float precision."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 2))
    from causalclip.heads.losses import gaussian_gram

    k = gaussian_gram(torch.tensor(x), 2.0).numpy()
    l_ = gaussian_gram(torch.tensor(y), 3.0).numpy()
    dx = ((x[:, None] - x[None]) ** 2).sum(-1)
    dy = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.testing.assert_allclose(k, np.exp(-dx / 4.0), rtol=1e-10)
    np.testing.assert_allclose(l_, np.exp(-dy / 6.0), rtol=1e-10)


def test_hsic_independent_small_dependent_large():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g)
    y_ind = torch.randn(256, 2, generator=g)
    y_sq = x**2 + 0.1 * torch.randn(256, 2, generator=g)  # dependent but uncorrelated
    y_lin = x + 0.5 * torch.randn(256, 2, generator=g)
    ind = hsic(x, y_ind).item()
    assert 0 <= ind < 0.002
    assert hsic(x, y_sq).item() > 10 * ind
    assert hsic(x, y_lin).item() > 10 * ind
    assert hsic(x, x).item() > hsic(x, y_lin).item()


def test_hsic_is_differentiable_and_finite_when_inputs_collapse():
    for x in (torch.zeros(16, 4), torch.ones(16, 4) * 3.0):  # all rows identical: zero median distance
        x = x.clone().requires_grad_(True)
        y = torch.randn(16, 4, requires_grad=True)
        v = hsic(x, y)
        v.backward()
        assert torch.isfinite(v) and v.item() == pytest.approx(0.0, abs=1e-7)
        assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    # More than half of the pairs coincide (median 0) but not all: still finite.
    x = torch.zeros(10, 3)
    x[0] = 1.0
    x.requires_grad_(True)
    v = hsic(x, torch.randn(10, 3))
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(x.grad).all()


def test_hsic_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same n"):
        hsic(torch.randn(4, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="at least 2"):
        hsic(torch.randn(1, 2), torch.randn(1, 2))


def test_bernoulli_kl_closed_form():
    p = np.array([0.1, 0.5, 0.9, 0.999, 0.3])
    q = np.array([0.2, 0.5, 0.5, 0.01, 0.7])
    ref = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    logit = lambda v: torch.tensor(np.log(v / (1 - v)))  # noqa: E731
    got = bernoulli_kl(logit(p), logit(q)).item()
    assert got == pytest.approx(ref.mean(), rel=1e-9)
    # against torch.distributions as a second reference
    td = torch.distributions.kl_divergence(
        torch.distributions.Bernoulli(probs=torch.tensor(p)), torch.distributions.Bernoulli(probs=torch.tensor(q))
    )
    assert got == pytest.approx(td.mean().item(), rel=1e-9)


def test_bernoulli_kl_zero_iff_equal_and_finite_when_saturated():
    a = torch.tensor([-3.0, 0.0, 4.0])
    assert bernoulli_kl(a, a).item() == pytest.approx(0.0, abs=1e-12)
    big = torch.tensor([80.0, -80.0], requires_grad=True)
    v = bernoulli_kl(big, torch.tensor([-80.0, 80.0]))
    v.backward()
    assert math.isfinite(v.item()) and v.item() > 50 and torch.isfinite(big.grad).all()


def test_bce_and_uniform_bce():
    logits = torch.tensor([2.0, -1.0, 0.5])
    y = torch.tensor([1, 0, 0])
    p = torch.sigmoid(logits).numpy()
    ref = -np.mean([np.log(p[0]), np.log(1 - p[1]), np.log(1 - p[2])])
    assert bce(logits, y).item() == pytest.approx(ref, rel=1e-6)
    # uniform target: minimal (= log 2) exactly at logit 0
    assert uniform_bce(torch.zeros(4)).item() == pytest.approx(math.log(2))
    assert uniform_bce(torch.full((4,), 3.0)).item() > math.log(2)
    assert uniform_bce(torch.full((4,), -3.0)).item() > math.log(2)


def test_mask_l1_is_mean():
    m = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert mask_l1(m).item() == pytest.approx(0.5)
