"""Loss terms of CausalCLIP (docs/method.md#pipeline), each a plain function of torch tensors.

All classifier outputs are handled as *logits* so that every loss is numerically stable even when a
probability saturates at 0 or 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "bernoulli_kl",
    "bce",
    "gaussian_gram",
    "hsic",
    "mask_l1",
    "median_sq_distance",
    "nhsic",
    "uniform_bce",
    "unbiased_hsic",
]


def bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``sigmoid(logits)`` against labels ``y`` in {0, 1} (Eq. 6 and 7-9).

    L_adv = L_adv+ + L_adv- of Eq. 7-9 is exactly this mean BCE: the positive term sums over fakes and the
    negative term over reals, both divided by the batch size.
    """
    return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))


def uniform_bce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``sigmoid(logits)`` against the uninformative target 0.5.

    The bounded alternative to maximising the adversary's BCE: it is smallest when the adversary outputs
    0.5 for every sample, and cannot be "won" by making the adversary confidently wrong.
    """
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 0.5))


def bernoulli_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(Bernoulli(sigmoid(p_logits)) || Bernoulli(sigmoid(q_logits))) over the batch (Eq. 12).

    KL(p||q) = p log(p/q) + (1-p) log((1-p)/(1-q)); computed with log-sigmoids so that saturated
    probabilities give finite values and gradients.
    """
    p = torch.sigmoid(p_logits)
    log_p, log_1mp = F.logsigmoid(p_logits), F.logsigmoid(-p_logits)
    log_q, log_1mq = F.logsigmoid(q_logits), F.logsigmoid(-q_logits)
    return (p * (log_p - log_q) + (1 - p) * (log_1mp - log_1mq)).mean()


def mask_l1(mask: torch.Tensor) -> torch.Tensor:
    """|M|_1 as the mean of the (non-negative) mask over batch and dimensions, so lambda1 does not scale with d."""
    return mask.mean()


def _sq_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances of the rows of x: (n, d) -> (n, n), >= 0, differentiable everywhere.

    Squared distances avoid the sqrt, whose gradient is infinite at zero distance (identical rows, e.g. an
    all-zero mask).
    """
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return d2.clamp_min(0.0)


def median_sq_distance(d2: torch.Tensor) -> torch.Tensor:
    """Median of the off-diagonal squared distances, without gradient (the median heuristic, squared); for an even
    count the lower of the two middle values (``torch.median``'s rule).

    Falls back to the mean of the positive off-diagonal entries when more than half of the pairs coincide, and
    to 1 when all rows are identical (the kernel is then constant and any bandwidth gives the same value).
    """
    with torch.no_grad():
        n = d2.shape[0]
        off = d2[~torch.eye(n, dtype=torch.bool, device=d2.device)]
        if off.numel() == 0:
            return torch.ones((), dtype=d2.dtype, device=d2.device)
        med = off.median()
        if med > 0:
            return med
        pos = off[off > 0]
        return pos.mean() if pos.numel() else torch.ones((), dtype=d2.dtype, device=d2.device)


def gaussian_gram(x: torch.Tensor, sigma2: torch.Tensor | float | None = None) -> torch.Tensor:
    """Gaussian kernel matrix K_ij = exp(-|x_i - x_j|^2 / (2 sigma^2)); sigma^2 = median squared distance by default."""
    d2 = _sq_distances(x)
    if sigma2 is None:
        sigma2 = median_sq_distance(d2)
    return torch.exp(-d2 / (2.0 * sigma2))


def hsic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Biased empirical HSIC between paired samples x (n, dx) and y (n, dy): tr(K H L H) / (n-1)^2.

    K and L are Gaussian kernel matrices with the median heuristic bandwidth (computed without gradient), and
    H = I - 11^T/n centres them. Returns a differentiable scalar >= 0: close to 0 for independent samples and
    larger for dependent ones. Needs n >= 2.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"hsic expects two (n, d) tensors with the same n, got {tuple(x.shape)} and {tuple(y.shape)}")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"hsic needs at least 2 samples, got {n}")
    k = gaussian_gram(x)
    l_ = gaussian_gram(y)
    # H K H without forming H: subtract row and column means, add back the grand mean.
    kc = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
    # tr(K H L H) = tr((H K H) L) = sum((H K H) * L) since both are symmetric.
    return (kc * l_).sum() / float((n - 1) ** 2)


def unbiased_hsic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The unbiased HSIC estimator (Song et al. 2012) with the same Gaussian kernels as :func:`hsic`. Needs n >= 4.

    With K~ and L~ the kernel matrices with zeroed diagonals:
    [tr(K~ L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)).
    The biased estimator's expectation for independent samples is about (1 - k)^2 / n, where k is the typical
    kernel value; in high dimension every Gaussian-kernel value sits near exp(-1/2), so that bias (from the
    diagonal) is most of :func:`hsic`'s value whatever the dependence. This estimator drops the diagonal and is
    centred on 0 for independent samples (it can then be slightly negative).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"hsic expects two (n, d) tensors with the same n, got {tuple(x.shape)} and {tuple(y.shape)}")
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 samples, got {n}")
    return _unbiased(*_offdiag_grams(x, y))


def _offdiag_grams(*xs: torch.Tensor) -> list[torch.Tensor]:
    """The Gaussian kernel matrices of each input with their diagonals set to 0 (the unbiased estimator's K~)."""
    n = xs[0].shape[0]
    off = 1.0 - torch.eye(n, dtype=xs[0].dtype, device=xs[0].device)
    return [gaussian_gram(x) * off for x in xs]


def _unbiased(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """Song et al.'s unbiased HSIC from zero-diagonal kernel matrices K~, L~ (n >= 4)."""
    n = k.shape[0]
    trace = (k * l_).sum()
    sums = k.sum() * l_.sum() / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (k.sum(dim=0) * l_.sum(dim=0)).sum()  # 1'K L 1 = sum_j (K 1)_j (L 1)_j, K symmetric
    return (trace + sums - cross) / (n * (n - 3))


def nhsic(x: torch.Tensor, y: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """Normalised HSIC: unbiased HSIC(x, y) / sqrt(HSIC(x, x) HSIC(y, y)), the Gaussian-kernel analogue of
    (debiased) CKA. Near 0 for independent samples, 1 for x = y, and unchanged when either input is scaled (the
    bandwidths follow the data), so its weight in a loss means the same for any feature scale or dimension.
    Clamped at 0 from below (negative values are estimation noise); 0 when either input is constant, and for
    fewer than 4 samples (a training run's last, short batch), which the unbiased estimator cannot use."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"nhsic expects two (n, d) tensors with the same n, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] < 4:
        return x.new_zeros(())
    k, l_ = _offdiag_grams(x, y)  # each kernel matrix once, for the three estimates
    hxy, hxx, hyy = _unbiased(k, l_), _unbiased(k, k), _unbiased(l_, l_)
    denom = torch.sqrt(hxx.clamp_min(0.0) * hyy.clamp_min(0.0))
    if denom <= eps:
        return hxy.new_zeros(())
    return (hxy / denom).clamp_min(0.0)
