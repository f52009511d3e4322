"""Stage 3: the feature-set format, and extraction into it (the job folder; in-process, CPU-pool and Ray engines),
plus the synthetic SCM feature sets."""
