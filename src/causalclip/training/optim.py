"""The optimiser and the learning rate of each epoch that a :class:`TrainConfig` names: one definition, used by the
training loop and checked by the tests against torch's own schedulers (docs/guides/training.md#optimiser-and-schedule).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .config import TrainConfig

__all__ = ["build_optimizer", "scheduled_lr"]


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``params`` at ``cfg.lr`` (the loop sets each epoch's lr on it before the epoch)."""
    if cfg.optimizer == "sgd":
        # Dassl's build_optimizer: dampening 0; weight decay is L2 added to the gradient, as in torch.optim.SGD
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def scheduled_lr(cfg: TrainConfig, epoch: int) -> float | None:
    """The learning rate of epoch ``epoch`` (1-based) under a fixed schedule; None under "plateau" (the
    :class:`~causalclip.training.selection.EpochSelector` decides it from the validation metric).

    Dassl (CoOp, CLIPping) builds ``CosineAnnealingLR(optimizer, T_max=MAX_EPOCH)``, wraps it in a constant warm-up
    of WARMUP_EPOCH epochs at WARMUP_CONS_LR with WARMUP_RECOUNT (the cosine starts from its own epoch 0 once the
    warm-up ends) and steps it once per epoch, after the epoch's last batch. So epoch e (1-based) trains at
    ``warmup_lr`` while e <= W, then at ``lr * (1 + cos(pi * (e - 1 - W) / epochs)) / 2``: the first epoch after the
    warm-up at the full lr, and the annealing (to 0 at T_max) cut off at the run's last epoch. Closed form: a pure
    function of the epoch, so nothing but the epoch number is needed to continue a schedule.
    """
    if epoch < 1:
        raise ValueError(f"epoch: counted from 1, got {epoch}")
    if cfg.lr_schedule == "plateau":
        return None
    if epoch <= cfg.warmup_epochs:
        return cfg.warmup_lr
    if cfg.lr_schedule == "constant":
        return cfg.lr
    k = epoch - 1 - cfg.warmup_epochs  # the cosine's own epoch counter, from 0 after the warm-up
    return cfg.lr * (1 + math.cos(math.pi * k / cfg.epochs)) / 2
