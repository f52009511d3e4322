"""Decision thresholds: oracle (an optimistic upper bound), calibrated on validation data, and stored per run.

Every function here works on ``(labels, scores)`` with the project's rule: a sample is called fake when
``score > threshold`` (as in :func:`causalclip.metrics.binary_metrics`). Candidate thresholds are the distinct
score values (plus one below the smallest, "everything fake"), so the sweep is exact, including ties: tied
scores always fall on the same side.

- :func:`oracle_threshold` / :func:`oracle_accuracy`: the best accuracy over all thresholds **on the very set it is
  measured on**. It uses the test labels, so it is an optimistic upper bound, never a deployable number.
- :func:`balanced_accuracy_threshold`: maximises balanced accuracy (mean of real and fake accuracy) on a
  validation set with both classes; the returned value sits midway between the two neighbouring distinct scores
  of the optimal cut, so a new image that scores like the nearest validation image on either side is classified
  the same way.
- :func:`fpr_threshold`: the smallest threshold such that at most ``target_fpr`` of the real validation images
  score above it (the empirical quantile of the real scores). Needs reals only, so it works on a real-only set.

A run's chosen threshold lives in ``RUN/threshold.json`` (:func:`write_threshold`, :func:`read_threshold`).
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..core.io import atomic_write, read_json
from .errors import MetricsError

__all__ = [
    "THRESHOLD_NAME",
    "CalibrationError",
    "accuracy_at",
    "balanced_accuracy_threshold",
    "calibration_record",
    "fpr_threshold",
    "oracle_accuracy",
    "oracle_threshold",
    "read_threshold",
    "stored_threshold",
    "write_threshold",
]

THRESHOLD_NAME = "threshold.json"
METHODS = ("val_balanced_acc", "val_target_fpr")


class CalibrationError(MetricsError):
    """A threshold cannot be chosen from the given data (empty, one class where two are needed, NaN scores)."""


def _check(labels: Any, scores: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D int64 labels in {0, 1} and finite float64 scores of equal length."""
    where = name or "scores"
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise CalibrationError(f"{where}: labels {labels.shape} and scores {scores.shape} must be 1-D and equal")
    if len(labels) == 0:
        raise CalibrationError(f"{where}: no samples; a threshold needs scored samples")
    if not np.isin(labels, (0, 1)).all():
        raise CalibrationError(f"{where}: labels must be 0 (real) or 1 (fake)")
    if not np.isfinite(scores).all():
        raise CalibrationError(f"{where}: scores contain NaN or inf")
    return labels.astype(np.int64), scores


def _need_both(labels: np.ndarray, name: str, what: str) -> tuple[int, int]:
    n_real, n_fake = int((labels == 0).sum()), int((labels == 1).sum())
    if n_real == 0 or n_fake == 0:
        raise CalibrationError(
            f"{name or 'scores'}: {what} needs both real and fake samples, got {n_real} real and {n_fake} fake"
        )
    return n_real, n_fake


