"""UnivFD (Ojha et al. 2023): a linear probe on the frozen features."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from types import MappingProxyType

import torch
from torch import nn

from .base import Head, Phase
from .losses import bce


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearProbeConfig:
    """UnivFD (Ojha et al. 2023): one linear layer on E, weights N(0, init_std)."""

    init_std: float = 0.02


class LinearProbeHead(Head):
    name = "univfd"
    config_cls = LinearProbeConfig
    train_recipe = MappingProxyType({"optimizer": "adamw"})  # UnivFD's code; the rest: the loop's defaults

    def __init__(self, *, dim: int, config: LinearProbeConfig) -> None:
        super().__init__(dim=dim, config=config)
        self.fc = nn.Linear(dim, 1)
        nn.init.normal_(self.fc.weight, 0.0, config.init_std)
        nn.init.zeros_(self.fc.bias)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.fc(e).squeeze(-1)

    def training_phases(self, e: torch.Tensor, y: torch.Tensor) -> Iterator[Phase]:
        loss = bce(self(e), y)
        yield "classifier", loss, {"cls": loss}
