"""Stage 4: AP / ACC and threshold choice, plain functions of labels and scores (used by training and evaluation)."""
