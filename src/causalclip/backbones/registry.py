"""The one place backbones are selected by name: a CLIP hub id or folder, or a weight-free forensic spec string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .base import Backbone, BackboneError, resolve_precision
from .clip import DEFAULT_CLIP, ClipBackbone, ClipSpec


def _spec_factory(opts: dict[str, Any], device: torch.device) -> Backbone:
    from .forensic import spec_factory

    return spec_factory(opts, device)


# name -> factory(options dict) -> Backbone. "spec": weight-free forensic backbones, CLIP with random weights and
# "+"-combinations, selected by a spec string in place of a CLIP id ("spectrum:size=64+npr"; causalclip.backbones.forensic).
BACKBONES: dict[str, Callable[[dict[str, Any], torch.device], Backbone]] = {
    "clip": lambda opts, device: ClipBackbone.load(ClipSpec(**opts), device=device),
    "spec": _spec_factory,
}


def load_backbone(
    model: str = DEFAULT_CLIP,
    *,
    kind: str = "clip",
    device: str | torch.device = "cpu",
    precision: str = "auto",
    compile: bool = False,
    **options: Any,
) -> Backbone:
    """Load a backbone, move it to ``device`` in the chosen precision, optionally ``torch.compile`` it.

    Half precision is applied the way that is fastest on each device: on CPU the weights are cast to bf16 (no
    per-op casts); on CUDA the weights stay fp32 and the forward pass runs under ``torch.autocast``, which keeps
    layer norms and softmax in fp32.
    """
    from .forensic import resolve_spec

    kind, model, options = resolve_spec(kind, model, options)  # "spectrum", "npr:size=64", "clip+spectrum", ...
    if kind not in BACKBONES:
        raise BackboneError(f"unknown backbone kind {kind!r}; available: {sorted(BACKBONES)}")
    device = torch.device(device)
    bb = BACKBONES[kind]({"model": model, **options}, device)
    dtype = resolve_precision(precision, device)
    if device.type == "cuda" and dtype != torch.float32:
        bb = bb.to(device=device)
        bb.autocast_dtype = dtype
    else:
        bb = bb.to(device=device, dtype=dtype)
    bb.precision = str(dtype).removeprefix("torch.")
    if compile:
        bb.model = torch.compile(bb.model)
    return bb
