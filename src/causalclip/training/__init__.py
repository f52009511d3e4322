"""Stage 6: the training loop and its configuration; writes run folders."""
