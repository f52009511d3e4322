"""Weight-free forensic backbones, CLIP with random weights, and backbones side by side ("a+b").

They need no download, so the pipeline gives meaningful numbers on machines without CLIP weights (the offline
demo), and they can be concatenated with CLIP features where those exist. Each is a :class:`Backbone`: pixels
normalised by its ``preprocessing`` in, a fixed-length float32 vector out, ``describe()`` saying exactly what
was computed (it is part of every feature set's meta.json).

- ``spectrum``: the azimuthally averaged log-magnitude spectrum of Durall, Keuper and Keuper, "Watch your
  Up-Convolution: CNN Based Generative Deep Neural Networks are Failing to Reproduce Spectral Distributions",
  CVPR 2020. Up-sampling layers (transposed convolutions above all) leave a high-frequency signature that a
  1-D radial profile of the spectrum shows.
- ``npr``: statistics of neighbouring-pixel residuals within 2 x 2 cells, after Tan et al., "Rethinking the
  Up-Sampling Operations in CNN-based Generative Network for Generalizable Deepfake Detection" (NPR), CVPR 2024.
  Any x2 up-sampling makes the four pixels of a cell depend on each other differently from pixels in
  neighbouring cells; NPR feeds the residual image to a trained ResNet, we summarise it by fixed statistics.
- ``clip-random``: the CLIP vision architecture with *random* weights (seeded), labelled as such in meta.json.
  A random-feature baseline, not CLIP: it needs ``transformers`` but no download.

Backbones are selected by a spec string, wherever a CLIP hub id or folder is accepted
(``causalclip extract --backbone SPEC``, ``load_backbone(SPEC)``)::

    spectrum                      Durall et al.'s profile of a 224 x 224 centre crop
    spectrum:size=64              ... of a 64 x 64 centre crop
    npr:size=64
    spectrum:size=64+npr:size=64  both, concatenated
    openai/clip-vit-large-patch14+spectrum   CLIP ViT-L/14 features, then the spectrum profile
    clip-random:arch=vit-b-32,seed=0

In a combination every part sees the same decoded image; the input is preprocessed for the CLIP part (its
centre crop, mean and std) or, without one, cropped to the largest forensic size, and each forensic part
takes its own centre crop of that, in [0, 1] pixel units.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..images.transforms import Preprocessing
from .base import Backbone, BackboneError
from .clip import ClipBackbone, ClipSpec

__all__ = [
    "ConcatBackbone",
    "FORENSIC_KINDS",
    "ForensicBackbone",
    "NPRBackbone",
    "RandomClipBackbone",
    "SpectrumBackbone",
    "build_from_spec",
    "parse_spec",
    "resolve_spec",
]

# Unit-range pixels: forensic backbones see the image itself, not CLIP-normalised values.
UNIT_MEAN = (0.0, 0.0, 0.0)
UNIT_STD = (1.0, 1.0, 1.0)
# ITU-R BT.601 luma, what OpenCV's IMREAD_GRAYSCALE (used by Durall et al.) and PIL's "L" compute.
LUMA = (0.299, 0.587, 0.114)
# Options of a CLIP part; the CLI always passes them, so for forensic-only specs their defaults are ignored.
CLIP_OPTION_DEFAULTS = {"feature": "image_embeds", "normalize": False, "preprocessing_mode": "crop"}


class ForensicBackbone(Backbone):
    """Base class: undo the input normalisation, centre-crop to ``size``, compute ``features(unit pixels)``.

    ``input_preprocessing`` is what the pixels arriving in ``forward`` were normalised with: the backbone's own
    preprocessing when used alone, the CLIP part's when combined with CLIP.
    """

    kind: str = ""

    def __init__(self, *, size: int) -> None:
        super().__init__()
        if not isinstance(size, int) or isinstance(size, bool) or size < 8:
            raise BackboneError(f"{self.kind}: size must be an integer >= 8, got {size!r}")
        self.size = size
        self.preprocessing = Preprocessing(mode="crop", size=size, mean=UNIT_MEAN, std=UNIT_STD)
        self.input_preprocessing = self.preprocessing
        # ``model`` is what load_backbone(compile=True) compiles.
        self.model: nn.Module = nn.Identity()

    @property
    def precision(self) -> str:
        """Always float32 (float64 inside): load_backbone's half precision does not apply to these."""
        return "float32"

    @precision.setter
    def precision(self, value: str) -> None:  # load_backbone sets it; the computation ignores it
        pass

    def _unit_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, 3, size, size) float32 in [0, 1], the centre crop."""
        prep = self.input_preprocessing
        x = pixels.float()
        mean = torch.tensor(prep.mean, dtype=x.dtype, device=x.device)[None, :, None, None]
        std = torch.tensor(prep.std, dtype=x.dtype, device=x.device)[None, :, None, None]
        x = x * std + mean
        s = x.shape[-1]
        if s < self.size:
            raise BackboneError(f"{self.kind}: input is {s} x {s}, smaller than its size {self.size}")
        if s > self.size:  # torchvision CenterCrop's offset (Python rounding), as in Preprocessing
            top = int(round((s - self.size) / 2.0))
            x = x[..., top : top + self.size, top : top + self.size]
        return x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self._unit_pixels(pixels)).float()

    def _describe(self, **fields: Any) -> dict[str, Any]:
        return {"name": self.kind, "size": self.size, **fields, "compute_dtype": "float64", "dim": self.dim}


class _RadialProfile(nn.Module):
    """(B, 3, s, s) unit pixels -> (B, n_bins - 1) azimuthal mean of log(|DFT of the 0-255 luma| + 1e-3)."""

    def __init__(self, size: int, normalize: str) -> None:
        super().__init__()
        c = size // 2  # fftshift puts frequency 0 at index size // 2
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        radius = torch.sqrt(((yy - c) ** 2 + (xx - c) ** 2).double())
        bins = radius.floor().long().flatten()  # Durall et al.'s radialProfile: integer part of the radius
        self.n_bins = int(bins.max()) + 1
        self.register_buffer("bins", bins, persistent=False)
        self.register_buffer("counts", torch.bincount(bins, minlength=self.n_bins), persistent=False)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        luma = torch.tensor(LUMA, dtype=torch.float64, device=x.device)  # not a buffer: .to(bf16) must not round it
        gray = torch.einsum("bchw,c->bhw", x.double() * 255.0, luma)
        spectrum = torch.fft.fftshift(torch.fft.fft2(gray), dim=(-2, -1))
        logmag = torch.log(spectrum.abs() + 1e-3).flatten(1)  # (B, s*s); finite where |F| = 0
        sums = torch.zeros(x.shape[0], self.n_bins, dtype=logmag.dtype, device=x.device)
        sums.index_add_(1, self.bins, logmag)
        profile = sums / self.counts.to(logmag.dtype)
        if self.normalize == "mean":  # drop DC (brightness), subtract the level: invariant to contrast scaling
            profile = profile[:, 1:] - profile[:, 1:].mean(dim=1, keepdim=True)
        elif self.normalize == "dc":  # Durall et al.: divide by the DC bin
            profile = profile[:, 1:] / profile[:, :1].clamp_min(1e-6)
        else:
            profile = profile[:, 1:]
        return profile.float()


class SpectrumBackbone(ForensicBackbone):
    """Durall et al. (CVPR 2020): the 1-D azimuthally averaged log-magnitude spectrum of the grey image.

    Luma (BT.601) in 0-255, 2-D DFT, ``log(|F| + 1e-3)``, averaged over rings of integer radius (frequency 0 at the
    centre, every ring out to the corners). The DC ring is left out. ``normalize="mean"`` (default) subtracts
    the profile's mean, so scaling the image's contrast changes nothing; ``"dc"`` divides by the DC ring as in
    the paper's code; ``"none"`` keeps the raw profile. Dim = floor(sqrt(2) * (size // 2)): 45 at 64, 158 at 224.
    """

    kind = "spectrum"

    def __init__(self, *, size: int = 224, normalize: str = "mean") -> None:
        super().__init__(size=size)
        if normalize not in ("mean", "dc", "none"):
            raise BackboneError(f"spectrum: normalize must be 'mean', 'dc' or 'none', got {normalize!r}")
        self.normalize = normalize
        self.model = _RadialProfile(size, normalize)
        self.dim = self.model.n_bins - 1

    def describe(self) -> dict[str, Any]:
        return self._describe(
            method="azimuthally averaged log(|DFT| + 1e-3) of BT.601 luma in 0-255, rings of integer radius, DC dropped",
            reference="Durall, Keuper, Keuper. Watch your Up-Convolution. CVPR 2020",
            normalize=self.normalize,
        )


# The residual r = x[i + dy, j + dx] - x[i, j] for the three neighbours of a cell's anchor pixel.
_NPR_OFFSETS = ((0, 1), (1, 0), (1, 1))
# Where the 2 x 2 cells start: the up-sampling grid (0, 0) and the three other phases.
_NPR_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


class _NPRStats(nn.Module):
    """(B, 3, s, s) unit pixels -> (B, 72) log mean |r| and log RMS r per channel, offset and cell phase."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double() * 255.0
        # Anchors at py, py + 2, ..., py + n - 1: the same number of cells for every phase, neighbours inside.
        n = (x.shape[-1] - 1) // 2 * 2 - 1
        feats = []
        for py, px in _NPR_PHASES:
            anchor = x[..., py : py + n : 2, px : px + n : 2]
            for dy, dx in _NPR_OFFSETS:
                nb = x[..., py + dy : py + dy + n : 2, px + dx : px + dx + n : 2]
                r = (nb - anchor).flatten(2)  # (B, 3, cells)
                feats.append(torch.log(r.abs().mean(-1) + 1e-3))
                feats.append(0.5 * torch.log(r.pow(2).mean(-1) + 1e-6))
        f = torch.stack(feats, dim=-1)  # (B, 3 channels, 4 phases * 3 offsets * 2 stats)
        f = f.view(x.shape[0], 3, len(_NPR_PHASES), len(_NPR_OFFSETS) * 2)
        level = f.mean(dim=2, keepdim=True)  # per channel and statistic: the texture energy (content)
        periodic = f - level  # phase (0, 0) against the others: the x2 up-sampling grid (artifact)
        return torch.cat([level.flatten(1), periodic.flatten(1)], dim=1).float()


