"""Fusing (Ju et al., ICIP 2022, "Fusing global and local features for generalized AI-synthesized image detection").

As in the authors' ``networks/trainer.py`` (github.com/littlejuyan/FusingGlobalandLocal: ``Patch5Model``, ``COOI``,
``SA_layer``) and AIGCDetectBenchmark's copy (``networks/Patch5Model.py``):

1. **Global branch**: the image resized (shorter side) and centre-cropped to 224 goes through a ResNet-50
   (ImageNet start), giving the last feature map ``fm`` (n, 2048, 7, 7) and its pooled embedding (n, 2048).
2. **Patch selection module** (PSM, the authors' ``COOI``): ``fm`` averaged over 3 x 3 and 2 x 2 windows and summed
   over channels gives two score maps (5 x 5 and 6 x 6 for a 7 x 7 map): the network's own activation "attention".
   On each, the highest-scoring window is taken three times, each time zeroing the 3 x 3 neighbourhood of the
   maximum (non-maximum suppression). Each window maps to a square patch of the ORIGINAL image (224 px for the 3 x 3
   windows, 112 px for the 2 x 2 ones) centred at the window's position inside the central square the global view
   was cut from; patches are shifted inside the image, and resized to 224 (bilinear, align_corners=True).
3. The six patches go through the SAME ResNet-50; global and local embeddings are reduced by one shared
   ``fc1`` (2048 -> 128) + ReLU.
4. **Attention-based fusion**: the seven tokens (six local, then the global one) pass three self-attention layers
   (``nn.MultiheadAttention(128, 4)`` + LayerNorm + a 128-128-128 MLP + LayerNorm); ``fc`` (128 -> 1) reads the
   global token.

The patch selection sees ``fm.detach()`` (no gradient through the choice, as the authors). Module names follow the
authors' (``resnet``, ``mha_list.{i}.mha``, ``fc1``, ``fc``) so their checkpoints load with no renaming; their
``resnet.fc`` (the unused 1000-way ImageNet layer) is dropped by the importer.

The authors feed the full-resolution image and its size; here the input is what the pipeline gives the network
(the recipe's crop of the image), and its height and width play the image's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cnnspot import RESNET50_LAYERS, RESNET50_WIDTHS
from .resnet import ResNetTrunk, validate_resnet_shape

__all__ = ["FusingConfig", "FusingNet", "SelfAttentionLayer", "feature_map_side", "patch_scores", "select_patches"]


@dataclass(frozen=True, kw_only=True)
class FusingConfig:
    """Fusing's architecture: the authors' defaults (smaller trunk, sizes and dims for tests)."""

    layers: tuple[int, ...] = RESNET50_LAYERS
    widths: tuple[int, ...] = RESNET50_WIDTHS
    stem_width: int = 64
    global_size: int = 224  # the global view's size, and the size every patch is resized to (COOI.cropped_size)
    # The size the patches are resized to when not the global view's (None: global_size, the authors'). Smaller is
    # cheaper: the shared trunk's cost grows with the square of its input (the demo's narrow Fusing uses it).
    local_size: int | None = None
    score_windows: tuple[int, ...] = (3, 2)  # score_filter_size_list: window side on the feature map, per type
    patches_per_window: tuple[int, ...] = (3, 3)  # score_filter_num_list
    patch_sizes: tuple[int, ...] = (224, 112)  # score_corresponding_patch_size_list: patch side in the image
    nms_size: int = 3  # score_nms_size_list: the neighbourhood zeroed around each pick
    embed_dim: int = 128
    heads: int = 4
    depth: int = 3  # self-attention layers (the authors' mha_list)

    def validate(self) -> None:
        validate_resnet_shape(self.layers, self.widths, self.stem_width)
        n = len(self.score_windows)
        if n == 0 or len(self.patches_per_window) != n or len(self.patch_sizes) != n:
            raise ValueError(
                f"score_windows {list(self.score_windows)}, patches_per_window {list(self.patches_per_window)} and "
                f"patch_sizes {list(self.patch_sizes)} must be non-empty and of equal length"
            )
        for name in ("score_windows", "patches_per_window", "patch_sizes"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"{name}: values must be >= 1, got {list(getattr(self, name))}")
        if self.local_size is not None and self.local_size < 1:
            raise ValueError(f"local_size: must be >= 1 or null, got {self.local_size}")
        if self.nms_size < 1 or self.nms_size % 2 == 0:
            raise ValueError(f"nms_size: an odd size >= 1, got {self.nms_size}")
        side = feature_map_side(self.global_size, len(self.layers))
        if side < max(self.score_windows):
            raise ValueError(
                f"global_size {self.global_size} gives a {side} x {side} feature map, smaller than the largest score "
                f"window {max(self.score_windows)}"
            )
        if self.embed_dim < 1 or self.heads < 1 or self.embed_dim % self.heads or self.depth < 1:
            raise ValueError(
                f"embed_dim {self.embed_dim} must be divisible by heads {self.heads}; depth {self.depth} >= 1"
            )


def feature_map_side(size: int, stages: int) -> int:
    """The side of the trunk's last feature map for a size x size input: conv1, max-pool and every stage after
    the first halve it (rounding up)."""
    side = size
    for _ in range(2 + stages - 1):
        side = (side + 1) // 2
    return side


class _Trunk(ResNetTrunk):
    """The shared ResNet-50: torchvision's names, no fc (the authors' 1000-way fc is never used)."""

    def __init__(self, config: FusingConfig):
        super().__init__(layers=config.layers, widths=config.widths, stem_width=config.stem_width)
        del self.fc

    def feature_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, S, S) -> last feature map (n, C, h, w) and its global average (n, C)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return x, torch.flatten(self.avgpool(x), 1)


class SelfAttentionLayer(nn.Module):
    """The authors' ``SA_layer``: post-norm self-attention then a residual two-layer MLP, on (n, tokens, dim)."""

    def __init__(self, *, dim: int, heads: int):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads)
        self.ln1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.ac = nn.ReLU()
        self.fc2 = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.transpose(0, 1)  # (tokens, n, dim): MultiheadAttention's default layout, as the authors call it
        y, _ = self.mha(t, t, t, need_weights=False)
        x = self.ln1(t + y).transpose(0, 1)
        x = x + self.fc2(self.ac(self.fc1(x)))
        return self.ln2(x)


