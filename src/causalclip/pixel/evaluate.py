"""Evaluate a network trained on images on test image sets, per generator, into the same files as heads:
``metrics.csv`` (AP / ACC per generator, calibrated and oracle accuracy), ``predictions.csv``, plus ``errors.csv``
(every test image that could not be used)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.io import atomic_write
from ..evaluation.evaluate import EvalResult
from ..metrics.binary import balanced_indices, per_generator_metrics
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
    parts, notes, errors = [], [], []
    owner: dict[str, Path] = {}
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
        for g in pd.unique(gens):
            if g in owner and owner[g] != s.root:
                raise ValueError(f"generator {g!r} appears in both {owner[g]} and {s.root}; rename one of them")
            owner[g] = s.root
        if balance:
            idx = balanced_indices(s.labels, gens, seed=seed, max_per_class=max_per_class)
            if len(idx) < len(s):
                notes.append(f"{s.root}: balanced by seeded sampling to {len(idx)} of {len(s)} images (seed {seed})")
        else:
            idx = np.arange(len(s))
        res = predict_images(network, s, prep, indices=idx, batch_size=batch_size, workers=workers, device=device)
        errors += [(str(s.paths[i]), reason) for i, reason in res.errors]
        if res.errors:
            notes.append(f"{s.root}: {len(res.errors)} image(s) could not be used (errors.csv)")
        p = res.positions
        parts.append(
            pd.DataFrame({"path": s.paths[p], "generator": gens[p], "label": s.labels[p], "score": res.scores})
        )
    predictions = pd.concat(parts, ignore_index=True)
    metrics = per_generator_metrics(
        predictions,
        threshold=threshold,
        calibrated_threshold=None if calibration is None else float(calibration["threshold"]),
        sources={g: str(root) for g, root in owner.items()},
    )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        frames = (
            ("metrics.csv", metrics),
            ("predictions.csv", predictions),
            ("errors.csv", pd.DataFrame(errors, columns=["path", "reason"])),
        )
        for name, df in frames:
            atomic_write(out / name, lambda p, df=df: df.to_csv(p, index=False))
    return EvalResult(metrics=metrics, predictions=predictions, notes=notes, calibration=calibration)


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
