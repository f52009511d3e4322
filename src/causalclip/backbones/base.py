"""What every backbone is: a frozen ``nn.Module`` from normalised pixels (B, 3, S, S) to features (B, dim) that
describes itself, and the precision rules shared by all backbones."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..images.transforms import Preprocessing


class BackboneError(RuntimeError):
    """A backbone cannot be loaded (weights not found, offline, incomplete folder, unsafe format)."""


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls are native here: AVX512-BF16/AMX on CPU, compute capability >= 8 on CUDA."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """ "auto" -> bf16 where native (CPU with AVX512-BF16/AMX, Ampere+ GPU), fp16 on older GPUs, else fp32."""
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision in table:
        return table[precision]
    if precision != "auto":
        raise ValueError(f"precision must be one of auto, fp32, bf16, fp16; got {precision!r}")
    if bf16_supported(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.float32


class Backbone(nn.Module):
    """Base class: ``forward(pixels (B, 3, S, S)) -> features (B, dim) float32``."""

    dim: int
    preprocessing: Preprocessing

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the backbone (recorded in meta.json and compared on resume)."""
        raise NotImplementedError


def uncompiled(backbone: Backbone) -> tuple[Backbone, bool]:
    """``(backbone without torch.compile, whether it was compiled)``: a compiled model cannot be pickled, so this is
    what is sent to other processes, which compile their own copy. The original backbone is left unchanged."""
    model = backbone._modules.get("model")
    orig = getattr(model, "_orig_mod", None)
    if orig is None:
        return backbone, False
    plain = copy.copy(backbone)
    plain._modules = {**backbone._modules, "model": orig}
    return plain, True
