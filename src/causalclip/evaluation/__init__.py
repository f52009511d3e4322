"""Stage 7: evaluating runs on test feature sets, calibrating thresholds, figures (mask report, UMAP, robustness)."""
