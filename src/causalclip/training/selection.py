"""Which epoch a run keeps, when it stops, and when its learning rate drops: one rule for every training loop
(heads on cached features and networks trained on images), documented in docs/method.md#model-selection."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["EpochSelector", "Verdict"]


@dataclass
class Verdict:
    """What the loop does after an epoch: keep its weights, stop, and/or continue at a new learning rate."""

    keep: bool  # this epoch is the best so far: save its weights
    stop: str | None = None  # the stop reason, when the run ends here
    new_lr: float | None = None  # the learning rate to continue with, when it drops on a plateau


@dataclass
class EpochSelector:
    """Model selection and early stopping on a validation metric.

    ``metric``: "ap" / "acc" (higher is better) or "loss" (lower is better). An epoch is eligible once
    ``min_epochs`` have run (a run shorter than that keeps its last epochs); among eligible epochs the best score
    wins and ties go to the later epoch (trained longer at the same validation score). After ``patience`` epochs
    without a strict improvement: stop, or with ``decay_on_plateau`` divide the learning rate by 10 and go on, until
    it falls below ``min_lr``. With ``early_stopping`` false (a fixed lr schedule, defined over all the epochs) it
    only keeps the best epoch: no stop, no lr drop. The state is a plain dict (:meth:`state_dict`), so a resumed run
    continues exactly.
    """

    metric: Literal["ap", "acc", "loss"]
    lr: float
    min_epochs: int = 1
    patience: int = 5
    max_epochs: int = 50
    decay_on_plateau: bool = True
    min_lr: float = 1e-6
    which: str = "val"  # how the validation data is named in stop reasons ("val", "held-out")
    early_stopping: bool = True  # False: train every epoch at the schedule's lr, only select the best
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    n_decays: int = 0

    def score(self, metrics: dict[str, float]) -> float:
        """The selection score of an epoch's validation ``metrics`` (higher is better)."""
        return -metrics["loss"] if self.metric == "loss" else metrics[self.metric]

    def current_lr(self, base_lr: float | None = None) -> float:
        """The plateau-decayed learning rate: ``lr / 10**n_decays`` (not repeated division, which drifts)."""
        return (self.lr if base_lr is None else base_lr) / 10**self.n_decays

    def update(self, epoch: int, metrics: dict[str, float]) -> Verdict:
        score = self.score(metrics)
        keep = False
        eligible = epoch >= min(self.min_epochs, self.max_epochs)
        if eligible and score >= self.best_score:
            improved = score > self.best_score
            self.best_score, self.best_epoch, keep = score, epoch, True
            self.bad_epochs = 0 if improved else self.bad_epochs + 1
        elif eligible:
            self.bad_epochs += 1
        if not self.early_stopping or self.bad_epochs < self.patience:
            return Verdict(keep)
        if not self.decay_on_plateau:
            return Verdict(keep, stop=f"no {self.which} {self.metric} improvement for {self.patience} epochs")
        self.n_decays += 1
        self.bad_epochs = 0
        lr = self.current_lr()
        if lr < self.min_lr * (1 - 1e-9):
            return Verdict(keep, stop=f"plateau with lr {lr:.1e} < min_lr {self.min_lr:.1e}")
        return Verdict(keep, new_lr=lr)

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("best_score", "best_epoch", "bad_epochs", "n_decays")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("best_score", "best_epoch", "bad_epochs", "n_decays"):
            setattr(self, k, type(getattr(self, k))(state[k]))
