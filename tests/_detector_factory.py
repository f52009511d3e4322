"""Tiny detector folders for the detect/serve/browser tests: a tiny CLIP saved like a real one, a head trained for
one epoch on features of that CLIP's dimension, exported with the public export function."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 32,
    "projection_dim": 16,
}


def save_tiny_clip(folder: Path, *, seed: int = 0, **vision) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**{**VISION, **vision})).save_pretrained(folder)
    return folder


def make_tiny_detector(root: Path, *, seed: int = 0, threshold: float | None = None) -> Path:
    """root/clip (the backbone), root/feats, root/run and root/detector; returns the detector folder."""
    from causalclip import resolve_run_config, train, write_feature_set
    from causalclip.backbones.registry import load_backbone
    from causalclip.detector.folder import export_detector_from_feature_set

    clip = save_tiny_clip(root / "clip", seed=seed)
    bb = load_backbone(str(clip), precision="fp32")
    rng = np.random.default_rng(seed)
    labels = np.arange(64) % 2
    x = rng.normal(size=(64, bb.dim)).astype(np.float32) + labels[:, None] * 0.5
    df = pd.DataFrame({"path": [f"{i}.png" for i in range(64)], "label": labels, "generator": "g"})
    meta = {"backbone": bb.describe(), "preprocessing": bb.preprocessing.to_dict(), "precision": "float32"}
    feats = write_feature_set(root / "feats", x, df, meta=meta)
    rc = resolve_run_config("univfd", overrides={"epochs": 1, "batch_size": 32, "lr": 1e-2, "seed": seed})
    train(train_set=feats, val_set=feats, out=root / "run", run_config=rc, progress=False)
    return export_detector_from_feature_set(root / "run", feats, root / "detector", threshold=threshold)


def write_image(path: Path, size: tuple[int, int], *, seed: int = 0, fmt: str | None = None) -> Path:
    """A random RGB image of (width, height) ``size``."""
    w, h = size
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path
