"""Stage 8: detector folders, a run packaged with the description of its backbone and preprocessing."""
