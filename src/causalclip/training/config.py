"""What a training run is configured by: the generic training settings, the head's config, and their layering
(defaults <- config file <- command line overrides)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..core.config import ConfigError, config_from_dict, config_to_dict, load_config_file, parse_override
from ..heads.causalclip import ABLATIONS
from ..heads.registry import HEADS


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything the training loop needs that is not specific to one head.

    Defaults follow the paper (Adam, lr 1e-4, batch 256) and UnivFD's early stopping (patience 5 on the
    validation metric, lr / 10 on a plateau, stop once lr < min_lr).
    """

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    seed: int = 0
    # Validation metric for early stopping and for choosing the saved epoch. "loss" (validation BCE, lower is
    # better) keeps discriminating after AP saturates near 1 on the training generator.
    early_stop_metric: Literal["ap", "acc", "loss"] = "ap"
    # The saved epoch is never earlier than this, and early stopping cannot end the run before it: in-distribution
    # validation AP often saturates in the first epoch or two, before CausalCLIP's adversarial game has run
    # (docs/method.md#departures-from-the-paper). Ties go to the later epoch.
    min_epochs: int = 5
    patience: int = 5
    lr_decay_on_plateau: bool = True
    min_lr: float = 1e-6
    # Validation runs on at most this many samples (a seeded, class-balanced subset); 0 = all.
    val_max_samples: int = 0
    # Fit a fresh logistic probe on the held-out non-causal features every N epochs (0 = only after training).
    nc_probe_every: int = 1
    device: str = "cpu"
    # torch.set_num_threads for the run; 0 = leave torch's default.
    num_threads: int = 0

    def validate(self) -> None:
        """Ranges the types cannot express (called by config_from_dict; errors name the key)."""
        for name in ("epochs", "batch_size", "patience", "min_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("val_max_samples", "nc_probe_every", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.min_lr < 0:
            raise ValueError(f"weight_decay and min_lr must be >= 0, got {self.weight_decay} and {self.min_lr}")


@dataclass(frozen=True)
class RunConfig:
    """The fully resolved configuration of one training run."""

    head: str
    train: TrainConfig
    head_config: Any

    def to_dict(self) -> dict[str, Any]:
        return {"head": self.head, "train": config_to_dict(self.train), self.head: config_to_dict(self.head_config)}


def resolve_run_config(
    head: str,
    *,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | dict[str, Any] = (),
    ablation: str | None = None,
) -> RunConfig:
    """Layer defaults <- config file <- ablation preset <- overrides into a :class:`RunConfig`.

    A config file (JSON or TOML) has a ``train`` section (TrainConfig keys) and one section per head name
    (``causalclip``, ``univfd``, ``vib``); sections of other heads are ignored, so one file can serve all heads.
    Overrides are ``key=value`` strings (or a dict): ``train.epochs=3``, ``causalclip.tau=0.5``, or a bare key
    that names a field of TrainConfig or of the selected head's config.
    """
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; available: {sorted(HEADS)}")
    head_cls = HEADS[head]
    train_d: dict[str, Any] = {}
    head_d: dict[str, Any] = {}
    if config_file is not None:
        data = load_config_file(config_file)
        unknown = sorted(set(data) - {"train", *HEADS})
        if unknown:
            raise ConfigError(f"{config_file}: unknown section(s) {unknown}; expected 'train' and/or {sorted(HEADS)}")
        train_d.update(data.get("train", {}))
        head_d.update(data.get(head, {}))
        where = f"{config_file}: "
        config_from_dict(TrainConfig, train_d, where=where + "[train] ")  # validate the file on its own first
        config_from_dict(head_cls.config_cls, head_d, where=f"{where}[{head}] ")
    if ablation is not None:
        if head != "causalclip":
            raise ConfigError(f"--ablation applies to the causalclip head, not {head!r}")
        if ablation not in ABLATIONS:
            raise ConfigError(f"unknown ablation {ablation!r}; available: {sorted(ABLATIONS)}")
        head_d.update(ABLATIONS[ablation])
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    head_fields = {f.name for f in dataclasses.fields(head_cls.config_cls)}
    for key, value in items:
        parts = key.split(".") if isinstance(key, str) else list(key)
        if len(parts) == 2 and parts[0] == "train":
            train_d[parts[1]] = value
        elif len(parts) == 2 and parts[0] == head:
            head_d[parts[1]] = value
        elif len(parts) == 1 and parts[0] in train_fields:
            train_d[parts[0]] = value
        elif len(parts) == 1 and parts[0] in head_fields:
            head_d[parts[0]] = value
        else:
            raise ConfigError(
                f"override {'.'.join(parts)!r}: not a field of the train config or of the {head!r} head; "
                f"train: {sorted(train_fields)}; {head}: {sorted(head_fields)}"
            )
    return RunConfig(
        head=head,
        train=config_from_dict(TrainConfig, train_d, where="train config: "),
        head_config=config_from_dict(head_cls.config_cls, head_d, where=f"{head} config: "),
    )
