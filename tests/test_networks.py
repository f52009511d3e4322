"""The networks trained on images (causalclip.networks): the authors' key lists written out, NPR's residual and the
DCT against independent computations, the fitted DCT statistics against NumPy, and one contract over every
registered network (timm-style): shape, finite, gradients, 64 and 224 inputs, determinism in eval mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from causalclip.core.config import ConfigError, config_from_dict, config_to_dict
from causalclip.networks import NETWORKS, Recipe, build_network, get_network_method, network_config_dict
from causalclip.networks.fredect import LogDCTNormalizer, dct_matrix, log_dct
from causalclip.networks.npr import npr_residual

# The authors' architectures' state dicts, written out: "name shape" ("-" = a scalar). NPR: networks/resnet.py of
# chuangchuangtan/NPR-DeepfakeDetection (3x3 stem, layer1-2, fc1 512 -> 1), as resnet50(num_classes=1) saves it.
NPR_KEYS = """
conv1.weight 64,3,3,3
bn1.weight 64
bn1.bias 64
bn1.running_mean 64
bn1.running_var 64
bn1.num_batches_tracked -
layer1.0.conv1.weight 64,64,1,1
layer1.0.bn1.weight 64
layer1.0.bn1.bias 64
layer1.0.bn1.running_mean 64
layer1.0.bn1.running_var 64
layer1.0.bn1.num_batches_tracked -
layer1.0.conv2.weight 64,64,3,3
layer1.0.bn2.weight 64
layer1.0.bn2.bias 64
layer1.0.bn2.running_mean 64
layer1.0.bn2.running_var 64
layer1.0.bn2.num_batches_tracked -
layer1.0.conv3.weight 256,64,1,1
layer1.0.bn3.weight 256
layer1.0.bn3.bias 256
layer1.0.bn3.running_mean 256
layer1.0.bn3.running_var 256
layer1.0.bn3.num_batches_tracked -
layer1.0.downsample.0.weight 256,64,1,1
layer1.0.downsample.1.weight 256
layer1.0.downsample.1.bias 256
layer1.0.downsample.1.running_mean 256
layer1.0.downsample.1.running_var 256
layer1.0.downsample.1.num_batches_tracked -
layer1.1.conv1.weight 64,256,1,1
layer1.1.bn1.weight 64
layer1.1.bn1.bias 64
layer1.1.bn1.running_mean 64
layer1.1.bn1.running_var 64
layer1.1.bn1.num_batches_tracked -
layer1.1.conv2.weight 64,64,3,3
layer1.1.bn2.weight 64
layer1.1.bn2.bias 64
layer1.1.bn2.running_mean 64
layer1.1.bn2.running_var 64
layer1.1.bn2.num_batches_tracked -
layer1.1.conv3.weight 256,64,1,1
layer1.1.bn3.weight 256
layer1.1.bn3.bias 256
layer1.1.bn3.running_mean 256
layer1.1.bn3.running_var 256
layer1.1.bn3.num_batches_tracked -
layer1.2.conv1.weight 64,256,1,1
layer1.2.bn1.weight 64
layer1.2.bn1.bias 64
layer1.2.bn1.running_mean 64
layer1.2.bn1.running_var 64
layer1.2.bn1.num_batches_tracked -
layer1.2.conv2.weight 64,64,3,3
layer1.2.bn2.weight 64
layer1.2.bn2.bias 64
layer1.2.bn2.running_mean 64
layer1.2.bn2.running_var 64
layer1.2.bn2.num_batches_tracked -
layer1.2.conv3.weight 256,64,1,1
layer1.2.bn3.weight 256
layer1.2.bn3.bias 256
layer1.2.bn3.running_mean 256
layer1.2.bn3.running_var 256
layer1.2.bn3.num_batches_tracked -
layer2.0.conv1.weight 128,256,1,1
layer2.0.bn1.weight 128
layer2.0.bn1.bias 128
layer2.0.bn1.running_mean 128
layer2.0.bn1.running_var 128
layer2.0.bn1.num_batches_tracked -
layer2.0.conv2.weight 128,128,3,3
layer2.0.bn2.weight 128
layer2.0.bn2.bias 128
layer2.0.bn2.running_mean 128
layer2.0.bn2.running_var 128
layer2.0.bn2.num_batches_tracked -
layer2.0.conv3.weight 512,128,1,1
layer2.0.bn3.weight 512
layer2.0.bn3.bias 512
layer2.0.bn3.running_mean 512
layer2.0.bn3.running_var 512
layer2.0.bn3.num_batches_tracked -
layer2.0.downsample.0.weight 512,256,1,1
layer2.0.downsample.1.weight 512
layer2.0.downsample.1.bias 512
layer2.0.downsample.1.running_mean 512
layer2.0.downsample.1.running_var 512
layer2.0.downsample.1.num_batches_tracked -
layer2.1.conv1.weight 128,512,1,1
layer2.1.bn1.weight 128
layer2.1.bn1.bias 128
layer2.1.bn1.running_mean 128
layer2.1.bn1.running_var 128
layer2.1.bn1.num_batches_tracked -
layer2.1.conv2.weight 128,128,3,3
layer2.1.bn2.weight 128
layer2.1.bn2.bias 128
layer2.1.bn2.running_mean 128
layer2.1.bn2.running_var 128
layer2.1.bn2.num_batches_tracked -
layer2.1.conv3.weight 512,128,1,1
layer2.1.bn3.weight 512
layer2.1.bn3.bias 512
layer2.1.bn3.running_mean 512
layer2.1.bn3.running_var 512
layer2.1.bn3.num_batches_tracked -
layer2.2.conv1.weight 128,512,1,1
layer2.2.bn1.weight 128
layer2.2.bn1.bias 128
layer2.2.bn1.running_mean 128
layer2.2.bn1.running_var 128
layer2.2.bn1.num_batches_tracked -
layer2.2.conv2.weight 128,128,3,3
layer2.2.bn2.weight 128
layer2.2.bn2.bias 128
layer2.2.bn2.running_mean 128
layer2.2.bn2.running_var 128
layer2.2.bn2.num_batches_tracked -
layer2.2.conv3.weight 512,128,1,1
layer2.2.bn3.weight 512
layer2.2.bn3.bias 512
layer2.2.bn3.running_mean 512
layer2.2.bn3.running_var 512
layer2.2.bn3.num_batches_tracked -
layer2.3.conv1.weight 128,512,1,1
layer2.3.bn1.weight 128
layer2.3.bn1.bias 128
layer2.3.bn1.running_mean 128
layer2.3.bn1.running_var 128
layer2.3.bn1.num_batches_tracked -
layer2.3.conv2.weight 128,128,3,3
layer2.3.bn2.weight 128
layer2.3.bn2.bias 128
layer2.3.bn2.running_mean 128
layer2.3.bn2.running_var 128
layer2.3.bn2.num_batches_tracked -
layer2.3.conv3.weight 512,128,1,1
layer2.3.bn3.weight 512
layer2.3.bn3.bias 512
layer2.3.bn3.running_mean 512
layer2.3.bn3.running_var 512
layer2.3.bn3.num_batches_tracked -
fc1.weight 1,512
fc1.bias 1
"""

# torchvision's resnet50() with fc = Linear(2048, 1): CNNSpot (PeterWang512/CNNDetection networks/resnet.py,
# resnet50(num_classes=1)) and AIGCDetectBenchmark's FreDect (torchvision.models.resnet50(), fc replaced).
RESNET50_KEYS = """
conv1.weight 64,3,7,7
bn1.weight 64
bn1.bias 64
bn1.running_mean 64
bn1.running_var 64
bn1.num_batches_tracked -
layer1.0.conv1.weight 64,64,1,1
layer1.0.bn1.weight 64
layer1.0.bn1.bias 64
layer1.0.bn1.running_mean 64
layer1.0.bn1.running_var 64
layer1.0.bn1.num_batches_tracked -
layer1.0.conv2.weight 64,64,3,3
layer1.0.bn2.weight 64
layer1.0.bn2.bias 64
layer1.0.bn2.running_mean 64
layer1.0.bn2.running_var 64
layer1.0.bn2.num_batches_tracked -
layer1.0.conv3.weight 256,64,1,1
layer1.0.bn3.weight 256
layer1.0.bn3.bias 256
layer1.0.bn3.running_mean 256
layer1.0.bn3.running_var 256
layer1.0.bn3.num_batches_tracked -
layer1.0.downsample.0.weight 256,64,1,1
layer1.0.downsample.1.weight 256
layer1.0.downsample.1.bias 256
layer1.0.downsample.1.running_mean 256
layer1.0.downsample.1.running_var 256
layer1.0.downsample.1.num_batches_tracked -
layer1.1.conv1.weight 64,256,1,1
layer1.1.bn1.weight 64
layer1.1.bn1.bias 64
layer1.1.bn1.running_mean 64
layer1.1.bn1.running_var 64
layer1.1.bn1.num_batches_tracked -
layer1.1.conv2.weight 64,64,3,3
layer1.1.bn2.weight 64
layer1.1.bn2.bias 64
layer1.1.bn2.running_mean 64
layer1.1.bn2.running_var 64
layer1.1.bn2.num_batches_tracked -
layer1.1.conv3.weight 256,64,1,1
layer1.1.bn3.weight 256
layer1.1.bn3.bias 256
layer1.1.bn3.running_mean 256
layer1.1.bn3.running_var 256
layer1.1.bn3.num_batches_tracked -
layer1.2.conv1.weight 64,256,1,1
layer1.2.bn1.weight 64
layer1.2.bn1.bias 64
layer1.2.bn1.running_mean 64
layer1.2.bn1.running_var 64
layer1.2.bn1.num_batches_tracked -
layer1.2.conv2.weight 64,64,3,3
layer1.2.bn2.weight 64
layer1.2.bn2.bias 64
layer1.2.bn2.running_mean 64
layer1.2.bn2.running_var 64
layer1.2.bn2.num_batches_tracked -
layer1.2.conv3.weight 256,64,1,1
layer1.2.bn3.weight 256
layer1.2.bn3.bias 256
layer1.2.bn3.running_mean 256
layer1.2.bn3.running_var 256
layer1.2.bn3.num_batches_tracked -
layer2.0.conv1.weight 128,256,1,1
layer2.0.bn1.weight 128
layer2.0.bn1.bias 128
layer2.0.bn1.running_mean 128
layer2.0.bn1.running_var 128
layer2.0.bn1.num_batches_tracked -
layer2.0.conv2.weight 128,128,3,3
layer2.0.bn2.weight 128
layer2.0.bn2.bias 128
layer2.0.bn2.running_mean 128
layer2.0.bn2.running_var 128
layer2.0.bn2.num_batches_tracked -
layer2.0.conv3.weight 512,128,1,1
layer2.0.bn3.weight 512
layer2.0.bn3.bias 512
layer2.0.bn3.running_mean 512
layer2.0.bn3.running_var 512
layer2.0.bn3.num_batches_tracked -
layer2.0.downsample.0.weight 512,256,1,1
layer2.0.downsample.1.weight 512
layer2.0.downsample.1.bias 512
layer2.0.downsample.1.running_mean 512
layer2.0.downsample.1.running_var 512
layer2.0.downsample.1.num_batches_tracked -
layer2.1.conv1.weight 128,512,1,1
layer2.1.bn1.weight 128
layer2.1.bn1.bias 128
layer2.1.bn1.running_mean 128
layer2.1.bn1.running_var 128
layer2.1.bn1.num_batches_tracked -
layer2.1.conv2.weight 128,128,3,3
layer2.1.bn2.weight 128
layer2.1.bn2.bias 128
layer2.1.bn2.running_mean 128
layer2.1.bn2.running_var 128
layer2.1.bn2.num_batches_tracked -
layer2.1.conv3.weight 512,128,1,1
layer2.1.bn3.weight 512
layer2.1.bn3.bias 512
layer2.1.bn3.running_mean 512
layer2.1.bn3.running_var 512
layer2.1.bn3.num_batches_tracked -
layer2.2.conv1.weight 128,512,1,1
layer2.2.bn1.weight 128
layer2.2.bn1.bias 128
layer2.2.bn1.running_mean 128
layer2.2.bn1.running_var 128
layer2.2.bn1.num_batches_tracked -
layer2.2.conv2.weight 128,128,3,3
layer2.2.bn2.weight 128
layer2.2.bn2.bias 128
layer2.2.bn2.running_mean 128
layer2.2.bn2.running_var 128
layer2.2.bn2.num_batches_tracked -
layer2.2.conv3.weight 512,128,1,1
layer2.2.bn3.weight 512
layer2.2.bn3.bias 512
layer2.2.bn3.running_mean 512
layer2.2.bn3.running_var 512
layer2.2.bn3.num_batches_tracked -
layer2.3.conv1.weight 128,512,1,1
layer2.3.bn1.weight 128
layer2.3.bn1.bias 128
layer2.3.bn1.running_mean 128
layer2.3.bn1.running_var 128
layer2.3.bn1.num_batches_tracked -
layer2.3.conv2.weight 128,128,3,3
layer2.3.bn2.weight 128
layer2.3.bn2.bias 128
layer2.3.bn2.running_mean 128
layer2.3.bn2.running_var 128
layer2.3.bn2.num_batches_tracked -
layer2.3.conv3.weight 512,128,1,1
layer2.3.bn3.weight 512
layer2.3.bn3.bias 512
layer2.3.bn3.running_mean 512
layer2.3.bn3.running_var 512
layer2.3.bn3.num_batches_tracked -
layer3.0.conv1.weight 256,512,1,1
layer3.0.bn1.weight 256
layer3.0.bn1.bias 256
layer3.0.bn1.running_mean 256
layer3.0.bn1.running_var 256
layer3.0.bn1.num_batches_tracked -
layer3.0.conv2.weight 256,256,3,3
layer3.0.bn2.weight 256
layer3.0.bn2.bias 256
layer3.0.bn2.running_mean 256
layer3.0.bn2.running_var 256
layer3.0.bn2.num_batches_tracked -
layer3.0.conv3.weight 1024,256,1,1
layer3.0.bn3.weight 1024
layer3.0.bn3.bias 1024
layer3.0.bn3.running_mean 1024
layer3.0.bn3.running_var 1024
layer3.0.bn3.num_batches_tracked -
layer3.0.downsample.0.weight 1024,512,1,1
layer3.0.downsample.1.weight 1024
layer3.0.downsample.1.bias 1024
layer3.0.downsample.1.running_mean 1024
layer3.0.downsample.1.running_var 1024
layer3.0.downsample.1.num_batches_tracked -
layer3.1.conv1.weight 256,1024,1,1
layer3.1.bn1.weight 256
layer3.1.bn1.bias 256
layer3.1.bn1.running_mean 256
layer3.1.bn1.running_var 256
layer3.1.bn1.num_batches_tracked -
layer3.1.conv2.weight 256,256,3,3
layer3.1.bn2.weight 256
layer3.1.bn2.bias 256
layer3.1.bn2.running_mean 256
layer3.1.bn2.running_var 256
layer3.1.bn2.num_batches_tracked -
layer3.1.conv3.weight 1024,256,1,1
layer3.1.bn3.weight 1024
layer3.1.bn3.bias 1024
layer3.1.bn3.running_mean 1024
layer3.1.bn3.running_var 1024
layer3.1.bn3.num_batches_tracked -
layer3.2.conv1.weight 256,1024,1,1
layer3.2.bn1.weight 256
layer3.2.bn1.bias 256
layer3.2.bn1.running_mean 256
layer3.2.bn1.running_var 256
layer3.2.bn1.num_batches_tracked -
layer3.2.conv2.weight 256,256,3,3
layer3.2.bn2.weight 256
layer3.2.bn2.bias 256
layer3.2.bn2.running_mean 256
layer3.2.bn2.running_var 256
layer3.2.bn2.num_batches_tracked -
layer3.2.conv3.weight 1024,256,1,1
layer3.2.bn3.weight 1024
layer3.2.bn3.bias 1024
layer3.2.bn3.running_mean 1024
layer3.2.bn3.running_var 1024
layer3.2.bn3.num_batches_tracked -
layer3.3.conv1.weight 256,1024,1,1
layer3.3.bn1.weight 256
layer3.3.bn1.bias 256
layer3.3.bn1.running_mean 256
layer3.3.bn1.running_var 256
layer3.3.bn1.num_batches_tracked -
layer3.3.conv2.weight 256,256,3,3
layer3.3.bn2.weight 256
layer3.3.bn2.bias 256
layer3.3.bn2.running_mean 256
layer3.3.bn2.running_var 256
layer3.3.bn2.num_batches_tracked -
layer3.3.conv3.weight 1024,256,1,1
layer3.3.bn3.weight 1024
layer3.3.bn3.bias 1024
layer3.3.bn3.running_mean 1024
layer3.3.bn3.running_var 1024
layer3.3.bn3.num_batches_tracked -
layer3.4.conv1.weight 256,1024,1,1
layer3.4.bn1.weight 256
layer3.4.bn1.bias 256
layer3.4.bn1.running_mean 256
layer3.4.bn1.running_var 256
layer3.4.bn1.num_batches_tracked -
layer3.4.conv2.weight 256,256,3,3
layer3.4.bn2.weight 256
layer3.4.bn2.bias 256
layer3.4.bn2.running_mean 256
layer3.4.bn2.running_var 256
layer3.4.bn2.num_batches_tracked -
layer3.4.conv3.weight 1024,256,1,1
layer3.4.bn3.weight 1024
layer3.4.bn3.bias 1024
layer3.4.bn3.running_mean 1024
layer3.4.bn3.running_var 1024
layer3.4.bn3.num_batches_tracked -
layer3.5.conv1.weight 256,1024,1,1
layer3.5.bn1.weight 256
layer3.5.bn1.bias 256
layer3.5.bn1.running_mean 256
layer3.5.bn1.running_var 256
layer3.5.bn1.num_batches_tracked -
layer3.5.conv2.weight 256,256,3,3
layer3.5.bn2.weight 256
layer3.5.bn2.bias 256
layer3.5.bn2.running_mean 256
layer3.5.bn2.running_var 256
layer3.5.bn2.num_batches_tracked -
layer3.5.conv3.weight 1024,256,1,1
layer3.5.bn3.weight 1024
layer3.5.bn3.bias 1024
layer3.5.bn3.running_mean 1024
layer3.5.bn3.running_var 1024
layer3.5.bn3.num_batches_tracked -
layer4.0.conv1.weight 512,1024,1,1
layer4.0.bn1.weight 512
layer4.0.bn1.bias 512
layer4.0.bn1.running_mean 512
layer4.0.bn1.running_var 512
layer4.0.bn1.num_batches_tracked -
layer4.0.conv2.weight 512,512,3,3
layer4.0.bn2.weight 512
layer4.0.bn2.bias 512
layer4.0.bn2.running_mean 512
layer4.0.bn2.running_var 512
layer4.0.bn2.num_batches_tracked -
layer4.0.conv3.weight 2048,512,1,1
layer4.0.bn3.weight 2048
layer4.0.bn3.bias 2048
layer4.0.bn3.running_mean 2048
layer4.0.bn3.running_var 2048
layer4.0.bn3.num_batches_tracked -
layer4.0.downsample.0.weight 2048,1024,1,1
layer4.0.downsample.1.weight 2048
layer4.0.downsample.1.bias 2048
layer4.0.downsample.1.running_mean 2048
layer4.0.downsample.1.running_var 2048
layer4.0.downsample.1.num_batches_tracked -
layer4.1.conv1.weight 512,2048,1,1
layer4.1.bn1.weight 512
layer4.1.bn1.bias 512
layer4.1.bn1.running_mean 512
layer4.1.bn1.running_var 512
layer4.1.bn1.num_batches_tracked -
layer4.1.conv2.weight 512,512,3,3
layer4.1.bn2.weight 512
layer4.1.bn2.bias 512
layer4.1.bn2.running_mean 512
layer4.1.bn2.running_var 512
layer4.1.bn2.num_batches_tracked -
layer4.1.conv3.weight 2048,512,1,1
layer4.1.bn3.weight 2048
layer4.1.bn3.bias 2048
layer4.1.bn3.running_mean 2048
layer4.1.bn3.running_var 2048
layer4.1.bn3.num_batches_tracked -
layer4.2.conv1.weight 512,2048,1,1
layer4.2.bn1.weight 512
layer4.2.bn1.bias 512
layer4.2.bn1.running_mean 512
layer4.2.bn1.running_var 512
layer4.2.bn1.num_batches_tracked -
layer4.2.conv2.weight 512,512,3,3
layer4.2.bn2.weight 512
layer4.2.bn2.bias 512
layer4.2.bn2.running_mean 512
layer4.2.bn2.running_var 512
layer4.2.bn2.num_batches_tracked -
layer4.2.conv3.weight 2048,512,1,1
layer4.2.bn3.weight 2048
layer4.2.bn3.bias 2048
layer4.2.bn3.running_mean 2048
layer4.2.bn3.running_var 2048
layer4.2.bn3.num_batches_tracked -
fc.weight 1,2048
fc.bias 1
"""

# Small configs that build the same code path, for every registered network (a new entry must add one here).
TINY = {
    "npr": {"layers": [1, 2], "widths": [4, 8], "stem_width": 8},
    "cnnspot": {"layers": [1, 1, 2, 1], "widths": [4, 4, 8, 8], "stem_width": 8},
    "fredect": {"layers": [1, 1, 1, 1], "widths": [4, 4, 4, 8], "stem_width": 8},
    "fredect-simple": {"channels": [2, 3, 4, 4]},
    "fusing": {
        "layers": [1, 1, 1, 1],
        "widths": [4, 4, 4, 8],
        "stem_width": 8,
        "global_size": 128,
        "patch_sizes": [48, 24],
        "embed_dim": 8,
        "heads": 2,
        "depth": 1,
    },  # fmt: skip
    # On cached gradient maps (the classifier alone); the raw-image path needs a transformation model's file and
    # runs the same contract in tests/test_lgrad.py.
    "lgrad": {
        "input": "gradient",
        "resolution": 16,
        "fmaps_base": 64,
        "fmaps_max": 8,
        "layers": [1, 1, 1, 1],
        "widths": [4, 4, 4, 8],
        "stem_width": 8,
    },  # fmt: skip
}
FIXED_SIZE = {"fredect", "fredect-simple"}  # per-frequency statistics: the size is part of the config


def _parse_keys(text: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in text.strip().splitlines():
        name, shape = line.split()
        rows.append((name, () if shape == "-" else tuple(int(s) for s in shape.split(","))))
    return rows


def _ours(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def _tiny(name: str, size: int) -> torch.nn.Module:
    cfg = dict(TINY[name])
    if name in FIXED_SIZE:
        cfg["size"] = size
    return build_network(name, cfg)


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """ImageNet-normalised random images of 8-bit pixel values (what the pipeline feeds)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _ready(name: str, size: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = _tiny(name, size)
    if net.needs_fit:
        net.fit([_images(3, size, seed=1), _images(2, size, seed=2)])
    return net


# ---- key lists against the authors' architectures -------------------------------------------------------------


def test_npr_state_dict_matches_the_authors_key_list_with_fc1_named_fc():
    authors = _parse_keys(NPR_KEYS)
    assert len(authors) == 146 and authors[-2] == ("fc1.weight", (1, 512))
    renamed = [(k.replace("fc1.", "fc.", 1) if k.startswith("fc1.") else k, s) for k, s in authors]
    assert _ours(build_network("npr")) == renamed


def test_cnnspot_state_dict_is_torchvision_resnet50_with_one_logit():
    authors = _parse_keys(RESNET50_KEYS)
    assert len(authors) == 320 and authors[0] == ("conv1.weight", (64, 3, 7, 7))
    assert _ours(build_network("cnnspot")) == authors


def test_fredect_state_dict_is_resnet50_plus_the_dct_statistics():
    ours = _ours(build_network("fredect"))
    assert ours[:-2] == _parse_keys(RESNET50_KEYS)
    assert ours[-2:] == [("spectrum.mean", (3, 224, 224)), ("spectrum.var", (3, 224, 224))]


@pytest.mark.parametrize("name", ["npr", "cnnspot"])
def test_tiny_configs_keep_the_key_names(name):
    full = [k for k, _ in _ours(build_network(name))]
    tiny = [k for k, _ in _ours(_tiny(name, 64))]
    # Fewer blocks per stage, same naming scheme: every tiny key is a full-size key.
    assert set(tiny) <= set(full) and tiny[0] == "conv1.weight" and tiny[-1] == "fc.bias"


def test_fredect_simple_layers_are_the_papers_simple_cnn():
    net = build_network("fredect-simple")
    shapes = dict(_ours(net))
    # src/models.py build_simple_cnn: Conv2D 3, 8, 16, 32 (3x3, bias), two 2x2 average pools, Dense(1) on 128x128.
    assert shapes["conv1.weight"] == (3, 3, 3, 3) and shapes["conv2.weight"] == (8, 3, 3, 3)
    assert shapes["conv3.weight"] == (16, 8, 3, 3) and shapes["conv4.weight"] == (32, 16, 3, 3)
    assert shapes["fc.weight"] == (1, 32 * 32 * 32) and net.input_size == 128
    # The paper's 5-class model has about 170,000 parameters: 4 convolutions + Dense(32768 -> 5).
    n_conv = sum(p.numel() for n, p in net.named_parameters() if n.startswith("conv"))
    assert n_conv + 32 * 32 * 32 * 5 + 5 == pytest.approx(170_000, rel=0.03)


def test_resnet50_parameter_count_is_torchvisions():
    # torchvision resnet50: 25,557,032 parameters with the 1000-class fc; fc -> 1 logit removes 2048 * 999 + 999.
    assert sum(p.numel() for p in build_network("cnnspot").parameters()) == 25_557_032 - 2048 * 999 - 999
    assert sum(p.numel() for p in build_network("npr").parameters()) == 1_437_761  # the NPR paper's 1.44M


def test_cnnspot_fc_starts_from_the_authors_init_gain():
    torch.manual_seed(0)
    w = build_network("cnnspot").fc.weight.detach()
    assert float(w.std()) == pytest.approx(0.02, rel=0.1) and abs(float(w.mean())) < 0.003


# ---- NPR's residual ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 3, 7, 10), (2, 1, 9, 5)])
def test_npr_residual_equals_numpy_repeat_of_every_second_pixel(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    h, w = shape[2] // 2 * 2, shape[3] // 2 * 2
    xe = x[:, :, :h, :w]  # odd sizes lose the last row/column (the authors' README)
    up = np.repeat(np.repeat(xe[:, :, ::2, ::2], 2, axis=2), 2, axis=3)
    np.testing.assert_array_equal(npr_residual(torch.from_numpy(x)).numpy(), xe - up)


def test_npr_residual_equals_the_authors_interpolation_and_vanishes_on_the_anchors():
    x = torch.randn(2, 3, 16, 12)
    down = F.interpolate(x, scale_factor=0.5, mode="nearest", recompute_scale_factor=True)
    authors = x - F.interpolate(down, scale_factor=2.0, mode="nearest", recompute_scale_factor=True)
    r = npr_residual(x)
    assert torch.equal(r, authors)
    assert torch.all(r[..., ::2, ::2] == 0) and torch.all(r[..., 1::2, 1::2] != 0)


def test_npr_network_on_an_odd_size_equals_the_even_crop():
    net = _ready("npr", 64).eval()
    x = torch.randn(2, 3, 65, 63)
    with torch.no_grad():
        assert torch.equal(net(x), net(x[..., :64, :62].contiguous()))


# ---- the DCT spectrum -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [8, 31, 64])
def test_dct_matrix_matches_scipy(n):
    v = np.random.default_rng(n).normal(size=(n, 5))
    ours = (dct_matrix(n) @ torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(ours, scipy.fft.dct(v, type=2, norm="ortho", axis=0), rtol=1e-12, atol=1e-10)


def test_log_dct_matches_scipy_dctn():
    x = np.random.default_rng(1).integers(0, 256, size=(2, 3, 32, 24)).astype(np.float64)
    ref = np.log(np.abs(scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))) + 1e-12)
    np.testing.assert_allclose(log_dct(torch.from_numpy(x)).numpy(), ref, rtol=1e-10, atol=1e-9)


def _numpy_spectrum(x: torch.Tensor) -> np.ndarray:
    """The authors' pipeline in NumPy: undo the normalisation to 0-255 pixels, DCT over H and W, log."""
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    pixels = (x.double().numpy() * std + mean) * 255
    return np.log(np.abs(scipy.fft.dctn(pixels, type=2, norm="ortho", axes=(-2, -1))) + 1e-12)


def test_fitted_statistics_equal_numpy_mean_and_population_variance_for_any_batching():
    data = _images(11, 32, seed=3)
    ref = _numpy_spectrum(data)
    fits = []
    for split in ([11], [2, 9], [1, 1, 4, 5], [5, 0, 6]):
        norm = LogDCTNormalizer(size=32, input_mean=(0.485, 0.456, 0.406), input_std=(0.229, 0.224, 0.225))
        assert norm.fit(list(torch.split(data, split))) == 11
        np.testing.assert_allclose(norm.mean.numpy(), ref.mean(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(norm.var.numpy(), ref.var(0), rtol=1e-5, atol=1e-6)
        fits.append(norm.var.clone())
    assert all(torch.allclose(f, fits[0], rtol=1e-6, atol=1e-7) for f in fits)


def test_fredect_input_is_the_standardised_log_dct_of_the_raw_pixels():
    net = _ready("fredect", 32)
    x = _images(2, 32, seed=5)
    ref = (_numpy_spectrum(x) - net.spectrum.mean.double().numpy()) / np.sqrt(net.spectrum.var.double().numpy())
    np.testing.assert_allclose(net.transform(x).double().numpy(), ref, rtol=1e-5, atol=1e-5)
    assert net.transform(x).dtype == torch.float32


def test_fit_needs_two_images_and_forward_needs_fitted_statistics_of_its_size():
    net = _tiny("fredect", 32)
    with pytest.raises(RuntimeError, match="not set: call fit"):
        net(_images(1, 32))
    with pytest.raises(ValueError, match="at least 2 images"):
        net.fit([_images(1, 32)])
    net.fit([_images(2, 32)])
    with pytest.raises(ValueError, match=r"\(n, 3, 32, 32\).*size=64"):
        net(_images(1, 64))
    # The statistics travel in the state dict: a fresh network loaded from it needs no fit.
    fresh = _tiny("fredect", 32).eval()
    fresh.load_state_dict(net.state_dict())
    net.eval()
    with torch.no_grad():
        assert torch.equal(fresh(_images(2, 32)), net(_images(2, 32)))


# ---- one contract over every registered network ---------------------------------------------------------------


def test_every_registered_network_has_a_tiny_config():
    assert set(TINY) == set(NETWORKS)


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("size", [64, 224])
def test_network_contract(name, size):
    net = _ready(name, size)
    x = _images(2, size, seed=7)
    net.train()
    logits = net(x)
    assert logits.shape == (2,) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0])).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x.clone())
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert net.input_size == (size if name in FIXED_SIZE else None)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_config_dict_rebuilds_the_same_architecture_and_is_json(name):
    net = _tiny(name, 64)
    cfg = network_config_dict(name, net)
    assert json.loads(json.dumps(cfg)) == cfg
    again = build_network(name, cfg)
    assert _ours(again) == _ours(net) and network_config_dict(name, again.config) == cfg


