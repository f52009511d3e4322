"""The ResNet trunk shared by NPR, CNNSpot and FreDect, written here because torchvision does not install beside
the CPU torch wheel. Module and parameter names are torchvision's (conv1, bn1, layer1.0.conv1, ...,
layer1.0.downsample.0/1, fc), so the authors' state dicts, which come from torchvision-derived code, map onto it
with at most a short key map (importer.py).

Only the Bottleneck block (ResNet-50 family, torchvision's "v1.5" with the stride on the 3x3 convolution, as in
all three authors' repositories) is needed. A subclass puts its non-learned input transform (NPR's residual,
FreDect's DCT) in :meth:`ResNetTrunk.transform`, so a saved network is self-contained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Bottleneck", "ResNetTrunk", "validate_resnet_shape"]


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here) -> 1x1 with expansion 4; torchvision's names conv1..3, bn1..3, downsample."""

    expansion = 4

    def __init__(self, *, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def validate_resnet_shape(layers: Sequence[int], widths: Sequence[int], stem_width: int) -> None:
    """Raise ValueError unless the stage depths and widths describe a buildable trunk."""
    if len(layers) == 0 or len(layers) != len(widths):
        raise ValueError(f"layers {list(layers)} and widths {list(widths)} must be non-empty and of equal length")
    if any(d < 1 for d in layers) or any(w < 1 for w in widths) or stem_width < 1:
        raise ValueError(f"layers {list(layers)}, widths {list(widths)}, stem_width {stem_width} must all be >= 1")


class ResNetTrunk(nn.Module):
    """conv1 -> bn1 -> relu -> maxpool -> layer1..layerK -> global average pool -> fc (one logit).

    ``layers``/``widths``: blocks and bottleneck width per stage (ResNet-50: (3, 4, 6, 3) and (64, 128, 256, 512));
    the first stage has stride 1, the others stride 2. ``stem_kernel``/``stem_stride``: torchvision's 7x7/2, or
    NPR's 3x3/2. Initialisation is torchvision's (Kaiming-normal fan-out convolutions, BN weight 1 and bias 0,
    PyTorch's default Linear init for fc); ``fc_init_std`` redraws fc's weight from N(0, std) as CNNSpot's trainer
    does for its new head.
    """

    needs_fit = False  # no statistics fitted on training data (FreDect overrides this)
    input_size: int | None = None  # any H, W the global pooling allows (FreDect's per-frequency statistics fix it)

    def __init__(
        self,
        *,
        layers: Sequence[int],
        widths: Sequence[int],
        stem_width: int = 64,
        stem_kernel: int = 7,
        stem_stride: int = 2,
        in_channels: int = 3,
        fc_init_std: float | None = None,
    ):
        super().__init__()
        validate_resnet_shape(layers, widths, stem_width)
        self.conv1 = nn.Conv2d(
            in_channels, stem_width, kernel_size=stem_kernel, stride=stem_stride, padding=stem_kernel // 2, bias=False
        )
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem_width
        for i, (depth, planes) in enumerate(zip(layers, widths, strict=True)):
            stage, inplanes = _make_stage(inplanes, planes, depth, stride=1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", stage)
        self.num_stages = len(layers)
        self.num_features = inplanes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if fc_init_std is not None:
            nn.init.normal_(self.fc.weight, 0.0, fc_init_std)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The non-learned input transform (identity here); subclasses compute NPR's residual or FreDect's DCT."""
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) transformed input -> (n, num_features) pooled trunk features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) normalised images -> (n,) logits (> 0: fake)."""
        return self.fc(self.features(self.transform(x))).squeeze(1)


def _make_stage(inplanes: int, planes: int, depth: int, *, stride: int) -> tuple[nn.Sequential, int]:
    out = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != out:  # torchvision's rule: project the identity when shape changes
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out),
        )
    blocks = [Bottleneck(inplanes=inplanes, planes=planes, stride=stride, downsample=downsample)]
    blocks += [Bottleneck(inplanes=out, planes=planes) for _ in range(1, depth)]
    return nn.Sequential(*blocks), out
