"""Detector folders: a trained head plus everything needed to apply it to images, in one self-describing folder.

::

    DETECTOR/
      detector.json       format version, backbone (as recorded in a feature set's meta.json), feature_dim,
                          preprocessing, threshold + its calibration record, provenance
      config.json         the head's config (copied from the run)
      model.safetensors   the head's weights (copied from the run)

A run folder says how to score *features*; a detector folder also says how the features must be made (which
backbone, which preprocessing), so ``detect``/``serve``/the demo can go from an image to a decision. Loading
never unpickles anything, and a folder holding any pickle-based file is refused outright.

A network trained on images (NPR, CNNSpot, FreDect: :mod:`causalclip.pixel`) makes a detector of ``"kind":
"network"``: no backbone, ``config.json`` + ``model.safetensors`` hold the network (:mod:`causalclip.pixel.folder`),
and ``preprocessing`` is its test-time crop and normalisation. Feature detectors keep ``"kind": "features"`` (the
default when absent, as in folders written before networks existed).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.io import atomic_write, read_json
from ..features.featureset import open_feature_set
from ..heads.base import Head
from ..heads.checkpoint import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, CheckpointError, load_head
from ..metrics.thresholds import read_threshold
from ..pixel.folder import is_network_folder, load_network, raw_image_network

__all__ = [
    "DETECTOR_FORMAT_VERSION",
    "DETECTOR_NAME",
    "Detector",
    "DetectorError",
    "export_detector",
    "export_detector_from_feature_set",
    "write_network_detector",
    "read_detector",
]

DETECTOR_NAME = "detector.json"
DETECTOR_FORMAT = "causalclip-detector"
DETECTOR_FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)


class DetectorError(ValueError):
    """A detector folder is missing, unsafe or inconsistent, or cannot be exported; the message names the file."""


@dataclass
class Detector:
    """A loaded detector folder. ``head`` is in eval mode and maps features (n, feature_dim) to logits; for a
    detector of kind "network", ``head`` is the network, mapping preprocessed pixels (n, 3, S, S) to logits."""

    folder: Path
    head: Head | torch.nn.Module
    backbone: dict[str, Any]  # as recorded in the feature set's meta.json "backbone"
    preprocessing: dict[str, Any]  # causalclip.images.transforms.Preprocessing.to_dict()
    threshold: float  # score > threshold means fake
    provenance: dict[str, Any]
    calibration: dict[str, Any] = field(default_factory=dict)  # how the threshold was chosen
    feature_dim: int = 0
    info: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole detector.json
    kind: str = "features"  # or "network": ``head`` scores preprocessed pixels, there is no backbone

    @property
    def name(self) -> str:
        """The head's or the network's registered name."""
        return str(self.info.get("network" if self.kind == "network" else "head", {}).get("name"))

    @torch.no_grad()
    def score_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Probabilities of fake, (n,) float64, for preprocessed images (n, 3, S, S) of a "network" detector."""
        if self.kind != "network":
            raise DetectorError(f"{self.folder}: a feature detector scores backbone features, not pixels")
        device = next(self.head.parameters()).device
        return torch.sigmoid(self.head(pixels.float().to(device)).float()).cpu().numpy().astype(np.float64)

    @torch.no_grad()
    def score(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Probabilities of fake, (n,) float64, for backbone features (n, feature_dim)."""
        if self.kind == "network":
            raise DetectorError(f"{self.folder}: a network detector scores pixels (score_pixels), not features")
        x = torch.as_tensor(np.asarray(features, dtype=np.float32) if not torch.is_tensor(features) else features)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise DetectorError(
                f"{self.folder}: expected features of shape (n, {self.feature_dim}), got {tuple(x.shape)}"
            )
        device = next(self.head.parameters()).device
        return torch.sigmoid(self.head(x.float().to(device)).float()).cpu().numpy().astype(np.float64)

    def classify(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """True where the detector calls the image fake (score > threshold)."""
        return self.score(features) > self.threshold


def _feature_dim(backbone: dict[str, Any], feature_dim: int | None, where: str) -> int:
    recorded = backbone.get("dim")
    if recorded is not None and feature_dim is not None and int(recorded) != int(feature_dim):
        raise DetectorError(f"{where}: backbone records dim {recorded} but the feature dim is {feature_dim}")
    dim = feature_dim if feature_dim is not None else recorded
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise DetectorError(
            f"{where}: the backbone's feature dim is unknown (no 'dim' in the backbone record); pass feature_dim"
        )
    return dim


def _check_preprocessing(preprocessing: Any, where: str) -> dict[str, Any]:
    from ..images.transforms import Preprocessing

    if not isinstance(preprocessing, dict):
        raise DetectorError(f"{where}: 'preprocessing' must be an object, got {type(preprocessing).__name__}")
    try:
        return Preprocessing.from_dict(preprocessing).to_dict()
    except (TypeError, ValueError) as exc:
        raise DetectorError(f"{where}: invalid preprocessing {preprocessing!r}: {exc}") from exc


def _check_threshold(t: Any, where: str) -> float:
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise DetectorError(f"{where}: 'threshold' must be a finite number, got {t!r}")
    return float(t)


def export_detector(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    backbone: dict[str, Any],
    preprocessing: dict[str, Any],
    threshold: float | None = None,
    provenance: dict[str, Any] | None = None,
    feature_dim: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Copy the head of ``run_dir`` into ``out`` and write detector.json; returns ``out``.

    ``backbone`` is the feature set's meta.json "backbone" record (it must match what the head was trained on, if
    the run recorded it); its "dim" (or ``feature_dim``) must equal the head's input dim. ``threshold``: None
    takes the run's threshold.json (calibrated at training time or by ``causalclip calibrate``), or 0.5 if it
    has none. ``provenance`` adds to (and overrides) the recorded training data, dates and code revisions. The
    folder is re-loaded with :func:`read_detector` before returning.
    """
    from ..core.revision import code_revision

    run_dir, out = Path(run_dir), Path(out)
    try:
        loaded = load_head(run_dir)
    except CheckpointError as exc:
        raise DetectorError(str(exc)) from exc
    if not isinstance(backbone, dict) or not backbone:
        raise DetectorError(
            f"{run_dir}: the backbone record must be a non-empty dict (a feature set's meta 'backbone')"
        )
    dim = _feature_dim(backbone, feature_dim, f"{run_dir}: backbone {backbone.get('model', backbone.get('name'))!r}")
    if int(loaded.info["dim"]) != dim:
        raise DetectorError(
            f"{run_dir / CONFIG_NAME}: the head takes {loaded.info['dim']}-d features but the backbone gives {dim}-d"
        )
    preprocessing = _check_preprocessing(preprocessing, str(run_dir))
    trained = loaded.info.get("features", {})
    if "backbone" in trained and trained["backbone"] != backbone:
        raise DetectorError(
            f"{run_dir}: the head was trained on features of backbone {trained['backbone']!r}, not {backbone!r}"
        )
    if "preprocessing" in trained and _check_preprocessing(trained["preprocessing"], str(run_dir)) != preprocessing:
        raise DetectorError(
            f"{run_dir}: the head was trained on features preprocessed with {trained['preprocessing']!r}, "
            f"not {preprocessing!r}"
        )

    if threshold is not None:
        t = _check_threshold(threshold, "export threshold")
        calibration: dict[str, Any] = {"method": "explicit", "note": "threshold given at export"}
    else:
        rec = read_threshold(run_dir)
        if rec is None:
            t, calibration = 0.5, {"method": "default", "note": f"{run_dir} has no threshold.json; 0.5 (protocol)"}
        else:
            t, calibration = float(rec["threshold"]), {k: v for k, v in rec.items() if k != "threshold"}

    run_prov = loaded.info.get("provenance", {})
    prov: dict[str, Any] = {
        "run": str(run_dir.resolve()),
        "head": loaded.info["head"],
        "train": run_prov.get("train"),
        "val": run_prov.get("val"),
        "trained": run_prov.get("trained"),
        "best_epoch": run_prov.get("best_epoch"),
        "training_code_revision": run_prov.get("code_revision"),
        "exported": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_revision": code_revision(),
        **(provenance or {}),
    }
    info = {
        "format": DETECTOR_FORMAT,
        "format_version": DETECTOR_FORMAT_VERSION,
        "head": {
            "name": loaded.info["head"],
            "dim": int(loaded.info["dim"]),
            "config": CONFIG_NAME,
            "weights": WEIGHTS_NAME,
        },
        "backbone": backbone,
        "feature_dim": dim,
        "preprocessing": preprocessing,
        "threshold": t,
        "calibration": calibration,
        "provenance": prov,
    }

    if out.resolve() == run_dir.resolve():
        raise DetectorError(f"{out}: the detector folder must differ from the run folder")
    if out.exists() and not out.is_dir():
        raise DetectorError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: not empty; choose another folder or pass --overwrite (overwrite=True)")
    out.mkdir(parents=True, exist_ok=True)
    (out / DETECTOR_NAME).unlink(missing_ok=True)  # a half-updated folder must not look complete
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        atomic_write(out / name, lambda p, src=run_dir / name: shutil.copyfile(src, p))
    text = json.dumps(info, indent=2) + "\n"
    atomic_write(out / DETECTOR_NAME, lambda p: p.write_text(text, encoding="utf-8"))  # last: marks completion
    read_detector(out)
    return out


def export_detector_from_feature_set(
    run_dir: str | os.PathLike[str],
    feature_set_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    threshold: float | None = None,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """:func:`export_detector` with backbone, preprocessing and feature dim taken from a feature set's meta.json
    (the common case: a detector is a run plus how its features were made)."""
    fs = open_feature_set(feature_set_dir, check_finite=False)
    meta_path = fs.root / "meta.json"
    for key in ("backbone", "preprocessing"):
        if not isinstance(fs.meta.get(key), dict):
            raise DetectorError(
                f"{meta_path}: records no {key!r}; a detector needs it to turn images into features "
                "(use a set made by `causalclip extract`, or call export_detector with it)"
            )
    prov = {
        "features": str(fs.root),
        **{k: fs.meta[k] for k in ("precision", "perturbation") if k in fs.meta},
        **(provenance or {}),
    }
    return export_detector(
        run_dir,
        out,
        backbone=fs.meta["backbone"],
        preprocessing=fs.meta["preprocessing"],
        threshold=threshold,
        provenance=prov,
        feature_dim=fs.dim,
        overwrite=overwrite,
    )


def read_detector(folder: str | os.PathLike[str], *, device: str = "cpu") -> Detector:
    """Load and check a detector folder (see the module docstring).

    Refuses, with a DetectorError naming the file: a folder holding any pickle-based file (.pt, .pth, .bin, .pkl,
    .ckpt, ...), a missing detector.json/config.json/model.safetensors, an unknown format version, a malformed
    record, and a head whose input dim differs from the backbone's recorded feature dim.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DetectorError(f"{folder}: not a directory (expected a detector folder)")
    unsafe = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if unsafe:
        raise DetectorError(
            f"{folder}: holds pickle-based file(s) {', '.join(unsafe)}; refusing to load a detector from a folder "
            "with files that can run arbitrary code when loaded. Remove them (weights belong in model.safetensors)."
        )
    for name in (DETECTOR_NAME, CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            hint = (
                f"; {folder} looks like a run folder: make a detector of it with `causalclip export {folder} --out DIR`"
                if name == DETECTOR_NAME and (folder / CONFIG_NAME).is_file()
                else ""
            )
            raise DetectorError(
                f"{folder / name}: missing (a detector folder holds {DETECTOR_NAME}, {CONFIG_NAME}, {WEIGHTS_NAME})"
                + hint
            )
    path = folder / DETECTOR_NAME
    info = read_json(path, DetectorError)
    if not isinstance(info, dict):
        raise DetectorError(f"{path}: the top level must be a JSON object")
    version = info.get("format_version")
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        raise DetectorError(
            f"{path}: unknown format_version {version!r}; this causalclip reads {list(SUPPORTED_VERSIONS)}"
        )
    kind = info.get("kind", "features")
    if kind == "network":
        return _read_network_detector(folder, info, device)
    if kind != "features":
        raise DetectorError(f"{path}: unknown kind {kind!r}; expected 'features' or 'network'")
    for key in ("backbone", "preprocessing", "threshold", "feature_dim"):
        if key not in info:
            raise DetectorError(f"{path}: missing key {key!r}")
    if not isinstance(info["backbone"], dict):
        raise DetectorError(f"{path}: 'backbone' must be an object")
    dim = _feature_dim(info["backbone"], info["feature_dim"], str(path))
    preprocessing = _check_preprocessing(info["preprocessing"], str(path))
    threshold = _check_threshold(info["threshold"], str(path))
    try:
        loaded = load_head(folder, device=device)
    except CheckpointError as exc:
        raise DetectorError(str(exc)) from exc
    if int(loaded.info["dim"]) != dim:
        raise DetectorError(
            f"{folder / CONFIG_NAME}: the head takes {loaded.info['dim']}-d features but {DETECTOR_NAME} records a "
            f"{dim}-d backbone"
        )
    return Detector(
        folder=folder,
        head=loaded.head,
        backbone=info["backbone"],
        preprocessing=preprocessing,
        threshold=threshold,
        provenance=dict(info.get("provenance") or {}),
        calibration=dict(info.get("calibration") or {}),
        feature_dim=dim,
        info=info,
    )


# --------------------------------------------------------------------------------------------- network detectors


def _read_network_detector(folder: Path, info: dict[str, Any], device: str) -> Detector:
    path = folder / DETECTOR_NAME
    for key in ("network", "preprocessing", "threshold"):
        if key not in info:
            raise DetectorError(f"{path}: missing key {key!r}")
    preprocessing = _check_preprocessing(info["preprocessing"], str(path))
    threshold = _check_threshold(info["threshold"], str(path))
    try:
        loaded = load_network(folder, device=device)
    except CheckpointError as exc:
        raise DetectorError(str(exc)) from exc
    name = info["network"].get("name") if isinstance(info["network"], dict) else None
    if name != loaded.method:
        raise DetectorError(f"{path}: records network {name!r} but {folder / CONFIG_NAME} holds {loaded.method!r}")
    if loaded.preprocessing.to_dict() != preprocessing:
        raise DetectorError(
            f"{path}: preprocessing {preprocessing!r} differs from the network's {loaded.info['preprocessing']!r}"
        )
    return Detector(
        folder=folder,
        head=loaded.network,
        backbone={},
        preprocessing=preprocessing,
        threshold=threshold,
        provenance=dict(info.get("provenance") or {}),
        calibration=dict(info.get("calibration") or {}),
        feature_dim=0,
        info=info,
        kind="network",
    )


def _prepare_out(out: Path, overwrite: bool, *, not_same_as: Path | None = None) -> None:
    if not_same_as is not None and out.resolve() == not_same_as.resolve():
        raise DetectorError(f"{out}: the detector folder must differ from the run folder")
    if out.exists() and not out.is_dir():
        raise DetectorError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: not empty; choose another folder or pass --overwrite (overwrite=True)")
    out.mkdir(parents=True, exist_ok=True)
    (out / DETECTOR_NAME).unlink(missing_ok=True)  # a half-updated folder must not look complete


def write_network_detector(
    out: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    network: torch.nn.Module | None = None,
    method: str | None = None,
    config: Any = None,
    init: dict[str, Any] | None = None,
    threshold: float | None = None,
    calibration: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a detector folder of kind "network": from a run folder ``source`` (its config.json and weights are
    copied; threshold from its threshold.json unless given), or from an in-memory ``network`` of ``method`` with its
    architecture ``config`` and ``init`` record (an imported authors' checkpoint). Re-loaded before returning."""
    from ..core.revision import code_revision
    from ..networks.registry import get_network_method
    from ..pixel.folder import save_network

    out = Path(out)
    if threshold is not None and calibration is None:
        calibration = {"method": "explicit", "note": "threshold given at export"}
    prov: dict[str, Any] = {
        "exported": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_revision": code_revision(),
    }
    if source is not None:
        source = Path(source)
        if not is_network_folder(source):
            raise DetectorError(f"{source / CONFIG_NAME}: not the run folder of a network trained on images")
        try:
            loaded = load_network(source)
        except CheckpointError as exc:
            raise DetectorError(str(exc)) from exc
        method, prep, init = loaded.method, loaded.preprocessing, loaded.info.get("init", {})
        run_prov = loaded.info.get("provenance", {})
        prov = {
            "run": str(source.resolve()),
            **run_prov,
            "training_code_revision": run_prov.get("code_revision"),
            **prov,
        }
        if threshold is None:
            rec = read_threshold(source)
            if rec is None:
                threshold = 0.5
                calibration = {"method": "default", "note": f"{source} has no threshold.json; 0.5 (protocol)"}
            else:
                threshold, calibration = float(rec["threshold"]), {k: v for k, v in rec.items() if k != "threshold"}
        _prepare_out(out, overwrite, not_same_as=source)
        network, raw = raw_image_network(method, loaded.network)
        if network is not loaded.network:  # trained on a cached transform (LGrad's gradient maps): score raw images
            save_network(out, network, method=method, config=raw, preprocessing=prep, init=init,
                         extra={"provenance": run_prov})  # fmt: skip
        else:
            for name in (CONFIG_NAME, WEIGHTS_NAME):
                atomic_write(out / name, lambda p, src=source / name: shutil.copyfile(src, p))
    else:
        if network is None or method is None:
            raise ValueError("write_network_detector needs a run folder (source) or a network and its method")
        spec = get_network_method(method)
        r = spec.recipe
        from ..images.transforms import Preprocessing

        prep = Preprocessing(mode="crop", size=r.test_crop, mean=tuple(r.mean), std=tuple(r.std))
        _prepare_out(out, overwrite)
        save_network(out, network, method=method, config=config, preprocessing=prep, init=init or {})
    if threshold is None:
        threshold = 0.5
        calibration = calibration or {"method": "default", "note": "not calibrated: 0.5, the authors' rule (logit > 0)"}
    t = _check_threshold(threshold, "export threshold")
    info = {
        "format": DETECTOR_FORMAT,
        "format_version": DETECTOR_FORMAT_VERSION,
        "kind": "network",
        "network": {"name": method, "config": CONFIG_NAME, "weights": WEIGHTS_NAME, "init": (init or {}).get("method")},
        "preprocessing": prep.to_dict(),
        "threshold": t,
        "calibration": calibration,
        "provenance": {**prov, **(provenance or {})},
    }
    text = json.dumps(info, indent=2) + "\n"
    atomic_write(out / DETECTOR_NAME, lambda p: p.write_text(text, encoding="utf-8"))  # last: marks completion
    read_detector(out)
    return out
