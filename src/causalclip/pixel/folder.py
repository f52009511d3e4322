"""Networks trained on images, on disk: ``config.json`` + ``model.safetensors``, like heads, never a pickle.

``config.json`` names the method, its architecture config, the test-time preprocessing (centre crop without
resize, the recipe's mean/std) and how the weights were initialised, so that a run folder, a detector folder or
an imported authors' checkpoint is self-describing::

    {"format_version": 1, "kind": "network", "network": "npr", "network_config": {...},
     "preprocessing": {"mode": "crop", "size": 224, "mean": [...], "std": [...]},
     "init": {"method": "scratch" | "imagenet" | "checkpoint", ...}, "threshold": 0.5, "provenance": {...}}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..core.config import ConfigError, config_to_dict
from ..core.io import atomic_write, read_json
from ..heads.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, read_saved_folder, read_weights
from ..images.transforms import Preprocessing
from ..networks.registry import build_network, get_network_method

__all__ = ["LoadedNetwork", "is_network_folder", "load_network", "raw_image_network", "save_network"]

FORMAT_VERSION = 1


@dataclass
class LoadedNetwork:
    network: nn.Module  # in eval mode; (n, 3, S, S) normalised pixels -> (n,) logits
    info: dict[str, Any]  # the parsed config.json

    @property
    def method(self) -> str:
        return str(self.info["network"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.info["preprocessing"])

    @property
    def threshold(self) -> float:
        return float(self.info.get("threshold", 0.5))


def save_network(
    folder: str | os.PathLike[str],
    network: nn.Module,
    *,
    method: str,
    config: Any,
    preprocessing: Preprocessing,
    init: dict[str, Any],
    threshold: float = 0.5,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``network`` to ``folder`` as config.json + model.safetensors (both atomically; config last)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "format_version": FORMAT_VERSION,
        "kind": "network",
        "network": method,
        "network_config": config_to_dict(config),
        "preprocessing": preprocessing.to_dict(),
        "init": init,
        "threshold": threshold,
        **(extra or {}),
    }
    module = network.module if hasattr(network, "module") else network  # unwrap DDP
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(
        folder / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt", "network": method})
    )
    text = json.dumps(info, indent=2, sort_keys=True) + "\n"
    atomic_write(folder / CONFIG_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    return folder


def is_network_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder``'s config.json describes a network trained on images (not a head on features)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return False
    try:
        info = read_json(path)
    except ValueError:
        return False
    return isinstance(info, dict) and info.get("kind") == "network"


def load_network(folder: str | os.PathLike[str], *, device: str = "cpu") -> LoadedNetwork:
    """Load a network saved by :func:`save_network` (a run, detector or imported-checkpoint folder), in eval mode."""
    cfg_path, w_path, info = read_saved_folder(
        folder, advice="Import an authors' checkpoint with `causalclip import-checkpoint`."
    )
    if info.get("kind") != "network":
        raise CheckpointError(f'{cfg_path}: not a network\'s config (no "kind": "network")')
    for key in ("network", "network_config", "preprocessing"):
        if key not in info:
            raise CheckpointError(f"{cfg_path}: missing key {key!r}")
    try:
        get_network_method(info["network"])
        network = build_network(info["network"], info["network_config"])
        Preprocessing.from_dict(info["preprocessing"])
    except (KeyError, ValueError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{cfg_path}: {exc}") from exc
    state = read_weights(w_path)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{w_path}: weights do not match the network in {CONFIG_NAME}: {exc}") from exc
    network.to(torch.device(device)).eval()
    return LoadedNetwork(network=network, info=info)


def raw_image_network(method: str, network: nn.Module) -> tuple[nn.Module, Any]:
    """``network`` as it must be to score raw images, and its config: the same network, or, for a method whose
    training may read a cached transform of the images (LGrad's gradient maps: ``NetworkMethod.detector_config``),
    the same weights in the configuration that applies the transform inside the network."""
    to_raw = getattr(get_network_method(method), "detector_config", None)
    config = getattr(network, "config", None)
    raw = to_raw(config) if to_raw is not None and config is not None else config
    if raw == config:
        return network, config
    out = build_network(method, raw)
    out.load_state_dict(network.state_dict())
    return out.to(next(network.parameters()).device).eval(), raw
