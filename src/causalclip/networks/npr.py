"""NPR (Tan et al., CVPR 2024): the neighbouring-pixel residual x - up(down(x)) fed to a ResNet-50 cut after layer2.

As in the authors' ``networks/resnet.py`` (github.com/chuangchuangtan/NPR-DeepfakeDetection): nearest
down-sampling by 1/2 then nearest up-sampling by 2, computed on the normalised image inside the network's forward,
scaled by 2/3, then conv1 3x3 stride 2 -> bn1 -> relu -> maxpool -> layer1 (3 blocks) -> layer2 (4 blocks) ->
global average pool -> one logit from 512 features. The authors call the last layer ``fc1``; ours is ``fc``
(torchvision's name, the same for every network here) and the importer maps ``fc1.`` to ``fc.``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .resnet import ResNetTrunk, validate_resnet_shape

__all__ = ["NPRConfig", "NPRNet", "npr_residual"]


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """x - up(down(x)) with nearest sampling by a factor 2: each pixel minus the top-left pixel of its 2x2 cell.

    (n, c, H, W) -> (n, c, H', W') with H', W' = H, W rounded down to even: an odd last row/column is dropped, as
    the authors' README prescribes for odd sizes (their interpolation otherwise fails on them). Equal to their
    ``F.interpolate(F.interpolate(x, scale_factor=0.5, mode="nearest"), scale_factor=2, mode="nearest")``, which
    samples source index floor(i * 2) down and floor(i / 2) up, i.e. x[2 * (i // 2)].
    """
    h, w = x.shape[-2] - x.shape[-2] % 2, x.shape[-1] - x.shape[-1] % 2
    x = x[..., :h, :w]
    anchor = x[..., ::2, ::2]  # (n, c, h/2, w/2): the nearest-down-sampled image
    up = anchor[..., :, None, :, None].expand(*anchor.shape[:-2], h // 2, 2, w // 2, 2).reshape(x.shape)
    return x - up


@dataclass(frozen=True, kw_only=True)
class NPRConfig:
    """NPR's architecture: ResNet-50's first two stages after a 3x3 stride-2 stem (authors' defaults)."""

    layers: tuple[int, ...] = (3, 4)
    widths: tuple[int, ...] = (64, 128)
    stem_width: int = 64

    def validate(self) -> None:
        validate_resnet_shape(self.layers, self.widths, self.stem_width)


class NPRNet(ResNetTrunk):
    """(n, 3, H, W) ImageNet-normalised images -> (n,) logits; H, W >= 32 (odd sizes lose their last row/col)."""

    def __init__(self, config: NPRConfig | None = None):
        config = config or NPRConfig()
        super().__init__(
            layers=config.layers, widths=config.widths, stem_width=config.stem_width, stem_kernel=3, stem_stride=2
        )
        self.config = config

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        # The authors' constant: conv1(NPR * 2.0 / 3.0), evaluated in the same order for identical numbers.
        return npr_residual(x) * 2.0 / 3.0
