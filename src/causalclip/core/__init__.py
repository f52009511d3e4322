"""Stage 0, shared by every stage: atomic result files, typed configs, the code revision and the version."""
