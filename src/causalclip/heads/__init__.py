"""Stage 5: detection heads on cached features (CausalCLIP, UnivFD, VIB-Net), their losses, registry, checkpoints."""
