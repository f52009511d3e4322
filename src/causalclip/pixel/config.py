"""What a run of a network trained on images is configured by: the method's published recipe (networks.Recipe),
the network's architecture config, and the loop's own settings; layered defaults <- config file <- overrides."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..core.config import ConfigError, config_from_dict, config_to_dict, load_config_file, parse_override
from ..networks.registry import NETWORKS, Recipe, get_network_method

__all__ = ["PixelLoopConfig", "PixelRunConfig", "resolve_pixel_config"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PixelLoopConfig:
    """Settings of the loop that are not part of a method's recipe (which gives batch, lr, epochs, augmentation).

    Selection and early stopping follow the same rule as heads (training.selection): the best validation
    ``early_stop_metric`` after ``min_epochs``, ties to the later epoch; ``patience`` epochs without improvement
    stop the run, unless the recipe decays the learning rate on a plateau (CNNSpot).
    """

    early_stop_metric: Literal["ap", "acc", "loss"] = "acc"  # CNNSpot's early stopping watches validation accuracy
    min_epochs: int = 1
    patience: int = 5
    val_max_samples: int = 0  # validation on at most this many images (seeded, class-balanced subset); 0 = all
    seed: int = 0
    device: str = "cpu"
    # Data loading: worker processes decoding and augmenting images (0: in the training process).
    workers: int = 2
    # Micro-batches per optimiser step (gradient accumulation); DDP ranks split each micro-batch's images.
    grad_accum: int = 1
    # Mixed precision: "auto" = bf16 autocast on CUDA when supported (else fp16 with a grad scaler), none on CPU.
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    # A resumable checkpoint each epoch, and also every N optimiser steps inside an epoch (0 = epochs only).
    checkpoint_every: int = 0
    # torch.set_num_threads for the run; 0 = leave torch's default.
    num_threads: int = 0
    # ImageNet weights for methods whose authors start from them (CNNSpot): a torchvision ResNet-50 file
    # (resnet50-*.pth, read with weights_only) or null = start from scratch (recorded in the run and detector).
    imagenet_weights: str | None = None

    def validate(self) -> None:
        for name in ("min_epochs", "patience", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("val_max_samples", "workers", "checkpoint_every", "num_threads", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")


def _validate_recipe(r: Recipe) -> None:
    for name in ("batch_size", "epochs", "train_crop", "test_crop"):
        if getattr(r, name) < 1:
            raise ValueError(f"recipe.{name}: must be at least 1, got {getattr(r, name)}")
    if not r.lr > 0:
        raise ValueError(f"recipe.lr: must be > 0, got {r.lr}")
    for name in ("blur_prob", "jpeg_prob"):
        if not 0 <= getattr(r, name) <= 1:
            raise ValueError(f"recipe.{name}: must be a probability, got {getattr(r, name)}")


@dataclass(frozen=True)
class PixelRunConfig:
    """The fully resolved configuration of one run: method, architecture, recipe and loop settings."""

    method: str
    network: Any  # the method's architecture config (a frozen dataclass)
    recipe: Recipe
    train: PixelLoopConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            self.method: config_to_dict(self.network),
            "recipe": config_to_dict(self.recipe),
            "train": config_to_dict(self.train),
        }


def resolve_pixel_config(
    method: str,
    *,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | dict[str, Any] = (),
    other_methods: bool = False,
) -> PixelRunConfig:
    """Layer the method's defaults <- config file <- overrides into a :class:`PixelRunConfig`.

    A config file (JSON or TOML) has sections ``recipe`` (Recipe keys: batch_size, lr, epochs, train_crop, ...),
    ``train`` (PixelLoopConfig keys) and one per method name (its architecture config); sections of other methods
    and of heads are ignored, so one file can serve several methods. Overrides are ``key=value``:
    ``recipe.lr=1e-4``, ``train.workers=4``, ``npr.layers=[1, 1]``, or a bare key of any of the three. A key of
    another method (``cnnspot.stem_width=8`` when resolving npr) is an error, or with ``other_methods`` skipped, so
    that one list can serve several methods (``experiment --network-set``).
    """
    spec = get_network_method(method)
    sections: dict[str, dict[str, Any]] = {"recipe": {}, "train": {}, method: {}}
    if config_file is not None:
        data = load_config_file(config_file)
        for key in ("recipe", "train", method):
            if key in data:
                if not isinstance(data[key], dict):
                    raise ConfigError(f"{config_file}: [{key}] must be a table/object")
                sections[key].update(data[key])
    classes = {"recipe": Recipe, "train": PixelLoopConfig, method: spec.config_cls}
    fields = {k: {f.name for f in dataclasses.fields(c)} for k, c in classes.items()}
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        parts = key.split(".") if isinstance(key, str) else list(key)
        if len(parts) == 2 and parts[0] in sections:
            sections[parts[0]][parts[1]] = value
            continue
        if len(parts) == 2 and parts[0] in NETWORKS and other_methods:  # one override list serving several methods
            continue
        if len(parts) == 2 and parts[0] in NETWORKS:
            raise ConfigError(f"override {'.'.join(parts)!r}: a key of {parts[0]!r}, but this run trains {method!r}")
        owners = [k for k in sections if len(parts) == 1 and parts[0] in fields[k]]
        if len(owners) != 1:
            raise ConfigError(
                f"override {'.'.join(parts)!r}: "
                + ("ambiguous, prefix it with one of " + str(owners) if owners else "not a known key")
                + "; "
                + "; ".join(f"{k}: {sorted(v)}" for k, v in fields.items())
            )
        sections[owners[0]][parts[0]] = value
    where = f"{config_file}: " if config_file is not None else ""
    recipe_d = {**config_to_dict(spec.recipe), **sections["recipe"]}
    recipe = config_from_dict(Recipe, recipe_d, where=f"{where}recipe: ")
    try:
        _validate_recipe(recipe)
    except ValueError as exc:
        raise ConfigError(f"{where}{exc}") from exc
    return PixelRunConfig(
        method=method,
        network=config_from_dict(spec.config_cls, sections[method], where=f"{where}{method}: "),
        recipe=recipe,
        train=config_from_dict(PixelLoopConfig, sections["train"], where=f"{where}train: "),
    )


def is_network(name: str) -> bool:
    """Whether ``name`` is a network trained on images (as opposed to a head on cached features)."""
    return name in NETWORKS