class NPRBackbone(ForensicBackbone):
    """Neighbouring-pixel residual statistics after Tan et al. (CVPR 2024).

    For each channel, each of the three neighbours of a 2 x 2 cell's anchor pixel (right, below, diagonal) and
    each of the four cell phases (cells starting at even or odd rows and columns), the log mean absolute residual
    and the log RMS residual (0-255 units): 72 numbers, stored as the 18 per-phase means ("level", texture
    energy) followed by the 72 deviations of each phase from that mean (the 2-periodicity that x2 up-sampling
    leaves; zero for an image without a preferred grid). Dim 90.
    """

    kind = "npr"

    def __init__(self, *, size: int = 224) -> None:
        super().__init__(size=size)
        self.model = _NPRStats()
        self.dim = 3 * len(_NPR_OFFSETS) * 2 * (1 + len(_NPR_PHASES))

    def describe(self) -> dict[str, Any]:
        return self._describe(
            method="log mean |r| and log RMS r of 2x2-cell neighbour residuals per channel, offset and cell phase "
            "(0-255 units): per-phase mean, then deviations of each phase",
            reference="Tan et al. Rethinking the Up-Sampling Operations in CNN-based Generative Network for "
            "Generalizable Deepfake Detection. CVPR 2024",
        )


# CLIP vision towers by name: what CLIPVisionConfig needs to build them (OpenAI's published shapes).
CLIP_ARCHS: dict[str, dict[str, int]] = {
    "vit-l-14": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "patch_size": 14,
        "projection_dim": 768,
    },
    "vit-b-16": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "patch_size": 16,
        "projection_dim": 512,
    },
    "vit-b-32": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "patch_size": 32,
        "projection_dim": 512,
    },
}