def patch_scores(fm: torch.Tensor, window: int) -> torch.Tensor:
    """(n, C, h, w) feature map -> (n, h - window + 1, w - window + 1) window scores: the mean over each window,
    summed over channels (the PSM's attention: after ResNet's last ReLU every score is >= 0)."""
    return F.avg_pool2d(fm, window, stride=1).sum(dim=1)


def select_patches(
    fm: torch.Tensor,
    height: int,
    width: int,
    *,
    score_windows: Sequence[int] = (3, 2),
    patches_per_window: Sequence[int] = (3, 3),
    patch_sizes: Sequence[int] = (224, 112),
    nms_size: int = 3,
) -> torch.Tensor:
    """The patch selection module: (n, C, h, w) feature map of the global view of (height x width) images ->
    (n, P, 4) int64 boxes (top, left, bottom, right) in image coordinates, P = sum(patches_per_window), in the
    order picked (per window type, highest score first).

    Each pick is the arg-max of the current scores (first in row-major order on ties); then every position whose
    ``nms_size`` neighbourhood holds that maximum is zeroed. The window's centre maps into the central
    min(height, width) square (which the global view shows) and the box is shifted to lie inside the image.
    """
    with torch.no_grad():
        n, _, fh, fw = fm.shape
        side = min(height, width)
        base_h, base_w = (height - side) // 2, (width - side) // 2
        boxes = []
        for window, count, size in zip(score_windows, patches_per_window, patch_sizes, strict=True):
            score = patch_scores(fm, window)[:, None]  # (n, 1, sh, sw)
            sh, sw = score.shape[-2:]
            for _ in range(count):
                value, flat = score.view(n, -1).max(dim=1)  # (n,)
                row, col = flat // sw, flat % sw
                peak = F.max_pool2d(score, nms_size, stride=1, padding=nms_size // 2)
                score = score * (peak != value.view(n, 1, 1, 1)).to(score.dtype)
                # The window's centre, as a fraction of the feature map, placed in the central square; in float32
                # as the authors compute it (so a product that lands just below an integer truncates the same way).
                rate_h = (2 * row + fh - sh + 1).float() / (2 * fh)
                rate_w = (2 * col + fw - sw + 1).float() / (2 * fw)
                cy = (base_h + torch.tensor(float(side)) * rate_h).long()
                cx = (base_w + torch.tensor(float(side)) * rate_w).long()
                top, left = cy - size // 2, cx - size // 2
                bottom, right = cy + size // 2 + size % 2, cx + size // 2 + size % 2
                # Shift inside the image: first off the top/left edge, then off the bottom/right one, and clip
                # the top/left at 0 when the patch is larger than the image.
                below_h, below_w = top.clamp(max=0), left.clamp(max=0)
                top, bottom, left, right = top - below_h, bottom - below_h, left - below_w, right - below_w
                over_h, over_w = (bottom - height).clamp(min=0), (right - width).clamp(min=0)
                top, bottom, left, right = top - over_h, bottom - over_h, left - over_w, right - over_w
                boxes.append(torch.stack((top.clamp(min=0), left.clamp(min=0), bottom, right), dim=1))
        return torch.stack(boxes, dim=1)


def _global_view(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's Resize(size) (shorter side, bilinear with antialias) then CenterCrop(size)."""
    h, w = x.shape[-2:]
    if min(h, w) != size:
        s = size / min(h, w)
        new = (size, max(size, int(w * s))) if h <= w else (max(size, int(h * s)), size)
        x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=True)
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


class FusingNet(nn.Module):
    """(n, 3, H, W) ImageNet-normalised images -> (n,) logits from the fused global and local features."""

    needs_fit = False
    input_size: int | None = None
    imagenet_prefix = "resnet."  # where importer.load_imagenet_weights puts a torchvision ResNet-50

    def __init__(self, config: FusingConfig | None = None):
        super().__init__()
        config = config or FusingConfig()
        config.validate()
        self.resnet = _Trunk(config)
        self.mha_list = nn.Sequential(
            *(SelfAttentionLayer(dim=config.embed_dim, heads=config.heads) for _ in range(config.depth))
        )
        self.fc1 = nn.Linear(self.resnet.num_features, config.embed_dim)
        self.ac = nn.ReLU()
        self.fc = nn.Linear(config.embed_dim, 1)
        self.config = config

    def boxes(self, fm: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The patches the PSM picks from the global view's feature map (see :func:`select_patches`)."""
        c = self.config
        return select_patches(
            fm.detach(),
            height,
            width,
            score_windows=c.score_windows,
            patches_per_window=c.patches_per_window,
            patch_sizes=c.patch_sizes,
            nms_size=c.nms_size,
        )

    def crop_patches(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) images and (n, P, 4) boxes -> (n * P, 3, S, S) patches resized to S = the local size
        (``local_size``, by default the global view's)."""
        size = self.config.local_size or self.config.global_size
        out = []
        for img, img_boxes in zip(x, boxes.tolist(), strict=True):
            for top, left, bottom, right in img_boxes:
                patch = img[None, :, top:bottom, left:right]
                if patch.shape[-2:] != (size, size):
                    patch = F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=True)
                out.append(patch)
        return torch.cat(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        fm, whole = self.resnet.feature_map(_global_view(x, self.config.global_size))  # (n, C, 7, 7), (n, C)
        boxes = self.boxes(fm, h, w)  # (n, P, 4)
        p = boxes.shape[1]
        _, local = self.resnet.feature_map(self.crop_patches(x.detach(), boxes))  # (n * P, C)
        tokens = torch.cat(
            (self.ac(self.fc1(local)).view(n, p, -1), self.ac(self.fc1(whole)).view(n, 1, -1)), dim=1
        )  # (n, P + 1, dim): the local tokens, then the global one
        return self.fc(self.mha_list(tokens)[:, -1]).squeeze(1)
