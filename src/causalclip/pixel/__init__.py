"""Stage 7b: training and evaluating the networks of :mod:`causalclip.networks` on image files (data loading in
worker processes, resumable epochs, DDP under torchrun), into the same run folders, metrics and detectors as heads."""