class RandomClipBackbone(ClipBackbone):
    """The CLIP vision architecture with seeded random weights (transformers' initialisation): not CLIP."""

    def __init__(self, spec: ClipSpec, *, model: nn.Module, arch: str, seed: int) -> None:
        super().__init__(spec, model=model, image_size=model.config.image_size)
        self.arch, self.seed = arch, seed

    @classmethod
    def build(cls, *, arch: str = "vit-l-14", seed: int = 0, device: torch.device | None = None, **clip_opts: Any):
        try:
            from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
        except ImportError as exc:
            raise BackboneError(
                "clip-random needs the 'transformers' package: pip install 'causalclip[extract]'"
            ) from exc
        if arch not in CLIP_ARCHS:
            raise BackboneError(f"clip-random: unknown arch {arch!r}; available: {sorted(CLIP_ARCHS)}")
        spec = ClipSpec(model=f"clip-random:{arch}", **clip_opts)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            config = CLIPVisionConfig(image_size=224, **CLIP_ARCHS[arch])
            attn = spec.attn_implementation or ("eager" if device is None or device.type == "cpu" else "sdpa")
            config._attn_implementation = attn
            model = CLIPVisionModelWithProjection(config)
        return cls(spec, model=model, arch=arch, seed=int(seed))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(name="clip-random", weights=f"RANDOM (seed {self.seed}), not pretrained", arch=self.arch)
        return d


