"""Recompute a run's decision threshold on a validation feature set and store it in the run (``causalclip calibrate``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..metrics.thresholds import calibration_record, write_threshold


def calibrate_run(
    run: str | os.PathLike[str],
    val: str | os.PathLike[str],
    *,
    target_fpr: float | None = None,
    device: str = "cpu",
    write: bool = True,
) -> dict[str, Any]:
    """Score the feature set ``val`` with the head in ``run``, choose a threshold and (with ``write``) rewrite
    RUN/threshold.json. The set must be made like the training features (same checks as evaluation)."""
    from ..features.featureset import open_feature_set
    from ..heads.checkpoint import load_head
    from ..heads.predict import predict
    from .evaluate import check_compatible

    run = Path(run)
    loaded = load_head(run, device=device)
    fs = open_feature_set(val)
    check_compatible(loaded.info, fs, run)
    scores = predict(loaded.head, fs, device=device)
    rec = calibration_record(
        fs.labels, scores, target_fpr=target_fpr, source=str(fs.root), name=f"calibration set {fs.root}"
    )
    if write:
        write_threshold(run, rec)
    return rec
