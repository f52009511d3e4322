"""Stage 9: scoring image files with a detector folder (``causalclip detect`` and the Python API)."""
