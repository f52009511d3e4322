"""VIB-Net (Zhang et al. 2025): a variational information bottleneck on the frozen features."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Head, Phase
from .losses import bce


@dataclasses.dataclass(frozen=True, kw_only=True)
class VIBConfig:
    """VIB-Net (Zhang et al. 2025) head as in its official inference code; beta_vib is a guess (docs/method.md#baselines)."""

    dropout: float = 0.5
    hidden: int = 1024
    bottleneck: int = 256
    beta_vib: float = 1e-3
    std_shift: float = 5.0  # std = softplus(raw - std_shift)


class VIBHead(Head):
    """Dropout -> d->1024 -> ReLU -> 1024->1024 -> ReLU -> 1024->2k; mu, std = split; Linear(k, 1) on z.

    Training samples z = mu + eps * std; prediction uses mu (the official code samples at test time too).
    """

    name = "vib"
    config_cls = VIBConfig

    def __init__(self, *, dim: int, config: VIBConfig) -> None:
        super().__init__(dim=dim, config=config)
        c = config
        self.encoder = nn.Sequential(
            nn.Dropout(c.dropout),
            nn.Linear(dim, c.hidden),
            nn.ReLU(),
            nn.Linear(c.hidden, c.hidden),
            nn.ReLU(),
            nn.Linear(c.hidden, 2 * c.bottleneck),
        )
        self.fc = nn.Linear(c.bottleneck, 1)

    def encode(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, std), each (B, k)."""
        out = self.encoder(e)
        k = self.config.bottleneck
        return out[:, :k], F.softplus(out[:, k:] - self.config.std_shift)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(e)
        return self.fc(mu).squeeze(-1)

    def training_phases(self, e: torch.Tensor, y: torch.Tensor) -> Iterator[Phase]:
        mu, std = self.encode(e)
        z = mu + torch.randn_like(std) * std
        l_cls = bce(self.fc(z).squeeze(-1), y)
        # KL(N(mu, std^2) || N(0, I)), summed over the bottleneck, mean over the batch (nats)
        kl = 0.5 * (mu.pow(2) + std.pow(2) - 1.0 - 2.0 * torch.log(std.clamp_min(1e-12))).sum(1).mean()
        yield "classifier", l_cls + self.config.beta_vib * kl, {"cls": l_cls, "kl": kl}

    @torch.no_grad()
    def diagnostics(self, e: torch.Tensor, y: torch.Tensor, *, probe: bool) -> dict[str, Any]:
        _, std = self.encode(e)
        return {"vib_mean_std": std.mean().item()}
