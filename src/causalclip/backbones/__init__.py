"""Stage 2: frozen feature extractors (CLIP through transformers, weight-free forensic ones), chosen by name."""
