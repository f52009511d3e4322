"""Stage 2b: networks that detect from pixels (NPR, CNNSpot, FreDect, Fusing, LGrad), with torchvision's parameter names, their
published training recipes, and the import of the authors' released checkpoints (``weights_only`` loading only).

Select by name through :data:`NETWORKS` / :func:`build_network`; every module maps (n, 3, H, W) images, normalised
with its recipe's mean/std, to (n,) logits (> 0: fake), with its non-learned input transform inside ``forward``.
"""

from .fusing import FusingConfig, FusingNet, select_patches
from .importer import (
    CheckpointImportError,
    import_network,
    load_imagenet_weights,
    read_lgrad_transform,
    read_state_dict,
)
from .lgrad import LGradConfig, LGradNet, StyleGANDiscriminator, for_raw_images, gradient_map, input_gradient
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
    "FusingConfig",
    "FusingNet",
    "LGradConfig",
    "LGradNet",
    "StyleGANDiscriminator",
    "for_raw_images",
    "gradient_map",
    "import_network",
    "input_gradient",
    "load_imagenet_weights",
    "read_lgrad_transform",
    "read_state_dict",
    "select_patches",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NETWORKS",
    "NetworkMethod",
    "Recipe",
    "build_network",
    "get_network_method",
    "network_config_dict",
]
