"""What every head is: an ``nn.Module`` from features (B, d) to logits of "fake" (B,), with named parameter groups
(one optimiser each) and a generator of ``(group, loss, logs)`` training phases, so the training loop stays generic."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

# (group name, loss to minimise for that group's parameters, scalars to log)
Phase = tuple[str, torch.Tensor, dict[str, torch.Tensor]]


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Module:
    """Linear when ``hidden`` is 0, otherwise Linear -> ReLU -> Linear."""
    if hidden <= 0:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class Head(nn.Module):
    """Base class: ``forward`` gives inference logits; training goes through ``training_phases``."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    # True for heads built on the backbone that made the training set (CLIPping's text tower): build_head then passes
    # the training FeatureSet as ``feature_set=`` (None when loading a saved head)
    uses_feature_set: ClassVar[bool] = False
    # The training settings the method was published with, as TrainConfig keys (training.config.TrainConfig) over
    # its defaults: optimiser, lr schedule, batch size, epochs. Empty: the defaults (Adam, lr 1e-4, plateau).
    # A config file or --set still wins over it (training.config.resolve_run_config).
    train_recipe: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def __init__(self, *, dim: int, config: Any) -> None:
        super().__init__()
        self.dim = dim
        self.config = config

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named, disjoint parameter groups; each gets its own optimiser."""
        return {"classifier": list(self.parameters())}

    def training_phases(self, e: torch.Tensor, y: torch.Tensor) -> Iterator[Phase]:
        """Yield the phases of one training step on batch (e (B, d), y (B,)); the caller steps each group."""
        raise NotImplementedError

    @torch.no_grad()
    def diagnostics(self, e: torch.Tensor, y: torch.Tensor, *, probe: bool) -> dict[str, Any]:
        """Head-specific statistics on held-out features (scalars, or arrays for per-dimension values)."""
        return {}


def count_parameters(module: nn.Module) -> int:
    return int(sum(np.prod(p.shape) for p in module.parameters() if p.requires_grad))
