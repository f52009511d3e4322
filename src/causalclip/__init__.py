"""CausalCLIP: causally disentangled CLIP features for detecting AI-generated images.

The public API, loaded on first use (``import causalclip`` itself imports no numerical library)::

    import causalclip as cc

    backbone = cc.load_backbone("openai/clip-vit-large-patch14")         # a hub id or a local CLIP folder
    listing = cc.list_samples("data/genimage", "genimage", split="train")
    cc.extract(listing.samples, root=listing.root, out="feats/train", backbone=backbone)
    run = cc.train(train_set="feats/train", val_set="feats/val", out="runs/cc", run_config=cc.resolve_run_config("causalclip"))
    result = cc.evaluate("runs/cc", ["feats/test"], out="evals/cc")
    detector = cc.load_detector("detectors/cc")                            # a folder from `causalclip export`
    detections = detector.score(["photo.jpg", pil_image, rgb_array])       # paths, PIL images or RGB arrays

docs/guides/python-api.md shows each call with its options. The package's stages (images -> backbones -> features
-> heads -> training -> evaluation -> detector -> detect / serve; paper and demo above; cli on top) are subpackages
whose imports only go downward.
"""

from __future__ import annotations

import importlib
from typing import Any

from .core.version import __version__

# public name -> the module that defines it
_API: dict[str, str] = {
    "load_backbone": "backbones.registry",
    "list_samples": "images.layouts",
    "load_rgb": "images.decode",
    "extract": "features.extract",
    "ExtractConfig": "features.job",
    "FeatureSet": "features.featureset",
    "open_feature_set": "features.featureset",
    "write_feature_set": "features.featureset",
    "HEADS": "heads.registry",
    "build_head": "heads.registry",
    "hsic": "heads.losses",
    "load_head": "heads.checkpoint",
    "predict": "heads.predict",
    "TrainConfig": "training.config",
    "RunConfig": "training.config",
    "resolve_run_config": "training.config",
    "train": "training.loop",
    "evaluate": "evaluation.evaluate",
    "load_detector": "detect.engine",
    "Detection": "detect.detection",
    # errors a caller may want to catch: each names the file or value at fault
    "BackboneError": "backbones.base",
    "CheckpointError": "heads.checkpoint",
    "ConfigError": "core.config",
    "DetectorError": "detector.folder",
    "ExtractError": "features.job",
    "FeatureSetError": "features.featureset",
    "ImageDecodeError": "images.decode",
    "MetricsError": "metrics.errors",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'causalclip' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
