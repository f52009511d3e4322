"""CNNSpot (Wang et al., CVPR 2020): a torchvision ResNet-50 whose fc gives one logit, started from ImageNet weights.

As in the authors' ``networks/resnet.py`` and ``networks/trainer.py`` (github.com/PeterWang512/CNNDetection): the
full ResNet-50 (7x7 stem, stages of 3, 4, 6, 3 bottlenecks), ``fc`` replaced by Linear(2048, 1) with weights drawn
from N(0, 0.02) (``--init_gain``). The ImageNet start comes from a user's torchvision file through
:func:`causalclip.networks.importer.load_imagenet_weights`; without one the network starts from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass

from .resnet import ResNetTrunk, validate_resnet_shape

__all__ = ["CNNSpotConfig", "CNNSpotNet", "RESNET50_LAYERS", "RESNET50_WIDTHS"]

RESNET50_LAYERS = (3, 4, 6, 3)
RESNET50_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True, kw_only=True)
class CNNSpotConfig:
    """CNNSpot's architecture: torchvision's ResNet-50 with a one-logit fc (smaller layers/widths for tests)."""

    layers: tuple[int, ...] = RESNET50_LAYERS
    widths: tuple[int, ...] = RESNET50_WIDTHS
    stem_width: int = 64
    fc_init_std: float = 0.02  # the authors' --init_gain for the new fc

    def validate(self) -> None:
        validate_resnet_shape(self.layers, self.widths, self.stem_width)
        if not self.fc_init_std > 0:
            raise ValueError(f"fc_init_std: must be > 0, got {self.fc_init_std}")


class CNNSpotNet(ResNetTrunk):
    """(n, 3, H, W) ImageNet-normalised images -> (n,) logits; any H, W >= 32."""

    def __init__(self, config: CNNSpotConfig | None = None):
        config = config or CNNSpotConfig()
        super().__init__(
            layers=config.layers,
            widths=config.widths,
            stem_width=config.stem_width,
            stem_kernel=7,
            stem_stride=2,
            fc_init_std=config.fc_init_std,
        )
        self.config = config
