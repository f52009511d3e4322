"""Evaluate a trained head on one or more test feature sets, per generator (METHOD.md section 4)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .checkpoint import load_head
from .features import FeatureSet, atomic_write, open_feature_set
from .metrics import balanced_indices, per_generator_metrics
from .train import FEATURE_KEYS, predict

__all__ = ["EvalResult", "evaluate", "format_table"]


@dataclass
class EvalResult:
    metrics: pd.DataFrame  # generator, n_real, n_fake, ap, acc, real_acc, fake_acc (+ a "mean" row)
    predictions: pd.DataFrame  # path, generator, label, score
    notes: list[str]


def _check_compatible(info: dict, fs: FeatureSet, run: Path) -> None:
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
    """
    run = Path(run)
    loaded = load_head(run, device=device)
    parts, notes = [], []
    owner: dict[str, Path] = {}
    for ts in test_sets:
        fs = ts if isinstance(ts, FeatureSet) else open_feature_set(ts)
        _check_compatible(loaded.info, fs, run)
        gens = fs.generators
        for g in pd.unique(gens):
            if g in owner and owner[g] != fs.root:
                raise ValueError(f"generator {g!r} appears in both {owner[g]} and {fs.root}; rename one of them")
            owner[g] = fs.root
        if balance:
            idx = balanced_indices(fs.labels, gens, seed=seed, max_per_class=max_per_class)
            if len(idx) < len(fs):
                notes.append(f"{fs.root}: balanced by seeded sampling to {len(idx)} of {len(fs)} samples (seed {seed})")
        else:
            idx = np.arange(len(fs))
        scores = predict(loaded.head, fs, indices=idx, device=device)
        parts.append(
            pd.DataFrame({"path": fs.paths[idx], "generator": gens[idx], "label": fs.labels[idx], "score": scores})
        )
    predictions = pd.concat(parts, ignore_index=True)
    metrics = per_generator_metrics(predictions, threshold=threshold)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name, df in (("metrics.csv", metrics), ("predictions.csv", predictions)):
            atomic_write(out / name, lambda p, df=df: df.to_csv(p, index=False))
    return EvalResult(metrics=metrics, predictions=predictions, notes=notes)


def format_table(metrics: pd.DataFrame) -> str:
    """A fixed-width text table of a metrics frame, AP and accuracies in percent."""
    header = f"{'generator':<20} {'n_real':>7} {'n_fake':>7} {'AP':>7} {'ACC':>7} {'real':>7} {'fake':>7}"
    lines = [header, "-" * len(header)]
    for _, r in metrics.iterrows():
        if r["generator"] == "mean":
            lines.append("-" * len(header))
        lines.append(
            f"{str(r['generator'])[:20]:<20} {int(r['n_real']):>7} {int(r['n_fake']):>7} {100 * r['ap']:>7.2f} "
            f"{100 * r['acc']:>7.2f} {100 * r['real_acc']:>7.2f} {100 * r['fake_acc']:>7.2f}"
        )
    return "\n".join(lines)
