"""Trained heads on disk: ``config.json`` + ``model.safetensors``, and nothing that could be unpickled.

``config.json`` names the head, its full config, the feature dimension, the decision threshold and what the
features must be (backbone and preprocessing from the training set's meta.json), so that a folder is
self-describing. Loading never calls ``torch.load``/``pickle``: a folder whose weights are in any other format
is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..core.config import config_to_dict
from ..core.io import atomic_write, read_json
from .base import Head
from .registry import build_head

__all__ = ["CheckpointError", "LoadedHead", "load_head", "read_saved_folder", "read_weights", "save_head"]

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib", ".npz"}


class CheckpointError(ValueError):
    """A head folder is missing, unsafe or inconsistent; the message names the file."""


@dataclass
class LoadedHead:
    head: Head
    info: dict[str, Any]  # the parsed config.json

    @property
    def threshold(self) -> float:
        return float(self.info.get("threshold", 0.5))


def save_head(folder: str | os.PathLike[str], head: Head, *, threshold: float = 0.5, extra: dict | None = None) -> Path:
    """Write ``head`` to ``folder`` as config.json + model.safetensors (both atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "format_version": FORMAT_VERSION,
        "head": head.name,
        "head_config": config_to_dict(head.config),
        "dim": head.dim,
        "threshold": threshold,
        **(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    atomic_write(
        folder / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt", "head": head.name})
    )
    text = json.dumps(info, indent=2, sort_keys=True) + "\n"
    atomic_write(folder / CONFIG_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    return folder


def read_saved_folder(folder: str | os.PathLike[str], *, advice: str) -> tuple[Path, Path, dict[str, Any]]:
    """The checks every saved model folder (a head's or a network's) gets before anything is built: a directory,
    no pickle-based file in it (``advice`` says what to do instead), config.json and model.safetensors present,
    config.json an object of a format version this causalclip reads. Returns (config path, weights path, config)."""
    folder = Path(folder)
    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a directory (expected a run or detector folder)")
    # A folder that holds pickle files is refused even beside safetensors weights (as detector folders are):
    # nothing would be unpickled, but such a folder did not come from causalclip and may not be what it claims.
    unsafe = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if unsafe:
        raise CheckpointError(
            f"{folder}: holds pickle-based files ({', '.join(unsafe)}); refusing to load from it because pickle "
            f"files can run arbitrary code. {advice}"
        )
    if not w_path.is_file():
        raise CheckpointError(f"{w_path}: missing")
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing")
    info = read_json(cfg_path, CheckpointError)
    if not isinstance(info, dict):  # fuzzing found null, lists and numbers here
        raise CheckpointError(f"{cfg_path}: the top level must be an object, got {type(info).__name__}")
    version = info.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{cfg_path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: format_version {version} is newer than this causalclip")
    return cfg_path, w_path, info


def read_weights(path: Path, *, device: str = "cpu") -> dict[str, Any]:
    """A safetensors state dict; anything else is refused (never a pickle-based reader)."""
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a valid safetensors file ({exc}); refusing to try other (pickle-based) readers"
        ) from exc


def load_head(folder: str | os.PathLike[str], *, device: str = "cpu") -> LoadedHead:
    """Load a head saved by :func:`save_head` (a training run folder is one), in eval mode."""
    cfg_path, w_path, info = read_saved_folder(
        folder, advice=f"Keep only {CONFIG_NAME} and {WEIGHTS_NAME} (convert in a trusted environment)."
    )
    for key in ("head", "head_config", "dim"):
        if key not in info:
            raise CheckpointError(f"{cfg_path}: missing key {key!r}")
    dim = info["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise CheckpointError(f"{cfg_path}: 'dim' must be a positive integer, got {dim!r}")
    state = read_weights(w_path, device=device)  # the weights first: their size bounds the head config.json asks for
    # Every head has at least one weight per input feature, so its weights hold at least dim values: a larger dim
    # is a damaged config, refused before it allocates a head of that size (fuzzing found 2**40).
    if sum(t.numel() for t in state.values()) < dim:
        raise CheckpointError(f"{cfg_path}: 'dim' {dim} cannot match {w_path.name} (it holds fewer weights)")
    try:
        head = build_head(info["head"], dim=dim, config=info["head_config"])
    except (KeyError, ValueError, TypeError, OverflowError) as exc:
        raise CheckpointError(f"{cfg_path}: {exc}") from exc
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{w_path}: weights do not match the head in {CONFIG_NAME}: {exc}") from exc
    head.to(device).eval()
    return LoadedHead(head=head, info=info)
