"""The error raised for unusable labels or scores (one class, NaN, mismatched lengths), naming what was wrong."""

from __future__ import annotations


class MetricsError(ValueError):
    """Metrics are undefined for the given data (e.g. a test set with one class only)."""
