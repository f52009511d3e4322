"""Evaluate a network trained on images on test image sets, per generator, into the same files as heads:
``metrics.csv`` (AP / ACC per generator, calibrated and oracle accuracy), ``predictions.csv``, plus ``errors.csv``
(every test image that could not be used)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..evaluation.evaluate import EvalResult, EvaluationSets
from ..metrics.errors import MetricsError
from ..metrics.thresholds import calibration_record, stored_threshold, write_threshold
from .data import ImageSet
from .folder import load_network, raw_image_network
from .predict import predict_images

__all__ = ["calibrate_network_run", "evaluate_images"]


def evaluate_images(
    run: str | os.PathLike[str],
    test_sets: Sequence[ImageSet],
    *,
    out: str | os.PathLike[str] | None = None,
    balance: bool = True,
    max_per_class: int | None = None,
    seed: int = 0,
    threshold: float = 0.5,
    device: str = "cpu",
    batch_size: int = 32,
    workers: int = 0,
) -> EvalResult:
    """Score every test set with the network in ``run`` (a run or detector folder) and compute per-generator AP/ACC,
    exactly as :func:`causalclip.evaluate` does for heads (balanced seeded sampling, calibrated threshold).

    Test sets are raw images: a run trained on a cached transform of its images (LGrad on gradient maps) is
    evaluated with that transform applied inside the network, as its detector folder scores images."""
    run = Path(run)
    calibration = stored_threshold(run)
    loaded = load_network(run, device=device)
    network, _ = raw_image_network(loaded.method, loaded.network)  # test sets are images, whatever it trained on
    prep = loaded.preprocessing
    sets = EvaluationSets(balance=balance, max_per_class=max_per_class, seed=seed, unit="images")
    errors = []
    keys = [
        (str(Path(s.root).resolve()), s.description.get("split"), tuple(sorted(set(s.generators)))) for s in test_sets
    ]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"{twice[0][0]}: given twice as a test set; each of its images would be counted twice")
    for s in test_sets:
        if len(s) == 0:
            raise MetricsError(f"{s.root}: the test set has no images")
        gens = s.generators
        idx = sets.positions(s.root, s.labels, gens)
        res = predict_images(network, s, prep, indices=idx, batch_size=batch_size, workers=workers, device=device)
        errors += [(str(s.paths[i]), reason) for i, reason in res.errors]
        if res.errors:
            sets.notes.append(f"{s.root}: {len(res.errors)} image(s) could not be used (errors.csv)")
        p = res.positions
        sets.add(s.paths[p], gens[p], s.labels[p], res.scores)
    errors_frame = pd.DataFrame(errors, columns=["path", "reason"])
    return sets.result(threshold=threshold, calibration=calibration, out=out, extra=[("errors.csv", errors_frame)])


def calibrate_network_run(
    run: str | os.PathLike[str],
    val: ImageSet,
    *,
    target_fpr: float | None = None,
    device: str = "cpu",
    workers: int = 0,
    write: bool = True,
) -> dict:
    """Score the images ``val`` with the network in ``run``, choose a threshold (balanced accuracy, or the target
    false-positive rate on the reals) and with ``write`` rewrite RUN/threshold.json, as ``causalclip calibrate``."""
    loaded = load_network(run, device=device)
    res = predict_images(loaded.network, val, loaded.preprocessing, workers=workers, device=device)
    if len(res.positions) == 0:
        raise MetricsError(f"{val.root}: none of the {len(val)} calibration images could be used")
    rec = calibration_record(
        val.labels[res.positions],
        res.scores,
        target_fpr=target_fpr,
        source=str(val.root),
        name=f"calibration set {val.root}",
    )
    if write:
        write_threshold(run, rec)
    return rec
