"""Stage 2b: networks that detect from pixels (NPR, CNNSpot, FreDect), with torchvision's parameter names, their
published training recipes, and the import of the authors' released checkpoints (``weights_only`` loading only)."""
