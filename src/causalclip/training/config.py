"""What a training run is configured by: the generic training settings (optimiser, lr schedule, early stopping), the
head's config, and their layering (defaults <- the head's recipe <- config file <- command line overrides)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..core.config import ConfigError, config_from_dict, config_to_dict, load_config_file, parse_override
from ..heads.causalclip import ABLATIONS
from ..heads.registry import HEADS, LEGACY_CONFIG_KEYS

log = logging.getLogger("causalclip")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything the training loop needs that is not specific to one head.

    Defaults follow the paper (Adam, lr 1e-4, batch 256) and UnivFD's early stopping (patience 5 on the
    validation metric, lr / 10 on a plateau, stop once lr < min_lr). A head whose method was published with
    another recipe declares it (``Head.train_recipe``: CLIPping's SGD + cosine), layered over these defaults by
    :func:`resolve_run_config`. This is the one place that says which optimiser a run uses.
    """

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-4
    # Every parameter group of the head gets one optimiser of this kind (torch.optim.Adam / AdamW / SGD).
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0  # L2 added to the gradient (Adam, SGD); decoupled decay for AdamW
    momentum: float = 0.9  # SGD only (Dassl's default; dampening 0)
    nesterov: bool = False  # SGD only; needs momentum > 0
    # How the learning rate moves between epochs. "plateau": lr / 10 after `patience` epochs without improvement
    # and early stopping (below). "cosine": CosineAnnealingLR(T_max=epochs) stepped once per epoch, as Dassl
    # (CoOp) runs it; "constant": lr throughout. Both fixed schedules train all `epochs` (no early stopping; the
    # saved epoch is still the best on the validation metric from `min_epochs` on).
    lr_schedule: Literal["plateau", "cosine", "constant"] = "plateau"
    # Dassl's "constant" warm-up: the first `warmup_epochs` epochs run at `warmup_lr`, then the schedule starts
    # from its own epoch 0 (WARMUP_RECOUNT, Dassl's default). Fixed schedules only.
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
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
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum: must be in [0, 1), got {self.momentum}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ValueError(
                f"nesterov: needs optimizer 'sgd' with momentum > 0, got optimizer {self.optimizer!r} and "
                f"momentum {self.momentum}"
            )
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs: must be >= 0, got {self.warmup_epochs}")
        if self.warmup_epochs > 0 and self.lr_schedule == "plateau":
            raise ValueError(
                "warmup_epochs: a warm-up needs a fixed schedule (lr_schedule 'cosine' or 'constant'); the "
                "'plateau' schedule lowers the lr from the validation metric instead"
            )
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError(
                f"warmup_epochs: {self.warmup_epochs} warm-up epoch(s) at warmup_lr {self.warmup_lr:g} leave none of "
                f"the {self.epochs} epoch(s) to the {self.lr_schedule} schedule; train more epochs or set "
                "train.warmup_epochs=0"
            )
        if not self.warmup_lr > 0:
            raise ValueError(f"warmup_lr: must be > 0, got {self.warmup_lr}")

    @property
    def early_stopping(self) -> bool:
        """Only the plateau schedule stops early: a fixed schedule is defined over all its epochs."""
        return self.lr_schedule == "plateau"


@dataclass(frozen=True)
class RunConfig:
    """The fully resolved configuration of one training run."""

    head: str
    train: TrainConfig
    head_config: Any

    def to_dict(self) -> dict[str, Any]:
        return {"head": self.head, "train": config_to_dict(self.train), self.head: config_to_dict(self.head_config)}


def head_recipe(head: str) -> dict[str, Any]:
    """The training settings head ``head``'s method was published with (``Head.train_recipe``: TrainConfig keys
    over TrainConfig's defaults); {} for a head trained with the defaults."""
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; available: {sorted(HEADS)}")
    return dict(getattr(HEADS[head], "train_recipe", {}))


