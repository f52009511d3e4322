"""Stage 1: image files -> RGB arrays (decoding), dataset layouts on disk, and preprocessing / perturbations."""