class ConcatBackbone(Backbone):
    """Several backbones on the same image, their features side by side (in the order given)."""

    def __init__(self, parts: Sequence[Backbone]) -> None:
        super().__init__()
        if len(parts) < 2:
            raise BackboneError("a combination needs at least two backbones")
        self.parts = nn.ModuleList(parts)
        clips = [p for p in parts if not isinstance(p, ForensicBackbone)]
        if len(clips) > 1:
            prep = [c.preprocessing for c in clips]
            if any(p != prep[0] for p in prep[1:]):
                raise BackboneError("combined CLIP backbones must share their preprocessing (size, mean, std)")
        if clips:
            self.preprocessing = clips[0].preprocessing
        else:
            size = max(p.size for p in parts)  # type: ignore[attr-defined]
            self.preprocessing = Preprocessing(mode="crop", size=size, mean=UNIT_MEAN, std=UNIT_STD)
        for p in parts:
            if isinstance(p, ForensicBackbone):
                if p.size > self.preprocessing.size:
                    raise BackboneError(
                        f"{p.kind}: size {p.size} is larger than the combined input ({self.preprocessing.size})"
                    )
                p.input_preprocessing = self.preprocessing
        self.dim = sum(p.dim for p in parts)

    @property
    def model(self) -> nn.Module:  # what load_backbone(compile=True) would compile
        raise BackboneError("--compile is not supported for combined backbones; compile a single backbone")

    @property
    def precision(self) -> str:
        """The CLIP parts' precision; float32 when every part is a forensic one."""
        if all(isinstance(p, ForensicBackbone) for p in self.parts):
            return "float32"
        return self.__dict__.get("_precision", "float32")

    @precision.setter
    def precision(self, value: str) -> None:
        self.__dict__["_precision"] = value

    def describe(self) -> dict[str, Any]:
        return {"name": "concat", "parts": [p.describe() for p in self.parts], "dim": self.dim}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        autocast = self.__dict__.get("autocast_dtype")  # load_backbone sets it on the combination (CUDA)
        if autocast is not None:
            for p in self.parts:
                if not isinstance(p, ForensicBackbone):
                    p.autocast_dtype = autocast
        return torch.cat([p(pixels) for p in self.parts], dim=1)