# Head-config keys that became TrainConfig keys: ``optimizer`` was a field of every head's config until the
# optimiser moved to ``train.optimizer`` (the one place a run's optimiser is named). In a config file's head section
# or a ``HEAD.optimizer=`` override it is read as ``train.optimizer``; docs/guides/training.md#optimiser-and-schedule.
MOVED_TO_TRAIN = LEGACY_CONFIG_KEYS
# TrainConfig keys added with the optimiser/schedule options; a run recorded before them trained as their defaults
# say (Adam ignores momentum/nesterov; the loop had only the plateau schedule and no warm-up).
_ADDED_WITH_SCHEDULES = ("momentum", "nesterov", "lr_schedule", "warmup_epochs", "warmup_lr")


def recorded_sections(run_info: dict[str, Any], head: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``train`` and head sections of a run.json as this version records them, so that a run recorded before
    the optimiser moved to ``train.optimizer`` compares equal to the same run configured today."""
    train = dict(run_info.get("train") or {})
    head_cfg = dict(run_info.get(head) or {})
    for key in MOVED_TO_TRAIN:
        if key in head_cfg:
            train.setdefault(key, head_cfg.pop(key))
    if train:
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        for key in _ADDED_WITH_SCHEDULES:
            train.setdefault(key, defaults[key])
    return train, head_cfg


def _move_to_train(head_d: dict[str, Any], train_d: dict[str, Any], where: str) -> None:
    """Read a head section's legacy ``optimizer`` as ``train.optimizer`` (an error when both disagree)."""
    for key in MOVED_TO_TRAIN:
        if key not in head_d:
            continue
        value = head_d.pop(key)
        if key in train_d and train_d[key] != value:
            raise ConfigError(
                f"{where}{key!r} is set to {value!r} in the head's section and to {train_d[key]!r} in the train "
                f"section; the optimiser is a train setting now: keep only train.{key}"
            )
        train_d[key] = value
        log.info("%s%s=%r in a head section is read as train.%s", where, key, value, key)


def resolve_run_config(
    head: str,
    *,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | dict[str, Any] = (),
    ablation: str | None = None,
) -> RunConfig:
    """Layer defaults <- the head's recipe <- config file <- ablation preset <- overrides into a :class:`RunConfig`.

    The head's recipe (:func:`head_recipe`) replaces TrainConfig defaults where the method's authors trained
    otherwise (``clipping``: SGD, cosine, batch 16, 2 epochs); anything in a config file or override wins over it.
    A config file (JSON or TOML) has a ``train`` section (TrainConfig keys) and one section per head name
    (``causalclip``, ``univfd``, ``vib``, ...); sections of other heads are ignored, so one file can serve all
    heads. Overrides are ``key=value`` strings (or a dict): ``train.epochs=3``, ``causalclip.tau=0.5``, or a bare
    key that names a field of TrainConfig or of the selected head's config. A head section's ``optimizer`` (before
    it moved to ``train.optimizer``) is read as ``train.optimizer``.
    """
    recipe = head_recipe(head)
    head_cls = HEADS[head]
    where_recipe = f"the {head!r} head's train_recipe: "
    config_from_dict(TrainConfig, recipe, where=where_recipe)  # a broken recipe is the head's fault, said so
    train_d: dict[str, Any] = dict(recipe)
    head_d: dict[str, Any] = {}
    if config_file is not None:
        data = load_config_file(config_file)
        unknown = sorted(set(data) - {"train", *HEADS})
        if unknown:
            raise ConfigError(f"{config_file}: unknown section(s) {unknown}; expected 'train' and/or {sorted(HEADS)}")
        where = f"{config_file}: "
        file_train, file_head = data.get("train", {}), data.get(head, {})
        if not isinstance(file_train, dict) or not isinstance(file_head, dict):
            raise ConfigError(f"{where}the [train] and [{head}] sections must be tables (mappings)")
        file_train, file_head = dict(file_train), dict(file_head)
        _move_to_train(file_head, file_train, f"{where}[{head}] ")
        train_d.update(file_train)
        head_d.update(file_head)
        config_from_dict(TrainConfig, train_d, where=where + "[train] ")  # validate the file (over the recipe)
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
        elif len(parts) == 2 and parts[0] == head and parts[1] in MOVED_TO_TRAIN and parts[1] not in head_fields:
            train_d[parts[1]] = value
            log.info("override %s=%r is read as train.%s", ".".join(parts), value, parts[1])
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