def test_registry_errors_name_the_choices_and_the_key():
    with pytest.raises(KeyError, match="available: .*'npr'"):
        get_network_method("nope")
    with pytest.raises(ConfigError, match="unknown key.*depth"):
        build_network("npr", {"depth": 3})
    with pytest.raises(ConfigError, match="layers"):
        build_network("cnnspot", {"layers": [1, 1], "widths": [4]})
    with pytest.raises(ConfigError, match="multiple of 4"):
        build_network("fredect-simple", {"size": 66})
    with pytest.raises(TypeError, match="NPRConfig"):
        network_config_dict("npr", build_network("cnnspot", TINY["cnnspot"]))


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_recipes_round_trip_through_config_files(name):
    recipe = get_network_method(name).recipe
    recipe.validate()
    assert config_from_dict(Recipe, json.loads(json.dumps(config_to_dict(recipe)))) == recipe
    assert recipe.source.startswith("https://github.com/")


def test_recipes_are_the_published_ones():
    npr, cnn, fre, simple = (NETWORKS[n].recipe for n in ("npr", "cnnspot", "fredect", "fredect-simple"))
    assert (npr.batch_size, npr.lr, npr.lr_step_every, npr.epochs, npr.blur_prob) == (32, 2e-4, 10, 50, 0.0)
    assert (cnn.blur_prob, cnn.blur_sigma, cnn.jpeg_prob, cnn.jpeg_quality) == (0.5, (0.0, 3.0), 0.5, (30, 100))
    assert (cnn.lr, cnn.batch_size, cnn.plateau_patience, cnn.train_resize, cnn.train_crop) == (1e-4, 64, 5, 256, 224)
    assert NETWORKS["cnnspot"].init == "imagenet" and NETWORKS["npr"].init == "scratch"
    assert (fre.train_crop_mode, fre.flip, fre.blur_prob) == ("center", False, 0.0)
    assert (simple.lr, simple.batch_size, simple.test_crop) == (1e-3, 32, 128)


def test_recipe_validation_names_the_field():
    base = config_to_dict(NETWORKS["cnnspot"].recipe)
    for key, value, match in [
        ("jpeg_quality", [30, 101], "jpeg_quality"),
        ("blur_sigma", [3.0, 1.0], "blur_sigma"),
        ("mean", [0.5, 0.5], "mean/std"),
        ("betas", [0.9], "betas"),
    ]:
        with pytest.raises(ConfigError, match=match):
            config_from_dict(Recipe, {**base, key: value})
