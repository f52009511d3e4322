"""Evaluation metrics, computed the way every peer does (docs/method.md#evaluation-protocol)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from .errors import MetricsError

__all__ = ["balanced_indices", "binary_metrics", "per_generator_metrics", "probe_accuracy"]

METRIC_COLUMNS = ["generator", "n_real", "n_fake", "ap", "acc", "real_acc", "fake_acc"]
# Added by per_generator_metrics when a calibrated threshold is given (after acc_oracle, which is always there).
CALIBRATED_COLUMNS = ["acc_calibrated", "real_acc_calibrated", "fake_acc_calibrated", "threshold_calibrated"]


def binary_metrics(labels: np.ndarray, scores: np.ndarray, *, threshold: float = 0.5, name: str = "") -> dict:
    """AP (fake = positive), accuracy at ``threshold`` overall, on reals and on fakes, and the mean BCE (``loss``).

    ``scores`` are probabilities of fake; a sample is called fake when score > threshold. Needs both classes.
    """
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise MetricsError(
            f"{name or 'metrics'}: labels {labels.shape} and scores {scores.shape} must be 1-D and equal"
        )
    n_fake = int((labels == 1).sum())
    n_real = int((labels == 0).sum())
    if n_real == 0 or n_fake == 0:
        raise MetricsError(
            f"{name or 'test set'}: AP and accuracy need both real and fake samples, got {n_real} real and {n_fake} fake"
        )
    if not np.isfinite(scores).all():
        raise MetricsError(f"{name or 'test set'}: scores contain NaN or inf")
    pred = (scores > threshold).astype(np.int64)
    correct = pred == labels
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    return {
        "loss": float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p))),
        "n_real": n_real,
        "n_fake": n_fake,
        "ap": float(average_precision_score(labels, scores)),
        "acc": float(correct.mean()),
        "real_acc": float(correct[labels == 0].mean()),
        "fake_acc": float(correct[labels == 1].mean()),
    }


def per_generator_metrics(
    predictions: pd.DataFrame,
    *,
    threshold: float = 0.5,
    calibrated_threshold: float | None = None,
    sources: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per generator plus a final ``mean`` row (mean of the per-generator metrics; sample counts are
    summed). ``predictions`` has columns generator, label, score.

    Columns: METRIC_COLUMNS (AP, accuracy at ``threshold`` overall, on reals, on fakes), then ``acc_oracle`` (the
    best accuracy over thresholds on that generator's own test data: an optimistic upper bound, it uses the test
    labels) and, with ``calibrated_threshold``, ``acc_calibrated``, ``real_acc_calibrated``,
    ``fake_acc_calibrated`` and ``threshold_calibrated``. ``sources`` maps a generator to the test set it came
    from, so that an error (a generator with one class only) names both.
    """
    from .thresholds import oracle_accuracy

    for col in ("generator", "label", "score"):
        if col not in predictions.columns:
            raise MetricsError(f"predictions: missing column {col!r}")
    if len(predictions) == 0:
        raise MetricsError("test sets: no predictions to compute metrics on (the test sets are empty)")
    sources = sources or {}
    rows = []
    for gen, grp in predictions.groupby("generator", sort=False):
        name = f"generator {gen!r}"
        if gen in sources:
            name = f"test set {sources[gen]}, {name}"
        labels, scores = grp["label"].to_numpy(), grp["score"].to_numpy()
        m = binary_metrics(labels, scores, threshold=threshold, name=name)
        m["acc_oracle"] = oracle_accuracy(labels, scores, name=name)
        if calibrated_threshold is not None:
            c = binary_metrics(labels, scores, threshold=calibrated_threshold, name=name)
            m.update({f"{k}_calibrated": c[k] for k in ("acc", "real_acc", "fake_acc")})
            m["threshold_calibrated"] = float(calibrated_threshold)
        rows.append({"generator": gen, **m})
    extra = ["acc_oracle"]
    if calibrated_threshold is not None:
        extra += CALIBRATED_COLUMNS
    table = pd.DataFrame(rows, columns=METRIC_COLUMNS + extra)
    mean = {"generator": "mean", "n_real": int(table["n_real"].sum()), "n_fake": int(table["n_fake"].sum())}
    for col in METRIC_COLUMNS[3:] + extra:
        mean[col] = float(table[col].mean())
    return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)


def balanced_indices(
    labels: np.ndarray, groups: Iterable, *, seed: int, max_per_class: int | None = None
) -> np.ndarray:
    """Seeded sampling of equal numbers of reals and fakes within each group (min of the two counts, capped at
    ``max_per_class``). Returns sorted row indices. Groups with a single class are returned whole, so that the
    metrics step reports them as errors instead of hiding them."""
    labels = np.asarray(labels)
    groups = np.asarray(list(groups), dtype=object)
    rng = np.random.default_rng(seed)
    keep = []
    for g in pd.unique(groups):
        idx = np.flatnonzero(groups == g)
        real, fake = idx[labels[idx] == 0], idx[labels[idx] == 1]
        n = min(len(real), len(fake))
        if n == 0:
            keep.append(idx)
            continue
        if max_per_class is not None:
            n = min(n, max_per_class)
        keep.append(np.sort(rng.choice(real, n, replace=False)))
        keep.append(np.sort(rng.choice(fake, n, replace=False)))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def probe_accuracy(x: np.ndarray, y: np.ndarray, *, seed: int = 0, max_samples: int = 4000) -> float:
    """Held-out accuracy of a fresh logistic-regression probe predicting y from x (half fit, half test).

    Measures how much label information a representation still carries, independently of any adversary that
    the training game may have fooled. Near 0.5 = no linearly recoverable information.
    """
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))[:max_samples]
    x, y = np.asarray(x, dtype=np.float64)[idx], np.asarray(y)[idx]
    half = len(y) // 2
    if half < 2 or len(np.unique(y[:half])) < 2 or len(np.unique(y[half:])) < 2:
        return float("nan")
    # Standardise with the fit half's statistics; constant (masked-out) dimensions stay 0.
    mu, sd = x[:half].mean(0), x[:half].std(0)
    sd[sd < 1e-12] = 1.0
    xs = (x - mu) / sd
    clf = LogisticRegression(max_iter=300, C=1.0)
    clf.fit(xs[:half], y[:half])
    return float((clf.predict(xs[half:]) == y[half:]).mean())
