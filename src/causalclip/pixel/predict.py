"""Scoring image sets with a network: centre crop without resize (the paper's test-time preprocessing)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..images.transforms import Preprocessing
from .data import ImageSet, iterate_batches

__all__ = ["ImageScores", "predict_images"]


@dataclass
class ImageScores:
    positions: np.ndarray  # (k,) positions in the image set that were scored
    scores: np.ndarray  # (k,) probabilities of fake, float64
    errors: list[tuple[int, str]]  # (position, reason) of the images that could not be used


@torch.no_grad()
def predict_images(
    network: nn.Module,
    images: ImageSet,
    preprocessing: Preprocessing,
    *,
    indices: np.ndarray | None = None,
    batch_size: int = 32,
    workers: int = 0,
    device: str | torch.device = "cpu",
    autocast: torch.dtype | None = None,
) -> ImageScores:
    """Probabilities of fake for the images ``indices`` of ``images`` (all by default), in order."""
    was_training = network.training
    network.eval()
    idx = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    device = torch.device(device)
    positions, scores, errors = [], [], []
    for batch in iterate_batches(images, chunks, preprocessing, workers=workers, pin_memory=device.type == "cuda"):
        errors += batch.errors
        if len(batch.index) == 0:
            continue
        x = batch.x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            logits = network(x)
        scores.append(torch.sigmoid(logits.float()).cpu().numpy().astype(np.float64))
        positions.append(batch.index)
    network.train(was_training)
    if not positions:
        return ImageScores(np.empty(0, np.int64), np.empty(0), errors)
    return ImageScores(np.concatenate(positions), np.concatenate(scores), errors)
