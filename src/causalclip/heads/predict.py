"""Scoring cached features with a head, batch by batch, and the meta.json keys that say how features were made."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..features.featureset import FeatureSet
from .base import Head

# Keys of meta.json that describe how features were made; train and val must agree on them.
FEATURE_KEYS = ("backbone", "preprocessing", "feature", "perturbation")


def feature_description(fs: FeatureSet) -> dict[str, Any]:
    """The parts of meta.json that say how the vectors were made (backbone, preprocessing, ...)."""
    return {k: fs.meta[k] for k in FEATURE_KEYS if k in fs.meta}


@torch.no_grad()
def predict(
    head: Head, fs: FeatureSet, *, indices: np.ndarray | None = None, batch_size: int = 8192, device: str = "cpu"
) -> np.ndarray:
    """Probabilities of fake, (n,) float64, for the rows ``indices`` of ``fs`` (all rows by default)."""
    was_training = head.training
    head.eval()
    idx = np.arange(len(fs)) if indices is None else np.asarray(indices)
    out = np.empty(len(idx), dtype=np.float64)
    for i in range(0, len(idx), batch_size):
        x = torch.from_numpy(fs.take(idx[i : i + batch_size]).astype(np.float32, copy=False)).to(device)
        out[i : i + batch_size] = torch.sigmoid(head(x).float()).cpu().numpy()
    head.train(was_training)
    return out
