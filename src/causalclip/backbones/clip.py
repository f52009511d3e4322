"""Frozen feature extractors ("backbones"), selectable by name, each carrying its own preprocessing.

The default is CLIP ViT-L/14 through Hugging Face ``transformers``: any CLIP vision model given by hub id or
local folder. A backbone maps normalised pixels (B, 3, S, S) to features (B, dim), and ``describe()`` says
exactly what it is; that description and the preprocessing are part of every feature set's meta.json, so
features made differently are never mixed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..images.transforms import Preprocessing
from . import clipfast
from .base import Backbone, BackboneError

__all__ = [
    "ClipBackbone",
    "ClipSpec",
    "ClipTextTower",
    "load_clip_text",
]

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClipSpec:
    """Which CLIP and which of its outputs. The defaults and why: docs/method.md#open-decisions."""

    model: str = DEFAULT_CLIP  # hub id or local folder (CLIPModel or CLIPVisionModelWithProjection checkpoint)
    revision: str | None = None
    # "image_embeds": the projected embedding (768-d for ViT-L/14; OpenAI's encode_image, what UnivFD uses);
    # "pooled": the 1024-d pooled (post-layernorm CLS) output before the projection.
    feature: Literal["image_embeds", "pooled"] = "image_embeds"
    normalize: bool = False  # L2-normalise the features
    preprocessing_mode: Literal["crop", "clip"] = "crop"
    # transformers' attention kernel; None = "eager" on CPU (in bf16 it ran 1.5x faster than "sdpa" on the
    # development machine, see docs/reports/extraction-speed.md) and "sdpa" elsewhere. Numerically equivalent, so not part of
    # the feature set's identity.
    attn_implementation: str | None = None


def _is_local(model: str) -> bool:
    return os.path.isdir(model) or model.startswith((".", "/", "~")) or model.endswith("/")