FORENSIC_KINDS = ("spectrum", "npr", "clip-random")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_spec(text: str) -> list[tuple[str, dict[str, Any]]] | None:
    """``"spectrum:size=64+openai/clip..."`` -> [("spectrum", {"size": 64}), ("clip", {"model": "openai/clip..."})].

    None when ``text`` is a plain CLIP hub id or folder (a single part that names no forensic backbone), so
    callers go on exactly as before. A folder that exists is always a CLIP folder, whatever its name.
    """
    if not isinstance(text, str) or os.path.isdir(os.path.expanduser(text)):
        return None
    parts: list[tuple[str, dict[str, Any]]] = []
    for raw in text.split("+"):
        raw = raw.strip()
        name, sep, opts = raw.partition(":")
        if name in FORENSIC_KINDS:
            options: dict[str, Any] = {}
            for item in filter(None, (o.strip() for o in opts.split(","))) if sep else ():
                key, eq, value = item.partition("=")
                if not eq or not key:
                    raise BackboneError(f"backbone spec {text!r}: option {item!r} is not KEY=VALUE")
                options[key.strip()] = _parse_value(value.strip())
            parts.append((name, options))
        elif raw:
            parts.append(("clip", {"model": raw}))
        else:
            raise BackboneError(f"backbone spec {text!r}: empty part (two '+' in a row?)")
    if len(parts) == 1 and parts[0][0] == "clip":
        return None
    return parts


def _build_one(kind: str, options: dict[str, Any], clip_opts: dict[str, Any], device: torch.device) -> Backbone:
    try:
        if kind == "spectrum":
            return SpectrumBackbone(**options)
        if kind == "npr":
            return NPRBackbone(**options)
        if kind == "clip-random":
            return RandomClipBackbone.build(**options, **clip_opts, device=device)
        return ClipBackbone.load(ClipSpec(**options, **clip_opts), device=device)
    except TypeError as exc:  # an unknown option name
        raise BackboneError(f"{kind}: {exc}") from exc


def build_from_spec(text: str, options: dict[str, Any], device: torch.device) -> Backbone:
    """The backbone a spec string names (one part, or a :class:`ConcatBackbone` of several).

    ``options`` are the CLIP options (feature, normalize, preprocessing_mode, revision, attn_implementation): they
    apply to the CLIP parts; for a spec without CLIP, values other than the defaults are an error.
    """
    parts = parse_spec(text)
    if parts is None:
        parts = [("clip", {"model": text})]
    has_clip = any(kind in ("clip", "clip-random") for kind, _ in parts)
    if not has_clip:
        extra = {k: v for k, v in options.items() if CLIP_OPTION_DEFAULTS.get(k, object()) != v}
        if extra:
            raise BackboneError(f"backbone {text!r}: options {sorted(extra)} apply to CLIP backbones only")
        options = {}
    built = [_build_one(kind, opts, options, device) for kind, opts in parts]
    return built[0] if len(built) == 1 else ConcatBackbone(built)


def resolve_spec(kind: str, model: str, options: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """load_backbone's hook: a ``model`` string that is a forensic spec selects the ``"spec"`` kind."""
    if kind == "clip" and parse_spec(model) is not None:
        return "spec", model, options
    return kind, model, options


def spec_factory(opts: dict[str, Any], device: torch.device) -> Backbone:
    """``BACKBONES["spec"]``: ``opts["model"]`` is the spec string, the rest are CLIP options."""
    opts = dict(opts)
    return build_from_spec(opts.pop("model"), opts, device)
