"""Stage 11: reproducing the paper: its tables as data, presets for its data sets, experiments, results tables."""
