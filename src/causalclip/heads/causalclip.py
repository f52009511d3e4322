"""The CausalCLIP head (docs/method.md#pipeline): a Gumbel-sigmoid mask splits the features into a causal part for
the classifier h and a non-causal part for the adversary d, trained in alternating phases with the L1, HSIC and
counterfactual KL terms; and Table 5's ablations of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from .base import Head, Phase, mlp
from .losses import bce, bernoulli_kl, hsic, mask_l1, nhsic, uniform_bce

__all__ = [
    "ABLATIONS",
    "CausalCLIPConfig",
    "CausalCLIPHead",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CausalCLIPConfig:
    """CausalCLIP's open decisions; docs/method.md#open-decisions says where each default comes from."""

    tau: float = 1.0  # Gumbel-sigmoid temperature (Eq. 5)
    # g in Eq. 5: "logistic" = g1 - g2 of two Gumbel(0,1) (the two-class Gumbel-softmax, zero mean);
    # "gumbel" = the literal single Gumbel(0,1) (mean 0.577); "none" = deterministic mask.
    noise: Literal["logistic", "gumbel", "none"] = "logistic"
    lambda1: float = 0.01  # L1 sparsity weight (Eq. 10), on the mean of M
    lambda2: float = 1.0  # independence weight (Eq. 10)
    # The independence term of Eq. 10: "hsic" = the paper's biased HSIC (its value in high dimension is mostly
    # estimator bias: docs/method.md#known-limitations-of-the-defaults); "nhsic" = normalised unbiased HSIC, in
    # [0, 1] whatever the features' scale or dimension, so lambda2 weighs it against L_cls directly.
    independence: Literal["hsic", "nhsic"] = "nhsic"
    # Adversarial weight (Eq. 13); the paper gives no value. The sensitivity study over orders of magnitude, on
    # validation generators never tested, found nothing better beyond seed spread (docs/reports/sensitivity.md).
    alpha: float = 0.5
    beta: float = 1.0  # counterfactual KL weight (Eq. 13)
    p: float = 0.1  # Bernoulli drop probability of the counterfactual intervention (Eq. 11)
    mask_hidden: int = 512  # hidden width of MLP(E) in Eq. 5
    classifier_hidden: int = 0  # h: 0 = linear
    adversary_hidden: int = 256  # d: 0 = linear
    # "paper": the mask minimises -alpha * BCE(d(Znc), y) (Eq. 13, unbounded: won by making d confidently
    # wrong, which leaves y in Znc); "uniform": it minimises alpha * CE(d(Znc), 0.5), i.e. pushes d towards chance
    # (bounded, and only won by taking the label out of Znc).
    adv_loss: Literal["paper", "uniform"] = "uniform"
    kl_detach_target: bool = True  # L_inv = KL(sg[h(Zc)] || h(Zc_cf)) when true
    mask_bias_init: float = 0.0  # initial bias of the mask logits (0 -> M starts near 0.5)
    # Table 5 ablation switches: factorization = mask + L1 + HSIC; adversarial_masking = adversary + L_inv.
    factorization: bool = True
    adversarial_masking: bool = True

    def validate(self) -> None:
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"p must be in [0, 1), got {self.p}")
        for k in ("lambda1", "lambda2", "alpha", "beta"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")


# Table 5's four configurations, selectable as ``--ablation NAME``.
ABLATIONS: dict[str, dict[str, bool]] = {
    "none": {"factorization": False, "adversarial_masking": False},  # = linear probe on E (UnivFD)
    "factorization": {"factorization": True, "adversarial_masking": False},
    "masking": {"factorization": False, "adversarial_masking": True},
    "full": {"factorization": True, "adversarial_masking": True},
}


def _sample_noise(shape: torch.Size, kind: str, like: torch.Tensor) -> torch.Tensor:
    if kind == "none":
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    u = torch.rand(shape, dtype=like.dtype, device=like.device)
    u = u.clamp(1e-6, 1 - 1e-6)
    if kind == "logistic":  # Gumbel(0,1) - Gumbel(0,1) ~ Logistic(0,1) = log u - log(1-u)
        return torch.log(u) - torch.log1p(-u)
    return -torch.log(-torch.log(u))  # one Gumbel(0,1)


class CausalCLIPHead(Head):
    """Mask network + classifier h on Zc = M*E + adversary d on Znc = (1-M)*E (docs/method.md#pipeline)."""

    name = "causalclip"
    config_cls = CausalCLIPConfig

    def __init__(self, *, dim: int, config: CausalCLIPConfig) -> None:
        super().__init__(dim=dim, config=config)
        c = config
        self.uses_mask = c.factorization or c.adversarial_masking
        if self.uses_mask:
            self.mask_net = mlp(dim, c.mask_hidden, dim)
            last = self.mask_net[-1] if isinstance(self.mask_net, nn.Sequential) else self.mask_net
            nn.init.constant_(last.bias, c.mask_bias_init)
        self.h = mlp(dim, c.classifier_hidden, 1)
        if c.classifier_hidden <= 0:  # a linear h starts like UnivFD's probe, so ablation "none" is UnivFD
            nn.init.normal_(self.h.weight, 0.0, 0.02)
            nn.init.zeros_(self.h.bias)
        if c.adversarial_masking:
            self.d = mlp(dim, c.adversary_hidden, 1)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {}
        if self.config.adversarial_masking:
            groups["adversary"] = list(self.d.parameters())
        groups["classifier"] = list(self.h.parameters())
        if self.uses_mask:
            groups["mask"] = list(self.mask_net.parameters())
        return groups

    def mask(self, e: torch.Tensor, *, stochastic: bool) -> torch.Tensor:
        """M (B, d) in [0, 1]: sigmoid((MLP(E) + g) / tau) when ``stochastic``, else sigmoid(MLP(E) / tau)."""
        logits = self.mask_net(e)
        if stochastic:
            logits = logits + _sample_noise(logits.shape, self.config.noise, logits)
        return torch.sigmoid(logits / self.config.tau)

    def split(self, e: torch.Tensor, *, stochastic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(M, Zc, Znc), each (B, d). Without a mask (ablation "none") M is all ones."""
        m = self.mask(e, stochastic=stochastic) if self.uses_mask else torch.ones_like(e)
        return m, m * e, (1 - m) * e

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        _, zc, _ = self.split(e, stochastic=False)
        return self.h(zc).squeeze(-1)

    def _inv(self, h_logits: torch.Tensor, zc: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """L_inv = KL(h(Zc) || h(Zc * (1 - B))), keep = 1 - B (B, d)."""
        target = h_logits.detach() if self.config.kl_detach_target else h_logits
        return bernoulli_kl(target, self.h(zc * keep).squeeze(-1))

    def training_phases(self, e: torch.Tensor, y: torch.Tensor) -> Iterator[Phase]:
        c = self.config
        m, zc, znc = self.split(e, stochastic=True)  # the mask's forward pass, shared by all phases
        keep = None
        if c.adversarial_masking and c.beta > 0:
            keep = (torch.rand_like(zc) >= c.p).to(zc.dtype)  # 1 - B, B ~ Bernoulli(p)

        # 1) adversary d: recover y from Znc (detached: only d moves)
        if c.adversarial_masking:
            l_d = bce(self.d(znc.detach()).squeeze(-1), y)
            yield "adversary", l_d, {"adv": l_d}

        # 2) classifier h: L_cls + beta * L_inv on Zc (detached: only h moves)
        zc_d = zc.detach()
        h_logits = self.h(zc_d).squeeze(-1)
        l_cls = bce(h_logits, y)
        logs = {"cls": l_cls}
        loss = l_cls
        if keep is not None:
            l_inv = self._inv(h_logits, zc_d, keep)
            loss = loss + c.beta * l_inv
            logs["inv"] = l_inv
        yield "classifier", loss, logs

        if not self.uses_mask:
            return
        # 3) mask: L_total with the freshly updated h and d held fixed (only the mask group is stepped)
        raw: dict[str, torch.Tensor] = {}
        terms = self.mask_terms(m, zc, znc, y, keep, raw=raw)
        total = sum(terms.values())
        logs = {"total_cls": terms["cls"].detach(), "total": total.detach(), **{k: v.detach() for k, v in raw.items()}}
        yield "mask", total, logs

    def mask_terms(
        self,
        m: torch.Tensor,
        zc: torch.Tensor,
        znc: torch.Tensor,
        y: torch.Tensor,
        keep: torch.Tensor | None,
        *,
        raw: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The weighted terms of the mask's loss L_total (Eq. 13), by name; their sum is what the mask minimises.

        cls: L_cls; adv: -alpha L_adv ("paper") or alpha CE(d(Znc), 0.5) ("uniform"); inv: beta L_inv; l1: lambda1
        |M|_1; indep: lambda2 HSIC or nHSIC (Eq. 10). ``raw`` receives the unweighted l1 and independence values
        (keys ``l1`` and ``hsic`` or ``nhsic``) for the logs."""
        c = self.config
        h_logits = self.h(zc).squeeze(-1)
        terms = {"cls": bce(h_logits, y)}
        if c.adversarial_masking:
            d_logits = self.d(znc).squeeze(-1)
            terms["adv"] = -c.alpha * bce(d_logits, y) if c.adv_loss == "paper" else c.alpha * uniform_bce(d_logits)
            if keep is not None:
                terms["inv"] = c.beta * self._inv(h_logits, zc, keep)
        if c.factorization:
            l1, dep = mask_l1(m), self.independence(zc, znc)
            terms["l1"], terms["indep"] = c.lambda1 * l1, c.lambda2 * dep
            if raw is not None:
                raw.update({"l1": l1, c.independence: dep})
        return terms

    def independence(self, zc: torch.Tensor, znc: torch.Tensor) -> torch.Tensor:
        """The dependence of Zc and Znc that Eq. 10 penalises (unweighted): HSIC or normalised HSIC."""
        return nhsic(zc, znc) if self.config.independence == "nhsic" else hsic(zc, znc)

    def term_gradient_norms(self, e: torch.Tensor, y: torch.Tensor, *, seed: int = 0) -> dict[str, float]:
        """The L2 norm of the gradient that each weighted term of L_total sends to the mask network's parameters,
        on the batch (e, y), with the training-time noise and dropout drawn from ``seed`` (the global random state
        is left as it was). Tells whether a weight makes its term act: a term whose norm is orders of magnitude
        below L_cls's barely moves the mask."""
        if not self.uses_mask:
            return {}
        c = self.config
        params = list(self.mask_net.parameters())
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            m, zc, znc = self.split(e, stochastic=True)
            keep = (torch.rand_like(zc) >= c.p).to(zc.dtype) if c.adversarial_masking and c.beta > 0 else None
            terms = self.mask_terms(m, zc, znc, y, keep)
            out = {}
            for name, value in terms.items():
                if not value.requires_grad:  # e.g. nHSIC of a constant Znc (a saturated mask): no gradient at all
                    out[f"grad_{name}"] = 0.0
                    continue
                grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
                out[f"grad_{name}"] = float(
                    torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), e.new_zeros(())))
                )
        return out

    @torch.no_grad()
    def diagnostics(self, e: torch.Tensor, y: torch.Tensor, *, probe: bool) -> dict[str, Any]:
        """Mask statistics, HSIC(Zc, Znc) and how much of y is left in Znc, on held-out features."""
        if not self.uses_mask:
            return {}
        m, zc, znc = self.split(e, stochastic=False)
        sel = m > 0.5
        out: dict[str, Any] = {
            "mask_mean": m.mean().item(),
            "mask_frac_above_half": sel.float().mean().item(),
            "mask_dims_selected": int((sel.float().mean(0) > 0.5).sum().item()),
            "mask_dim_frequency": sel.float().mean(0).cpu().numpy(),
        }
        # HSIC (the paper's) and nHSIC as in training: mean over batches of 256 (at most 8 of them).
        starts = [i for i in range(0, min(len(e), 2048), 256) if len(e) - i >= 4]
        for name, fn in (("hsic", hsic), ("nhsic", nhsic)):
            vals = [fn(zc[i : i + 256], znc[i : i + 256]) for i in starts]
            out[name] = torch.stack(vals).mean().item() if vals else float("nan")
        out.update(self.term_gradient_norms(e[:256], y[:256]))
        if self.config.adversarial_masking:
            pred = (self.d(znc).squeeze(-1) > 0).long()
            out["adv_acc"] = (pred == y.long()).float().mean().item()
        if probe:
            from ..metrics.binary import probe_accuracy

            out["nc_probe_acc"] = probe_accuracy(znc.cpu().numpy(), y.cpu().numpy())
            out["c_probe_acc"] = probe_accuracy(zc.cpu().numpy(), y.cpu().numpy())
        return out
