"""Evaluate a trained head on one or more test feature sets, per generator (docs/method.md#evaluation-protocol)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.io import atomic_write
from ..features.featureset import FeatureSet, open_feature_set
from ..heads.checkpoint import load_head
from ..heads.predict import FEATURE_KEYS, predict
from ..metrics.binary import balanced_indices, per_generator_metrics
from ..metrics.errors import MetricsError
from ..metrics.thresholds import stored_threshold

__all__ = ["EvalResult", "EvaluationSets", "check_compatible", "evaluate", "format_table"]


@dataclass
class EvalResult:
    # generator, n_real, n_fake, ap, acc, real_acc, fake_acc, acc_oracle (+ *_calibrated, threshold_calibrated
    # when the run has a stored threshold) and a "mean" row
    metrics: pd.DataFrame
    predictions: pd.DataFrame  # path, generator, label, score
    notes: list[str]
    calibration: dict | None = None  # the run's threshold.json (or detector.json record) used, if any


class EvaluationSets:
    """The bookkeeping every evaluation shares, whatever scores the samples (a head on features, a network on
    images): one owner per generator name, the protocol's balanced seeded sampling with a note, and at the end the
    per-generator metrics and the written files."""

    def __init__(self, *, balance: bool, max_per_class: int | None, seed: int, unit: str = "samples") -> None:
        self.balance, self.max_per_class, self.seed, self.unit = balance, max_per_class, seed, unit
        self.owner: dict[str, Path] = {}
        self.parts: list[pd.DataFrame] = []
        self.notes: list[str] = []

    def positions(self, root: Path, labels: np.ndarray, generators: np.ndarray) -> np.ndarray:
        """Claim the set's generator names (the same name in two sets is an error) and choose its test rows."""
        for g in pd.unique(generators):
            if g in self.owner and self.owner[g] != root:
                raise ValueError(f"generator {g!r} appears in both {self.owner[g]} and {root}; rename one of them")
            self.owner[g] = root
        if not self.balance:
            return np.arange(len(labels))
        idx = balanced_indices(labels, generators, seed=self.seed, max_per_class=self.max_per_class)
        if len(idx) < len(labels):
            self.notes.append(
                f"{root}: balanced by seeded sampling to {len(idx)} of {len(labels)} {self.unit} (seed {self.seed})"
            )
        return idx

    def add(self, paths: np.ndarray, generators: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> None:
        self.parts.append(pd.DataFrame({"path": paths, "generator": generators, "label": labels, "score": scores}))

    def result(
        self,
        *,
        threshold: float,
        calibration: dict | None,
        out: str | os.PathLike[str] | None,
        extra: Sequence[tuple[str, pd.DataFrame]] = (),
    ) -> EvalResult:
        """Per-generator metrics of everything added; with ``out``, metrics.csv, predictions.csv and ``extra``."""
        predictions = pd.concat(self.parts, ignore_index=True)
        metrics = per_generator_metrics(
            predictions,
            threshold=threshold,
            calibrated_threshold=None if calibration is None else float(calibration["threshold"]),
            sources={g: str(root) for g, root in self.owner.items()},
        )
        if out is not None:
            out = Path(out)
            out.mkdir(parents=True, exist_ok=True)
            for name, df in (("metrics.csv", metrics), ("predictions.csv", predictions), *extra):
                atomic_write(out / name, lambda p, df=df: df.to_csv(p, index=False))
        return EvalResult(metrics=metrics, predictions=predictions, notes=self.notes, calibration=calibration)


def check_compatible(info: dict, fs: FeatureSet, run: Path) -> None:
    """Refuse a feature set made differently from the features the head was trained on (dim, backbone, ...)."""
    if info["dim"] != fs.dim:
        raise ValueError(f"{fs.root}: features have dim {fs.dim}, but the head in {run} expects {info['dim']}")
    trained = info.get("features", {})
    for key in FEATURE_KEYS:
        if key == "perturbation":  # robustness sweeps evaluate on perturbed copies on purpose
            continue
        if key in trained and key in fs.meta and trained[key] != fs.meta[key]:
            raise ValueError(
                f"{fs.root}: features were made with {key} {fs.meta[key]!r}, but the head in {run} was trained on "
                f"{trained[key]!r}"
            )


def evaluate(
    run: str | os.PathLike[str],
    test_sets: Sequence[str | os.PathLike[str] | FeatureSet],
    *,
    out: str | os.PathLike[str] | None = None,
    balance: bool = True,
    max_per_class: int | None = None,
    seed: int = 0,
    threshold: float = 0.5,
    device: str = "cpu",
) -> EvalResult:
    """Score every test set with the head in ``run`` and compute per-generator AP/ACC.

    With ``balance`` (the protocol's default), each generator's reals and fakes are subsampled, seeded, to equal
    numbers (capped at ``max_per_class``); the counts used are in the metrics table. With ``out``, writes
    ``metrics.csv`` and ``predictions.csv`` there. The same generator name in two test sets is an error.

    ``acc_oracle`` (best accuracy over thresholds on each generator's own test data) is an optimistic upper
    bound. When ``run`` holds a calibrated threshold (threshold.json, or a detector folder's detector.json), the
    accuracies at that threshold are added as ``*_calibrated`` columns with ``threshold_calibrated``.
    """
    run = Path(run)
    calibration = stored_threshold(run)
    loaded = load_head(run, device=device)
    sets = EvaluationSets(balance=balance, max_per_class=max_per_class, seed=seed)
    for ts in test_sets:
        fs = ts if isinstance(ts, FeatureSet) else open_feature_set(ts)
        check_compatible(loaded.info, fs, run)
        if len(fs) == 0:
            raise MetricsError(f"{fs.root}: the test set has no samples")
        gens = fs.generators
        idx = sets.positions(fs.root, fs.labels, gens)
        sets.add(fs.paths[idx], gens[idx], fs.labels[idx], predict(loaded.head, fs, indices=idx, device=device))
    return sets.result(threshold=threshold, calibration=calibration, out=out)


def format_table(metrics: pd.DataFrame) -> str:
    """A fixed-width text table of a metrics frame, AP and accuracies in percent (oracle and calibrated accuracy
    when the frame has them)."""
    extra = [(c, h) for c, h in (("acc_oracle", "oracle"), ("acc_calibrated", "calib")) if c in metrics.columns]
    header = f"{'generator':<20} {'n_real':>7} {'n_fake':>7} {'AP':>7} {'ACC':>7} {'real':>7} {'fake':>7}"
    header += "".join(f" {h:>7}" for _, h in extra)
    lines = [header, "-" * len(header)]
    for _, r in metrics.iterrows():
        if r["generator"] == "mean":
            lines.append("-" * len(header))
        lines.append(
            f"{str(r['generator'])[:20]:<20} {int(r['n_real']):>7} {int(r['n_fake']):>7} {100 * r['ap']:>7.2f} "
            f"{100 * r['acc']:>7.2f} {100 * r['real_acc']:>7.2f} {100 * r['fake_acc']:>7.2f}"
            + "".join(f" {100 * r[c]:>7.2f}" for c, _ in extra)
        )
    if "threshold_calibrated" in metrics.columns and len(metrics):
        lines.append(f"calib = ACC at the run's calibrated threshold {metrics['threshold_calibrated'].iloc[0]:.4g}")
    if extra:
        lines.append("oracle = best ACC over thresholds on each test set itself: an optimistic upper bound")
    return "\n".join(lines)
