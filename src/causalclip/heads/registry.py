"""The one place heads are selected by name (``--head NAME``, ``build_head``), and Table 5's ablations."""

from __future__ import annotations

from typing import Any

from ..core.config import config_from_dict
from ..features.featureset import FeatureSet
from .base import Head
from .causalclip import CausalCLIPHead
from .clipping import ClippingHead, ClippingLinearProbeHead
from .linear import LinearProbeHead
from .vib import VIBHead

__all__ = ["DEFAULT_HEAD", "HEADS", "LEGACY_CONFIG_KEYS", "build_head", "register_head"]

HEADS: dict[str, type[Head]] = {}
DEFAULT_HEAD = "causalclip"  # the method this toolkit implements; UnivFD and VIB-Net are its baselines
# Keys of saved head configs that are no longer head settings (now TrainConfig's): ignored when a head is built
# from a dict (a saved config.json). training.config reads them as train settings in config files.
LEGACY_CONFIG_KEYS = ("optimizer",)


def register_head(cls: type[Head]) -> type[Head]:
    """Make a head selectable by its ``name``; usable as a class decorator for heads of your own."""
    if cls.name in HEADS:
        raise ValueError(f"head {cls.name!r} registered twice")
    HEADS[cls.name] = cls
    return cls


for _cls in (CausalCLIPHead, LinearProbeHead, VIBHead, ClippingHead, ClippingLinearProbeHead):
    register_head(_cls)


def build_head(name: str, *, dim: int, config: Any = None, feature_set: FeatureSet | None = None) -> Head:
    """Instantiate the registered head ``name`` for d = ``dim`` features; ``config`` is its config or a dict.

    ``feature_set``: the training set, passed to heads built on the backbone that made it (``uses_feature_set``:
    CLIPping loads that CLIP's text tower); None when loading a saved head. Other heads ignore it.

    A dict config may hold ``optimizer``: every head's config had it until the optimiser became a training setting
    (``train.optimizer``), so heads saved before then carry it in config.json. It said how the head was trained,
    not what it computes, and is dropped here (:data:`LEGACY_CONFIG_KEYS`).
    """
    if name not in HEADS:
        raise KeyError(f"unknown head {name!r}; available: {sorted(HEADS)}")
    cls = HEADS[name]
    if config is None:
        config = cls.config_cls()
    elif isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in LEGACY_CONFIG_KEYS}
        config = config_from_dict(cls.config_cls, config, where=f"head {name}: ")
    elif not isinstance(config, cls.config_cls):
        raise TypeError(f"head {name!r} expects a {cls.config_cls.__name__}, got {type(config).__name__}")
    if cls.uses_feature_set:
        return cls(dim=dim, config=config, feature_set=feature_set)
    return cls(dim=dim, config=config)