def _sweep(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores ``u`` (ascending) and, for each candidate cut j = 0..len(u), the number of reals and fakes
    called real (score <= u[j-1]; cut 0 calls everything fake)."""
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order]
    u, first = np.unique(s, return_index=True)
    last = np.r_[first[1:], len(s)] - 1  # last sorted position of each distinct value
    real_le = np.r_[0, np.cumsum(y == 0)[last]]
    fake_le = np.r_[0, np.cumsum(y == 1)[last]]
    return u, real_le, fake_le


def _cut_value(u: np.ndarray, j: int, *, midpoint: bool) -> float:
    """The threshold of cut j: below all scores (j = 0), the largest score (j = len(u)), otherwise u[j-1] or the
    midpoint between u[j-1] and u[j] (kept strictly below u[j] so that the cut is exactly reproduced)."""
    if j == 0:
        return float(np.nextafter(u[0], -np.inf))
    lo = float(u[j - 1])
    if not midpoint or j == len(u):
        return lo
    hi = float(u[j])
    mid = lo + (hi - lo) / 2
    return mid if lo <= mid < hi else lo


def _best_cut(objective: np.ndarray) -> int:
    """The middle one of the cuts that reach the maximum (integer objectives, so ties are exact)."""
    best = np.flatnonzero(objective == objective.max())
    return int(best[len(best) // 2])


def accuracy_at(labels: Any, scores: Any, threshold: float, *, name: str = "") -> float:
    """Accuracy of the rule ``score > threshold`` means fake."""
    labels, scores = _check(labels, scores, name)
    return float(((scores > threshold).astype(np.int64) == labels).mean())


def oracle_threshold(labels: Any, scores: Any, *, name: str = "") -> float:
    """The threshold with the best accuracy on this very set (optimistic: it looks at the labels it is scored on).

    Needs both classes: on a one-class set every "everything real/fake" threshold is trivially perfect.
    """
    labels, scores = _check(labels, scores, name)
    n_real, n_fake = _need_both(labels, name, "the oracle threshold")
    u, real_le, fake_le = _sweep(labels, scores)
    correct = real_le + (n_fake - fake_le)  # true negatives + true positives
    return _cut_value(u, _best_cut(correct), midpoint=True)


def oracle_accuracy(labels: Any, scores: Any, *, name: str = "") -> float:
    """The best accuracy over all thresholds on this set: an optimistic upper bound of any calibrated accuracy."""
    labels, scores = _check(labels, scores, name)
    n_real, n_fake = _need_both(labels, name, "the oracle accuracy")
    _, real_le, fake_le = _sweep(labels, scores)
    return float((real_le + (n_fake - fake_le)).max() / len(labels))


def balanced_accuracy_threshold(labels: Any, scores: Any, *, name: str = "") -> float:
    """The threshold that maximises balanced accuracy (real_acc + fake_acc) / 2 on a validation set."""
    labels, scores = _check(labels, scores, name)
    n_real, n_fake = _need_both(labels, name, "balanced-accuracy calibration")
    u, real_le, fake_le = _sweep(labels, scores)
    # (TN / n_real + TP / n_fake) / 2, scaled by 2 * n_real * n_fake: integers, so ties compare exactly
    objective = real_le * n_fake + (n_fake - fake_le) * n_real
    return _cut_value(u, _best_cut(objective), midpoint=True)


def fpr_threshold(labels: Any, scores: Any, target_fpr: float, *, name: str = "") -> float:
    """The smallest threshold such that at most ``target_fpr`` of the real samples score above it.

    Only the reals (label 0) are used, so a real-only validation set works; fakes, if present, are ignored. With
    n reals, floor(target_fpr * n) of them may score above the threshold (ties never split).
    """
    labels, scores = _check(labels, scores, name)
    try:
        fpr = float(target_fpr)
    except (TypeError, ValueError):
        fpr = math.nan
    if isinstance(target_fpr, bool) or not 0 <= fpr <= 1:  # NaN fails the comparison too
        raise CalibrationError(f"{name or 'scores'}: target FPR must be a number in [0, 1], got {target_fpr!r}")
    real = scores[labels == 0]
    if len(real) == 0:
        raise CalibrationError(f"{name or 'scores'}: FPR calibration needs real samples, got 0 real")
    allowed = math.floor(fpr * len(real) + 1e-9)
    u, real_le, _ = _sweep(np.zeros(len(real), dtype=np.int64), real)
    j = int(np.flatnonzero(len(real) - real_le <= allowed)[0])  # the lowest admissible cut
    return _cut_value(u, j, midpoint=False)


def calibration_record(
    labels: Any, scores: Any, *, target_fpr: float | None = None, source: str = "", name: str = ""
) -> dict[str, Any]:
    """Choose a threshold (balanced accuracy, or ``target_fpr`` on the reals) and describe it for threshold.json:
    threshold, method, source, counts and what the threshold achieves on the calibration set itself."""
    labels, scores = _check(labels, scores, name or source)
    if target_fpr is None:
        t = balanced_accuracy_threshold(labels, scores, name=name or source)
        method = "val_balanced_acc"
    else:
        t = fpr_threshold(labels, scores, target_fpr, name=name or source)
        method = "val_target_fpr"
    real, fake = scores[labels == 0], scores[labels == 1]
    rec: dict[str, Any] = {"threshold": t, "method": method, "source": source}
    if target_fpr is not None:
        rec["target_fpr"] = float(target_fpr)
    rec.update({"n_real": len(real), "n_fake": len(fake)})
    if len(real):
        rec["val_real_acc"] = float((real <= t).mean())
        rec["val_fpr"] = float((real > t).mean())
    if len(fake):
        rec["val_fake_acc"] = float((fake > t).mean())
    if len(real) and len(fake):
        rec["val_balanced_acc"] = (rec["val_real_acc"] + rec["val_fake_acc"]) / 2
    rec["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    return rec


def write_threshold(run: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Write ``record`` (from :func:`calibration_record`) to RUN/threshold.json atomically."""
    path = Path(run) / THRESHOLD_NAME
    _validate_record(record, path)
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path


def _validate_record(rec: Any, path: Path) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise CalibrationError(f"{path}: the top level must be a JSON object")
    t = rec.get("threshold")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise CalibrationError(f"{path}: 'threshold' must be a finite number, got {t!r}")
    if not isinstance(rec.get("method"), str):
        raise CalibrationError(f"{path}: 'method' must be a string naming how the threshold was chosen")
    return rec


def read_threshold(run: str | os.PathLike[str]) -> dict[str, Any] | None:
    """RUN/threshold.json as a dict, or None when the run has none; a malformed file is an error naming it."""
    path = Path(run) / THRESHOLD_NAME
    if not path.is_file():
        return None
    rec = read_json(path, CalibrationError)
    return _validate_record(rec, path)


def stored_threshold(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The calibrated threshold kept with a run (threshold.json) or a detector folder (detector.json), or None.

    A detector exported without any calibration (method "default", the 0.5 of the protocol) counts as none.
    """
    folder = Path(folder)
    rec = read_threshold(folder)
    if rec is not None:
        return rec
    det = folder / "detector.json"
    if det.is_file():
        info = read_json(det, CalibrationError)
        cal = dict(info.get("calibration") or {}) if isinstance(info, dict) else {}
        if cal.get("method", "default") != "default":
            cal["threshold"] = info.get("threshold")
            return _validate_record(cal, det)
    return None