def _read_norm(model: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """image_mean/image_std from a local folder's preprocessor_config.json, if there is one."""
    path = Path(model).expanduser() / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
        return tuple(float(v) for v in cfg["image_mean"]), tuple(float(v) for v in cfg["image_std"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackboneError(f"{path}: cannot read image_mean/image_std: {exc}") from exc


class ClipBackbone(Backbone):
    """A frozen Hugging Face CLIP vision tower (``CLIPVisionModelWithProjection``)."""

    def __init__(self, spec: ClipSpec, *, model: nn.Module, image_size: int, norm=None) -> None:
        super().__init__()
        self.spec = spec
        self.config = cfg = model.config
        # ``model`` (what load_backbone(compile=True) compiles) maps pixels to the raw feature; with the usual CLIP
        # structure it evaluates the last layer for the CLS token only (exact; causalclip.clipfast).
        self.model = _ClipFeature(model.eval().requires_grad_(False), spec.feature)
        self.dim = cfg.projection_dim if spec.feature == "image_embeds" else cfg.hidden_size
        mean_std = {} if norm is None else {"mean": norm[0], "std": norm[1]}
        self.preprocessing = Preprocessing(mode=spec.preprocessing_mode, size=image_size, **mean_std)

    @classmethod
    def load(cls, spec: ClipSpec, *, device: torch.device | None = None) -> ClipBackbone:
        """Load from the hub id or folder in ``spec.model``; safetensors weights only (nothing is unpickled)."""
        try:
            from transformers import CLIPVisionModelWithProjection
        except ImportError as exc:  # the extraction extra is not installed
            raise BackboneError(
                "loading CLIP needs the 'transformers' package: pip install 'causalclip[extract]'"
            ) from exc
        model_id = os.path.expanduser(spec.model)
        if _is_local(spec.model) and not os.path.isdir(model_id):
            raise BackboneError(f"{spec.model}: no such folder (expected a CLIP checkpoint folder or a hub id)")
        if os.path.isdir(model_id):
            missing = [n for n in ("config.json",) if not os.path.isfile(os.path.join(model_id, n))]
            has_weights = any(
                n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in os.listdir(model_id)
            )
            if missing or not has_weights:
                found = sorted(os.listdir(model_id))[:10]
                pickles = any(n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in found)
                raise BackboneError(
                    f"{model_id}: incomplete CLIP folder: needs config.json and model.safetensors (found {found})"
                    + ("; pickle-based .bin weights are not loaded" if pickles else "")
                )
            # recorded in feature sets and detectors: an absolute path, so that a detector used from another
            # working directory does not pick up a different folder of the same name
            spec = dataclasses.replace(spec, model=os.path.abspath(model_id))
        try:
            attn = spec.attn_implementation or ("eager" if device is None or device.type == "cpu" else "sdpa")
            model = CLIPVisionModelWithProjection.from_pretrained(
                model_id, revision=spec.revision, use_safetensors=True, attn_implementation=attn
            )
        except (OSError, ValueError, KeyError) as exc:
            hint = (
                "If this machine is offline, download the model elsewhere (e.g. `huggingface-cli download "
                f"{spec.model}`) and pass its local folder."
                if not os.path.isdir(model_id)
                else "Check that the folder holds a complete CLIP checkpoint."
            )
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
            raise BackboneError(f"cannot load CLIP weights from {spec.model!r}: {first}. {hint}") from exc
        norm = _read_norm(model_id) if os.path.isdir(model_id) else None
        return cls(spec, model=model, image_size=model.config.image_size, norm=norm)

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "name": "clip",
            "model": self.spec.model,
            "revision": self.spec.revision,
            "feature": self.spec.feature,
            "normalize": self.spec.normalize,
            "architecture": {
                "hidden_size": cfg.hidden_size,
                "layers": cfg.num_hidden_layers,
                "patch_size": cfg.patch_size,
                "image_size": cfg.image_size,
                "projection_dim": cfg.projection_dim,
            },
            "dim": self.dim,
        }

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        autocast = getattr(self, "autocast_dtype", None)
        if autocast is not None:
            with torch.autocast(pixels.device.type, dtype=autocast):
                feats = self.model(pixels.to(dtype))
        else:
            feats = self.model(pixels.to(dtype))
        feats = feats.float()
        if self.spec.normalize:
            feats = torch.nn.functional.normalize(feats, dim=-1)
        return feats


class _ClipFeature(nn.Module):
    """pixels -> ``image_embeds`` (projected) or ``pooled`` (post-layernorm CLS) of a CLIPVisionModelWithProjection."""

    def __init__(self, clip: nn.Module, feature: str) -> None:
        super().__init__()
        self.clip = clip
        self.feature = feature
        vision = clip.vision_model
        # the CLS-only last layer when the structure is the usual one; otherwise the model's own forward
        self._pooled = clipfast.pooled_cls_fn(vision) if clipfast.supports(vision) else None

    def __getstate__(self) -> dict[str, Any]:
        # the CLS-only function is a closure (not picklable): rebuilt by __setstate__ in the receiving process
        state = self.__dict__.copy()
        state["_pooled"] = state["_pooled"] is not None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        fast = state.pop("_pooled")
        super().__setstate__({**state, "_pooled": None})
        if fast:
            self._pooled = clipfast.pooled_cls_fn(self.clip.vision_model)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._pooled is not None:
            pooled = self._pooled(pixels)
        else:
            pooled = self.clip.vision_model(pixel_values=pixels).pooler_output
        return self.clip.visual_projection(pooled) if self.feature == "image_embeds" else pooled


@dataclasses.dataclass
class ClipTextTower:
    """CLIP's frozen text side, for heads that compare image embeddings with text (CLIPping's prompt tuning)."""

    model: nn.Module  # CLIPTextModelWithProjection in eval mode, requires_grad False: text -> text_embeds (B, proj)
    tokenizer: Any  # the checkpoint's own tokenizer
    logit_scale: float  # CLIP's learnt log temperature; exp() is the cosine multiplier (100 for OpenAI's models)
    model_id: str  # hub id, or the folder as an absolute path (as ClipBackbone records it)
    revision: str | None


def _checkpoint_tensor(model_id: str, revision: str | None, key: str) -> torch.Tensor | None:
    """One tensor of a (possibly sharded) safetensors checkpoint, read without loading the rest; None if absent."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    def resolve(name: str) -> str | None:
        if os.path.isdir(model_id):
            path = os.path.join(model_id, name)
            return path if os.path.isfile(path) else None
        return cached_file(model_id, name, revision=revision, _raise_exceptions_for_missing_entries=False)

    single = resolve("model.safetensors")
    if single is None:
        index = resolve("model.safetensors.index.json")
        if index is None:
            return None
        shard = json.loads(Path(index).read_text(encoding="utf-8")).get("weight_map", {}).get(key)
        single = resolve(shard) if shard else None
        if single is None:
            return None
    with safe_open(single, framework="pt") as f:
        return f.get_tensor(key) if key in f.keys() else None


def load_clip_text(model: str, *, revision: str | None = None) -> ClipTextTower:
    """Load the frozen text tower, tokenizer and logit scale of the CLIP in ``model`` (hub id or folder).

    Only a full CLIP checkpoint (``CLIPModel``: both towers, the projections and the logit scale) qualifies: a
    vision-only checkpoint (``CLIPVisionModelWithProjection``, what extraction alone needs) has no text tower, and
    transformers would otherwise fill the missing weights with random ones, so any missing weight is an error.
    Safetensors weights only (nothing is unpickled).
    """
    try:
        from transformers import AutoConfig, AutoTokenizer, CLIPTextModelWithProjection
    except ImportError as exc:
        raise BackboneError("loading CLIP needs the 'transformers' package: pip install 'causalclip[extract]'") from exc
    model_id = os.path.expanduser(model)
    if _is_local(model) and not os.path.isdir(model_id):
        raise BackboneError(f"{model}: no such folder (expected a CLIP checkpoint folder or a hub id)")
    if os.path.isdir(model_id):
        model_id = os.path.abspath(model_id)
    offline_hint = (
        ""
        if os.path.isdir(model_id)
        else f" If this machine is offline, download it elsewhere (`huggingface-cli download {model}`) and pass its folder."
    )
    try:
        cfg = AutoConfig.from_pretrained(model_id, revision=revision)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise BackboneError(f"cannot read the CLIP config of {model!r}: {first}.{offline_hint}") from exc
    if cfg.model_type != "clip":
        raise BackboneError(
            f"{model}: a {cfg.model_type!r} checkpoint, not a full CLIP (model_type 'clip'); its text tower, text "
            "projection and logit scale are needed, as in openai/clip-vit-large-patch14"
        )
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    # the vision tower's weights are "unexpected" here by design: no load report about them (checked below instead)
    hf_logging.set_verbosity_error()
    try:
        text, info = CLIPTextModelWithProjection.from_pretrained(
            model_id, revision=revision, use_safetensors=True, output_loading_info=True
        )
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise BackboneError(
            f"cannot load the CLIP text tower or tokenizer of {model!r}: {first}.{offline_hint}"
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise BackboneError(
            f"{model}: the checkpoint lacks {len(missing)} text-tower weight(s) (first: {missing[0]}); refusing to "
            "use a randomly initialised text tower"
        )
    scale = _checkpoint_tensor(model_id, revision, "logit_scale")
    if scale is None:
        raise BackboneError(f"{model}: no 'logit_scale' in the checkpoint's safetensors weights")
    return ClipTextTower(
        model=text.eval().requires_grad_(False),
        tokenizer=tokenizer,
        logit_scale=float(scale.float()),
        model_id=model_id,
        revision=revision,
    )
