"""Stage 2b: networks that detect from pixels (NPR, CNNSpot, FreDect), with torchvision's parameter names, their
published training recipes, and the import of the authors' released checkpoints (``weights_only`` loading only).

Select by name through :data:`NETWORKS` / :func:`build_network`; every module maps (n, 3, H, W) images, normalised
with its recipe's mean/std, to (n,) logits (> 0: fake), with its non-learned input transform inside ``forward``.
"""

from .importer import CheckpointImportError, import_network, load_imagenet_weights, read_state_dict
from .registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NETWORKS,
    NetworkMethod,
    Recipe,
    build_network,
    get_network_method,
    network_config_dict,
)

__all__ = [
    "CheckpointImportError",
    "import_network",
    "load_imagenet_weights",
    "read_state_dict",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NETWORKS",
    "NetworkMethod",
    "Recipe",
    "build_network",
    "get_network_method",
    "network_config_dict",
]
