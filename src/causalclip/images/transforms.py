"""Decoded RGB arrays -> backbone inputs (``Preprocessing``), and the deterministic blur/JPEG ``Perturbation``
(robustness, Fig. 4) and ``Augmentation`` (CNNDetection-style training augmentation) applied before it.

Apply a perturbation or augmentation to the decoded image, before ``Preprocessing`` (as CNNDetection and UnivFD do)."""

from __future__ import annotations

import functools
import io
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter


def check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {got}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {rgb.shape}")


@functools.lru_cache(maxsize=16)
def normalise_lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: the normalised value of each uint8 level, with the references' own float32 ops.

    torchvision computes ``x.float().div(255)`` then ``(x - mean) / std`` in float32; Hugging Face casts
    ``x * (1/255)`` (float64) to float32 first, which gives the same float32 for every level. Gathering from this
    table is as fast as the arithmetic and keeps both modes bit-identical to their reference.
    """
    scaled = np.arange(256, dtype=np.float32) / np.float32(255)
    lut = (scaled[None, :] - np.asarray(mean, dtype=np.float32)[:, None]) / np.asarray(std, dtype=np.float32)[:, None]
    lut.setflags(write=False)
    return lut


def _crop_axis(n: int, size: int) -> tuple[int, int, int]:
    """torchvision CenterCrop along one axis of length n: (source start, destination start, length)."""
    if n < size:  # zero-padded: (size - n) // 2 before, (size - n + 1) // 2 after
        return 0, (size - n) // 2, n
    return int(round((n - size) / 2.0)), 0, size  # Python's round: halves go to even (225 -> 0, 227 -> 2)


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """Decoded RGB -> normalised CLIP input. Stored in every feature set's meta.json and compared on resume.

    ``mode="crop"`` (the paper's): a centre ``size`` x ``size`` crop without resizing; images smaller than that are
    zero-padded in pixel space, exactly as torchvision ``CenterCrop(size)`` does, so resampling never smooths away
    generator artifacts. ``mode="clip"``: CLIP's bicubic resize of the shorter side to ``size`` then a centre crop,
    exactly as Hugging Face ``CLIPImageProcessor`` does (its crop rounds offsets down).
    """

    mode: Literal["crop", "clip"] = "crop"
    size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def __post_init__(self) -> None:
        if self.mode not in ("crop", "clip"):
            raise ValueError(f"Preprocessing.mode must be 'crop' or 'clip', got {self.mode!r}")
        if not isinstance(self.size, numbers.Integral) or isinstance(self.size, bool) or self.size <= 0:
            raise ValueError(f"Preprocessing.size must be a positive integer, got {self.size!r}")
        for name in ("mean", "std"):
            try:
                value = tuple(float(v) for v in getattr(self, name))
            except (TypeError, ValueError):
                value = ()
            if len(value) != 3 or not all(math.isfinite(v) for v in value):
                raise ValueError(f"Preprocessing.{name} must be 3 finite numbers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"Preprocessing.std must be positive, got {self.std!r}")
        object.__setattr__(self, "size", int(self.size))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; ``Preprocessing.from_dict(p.to_dict()) == p``."""
        return {"mode": self.mode, "size": self.size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Inverse of ``to_dict``; missing keys take the defaults, unknown keys are an error."""
        return cls(**_checked_kwargs(cls, d))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (3, size, size) float32, normalised with ``mean``/``std``."""
        check_rgb(rgb)
        if self.mode == "crop":
            crop = self._centre_crop(rgb)
        else:
            crop = self._resize_crop(rgb)
        lut = normalise_lut(self.mean, self.std)
        out = np.empty((3, self.size, self.size), dtype=np.float32)
        for c in range(3):
            np.take(lut[c], crop[..., c], out=out[c])
        return out

    def _centre_crop(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        sy, dy, ny = _crop_axis(h, self.size)
        sx, dx, nx = _crop_axis(w, self.size)
        if ny == nx == self.size:
            return rgb[sy : sy + ny, sx : sx + nx]  # a view: nothing to pad
        canvas = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        canvas[dy : dy + ny, dx : dx + nx] = rgb[sy : sy + ny, sx : sx + nx]
        return canvas

    def _resize_crop(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        s = self.size
        # Shorter side -> s, longer side -> int(s * long / short): Hugging Face's (and torchvision's) rounding.
        new_h, new_w = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        if (new_h, new_w) != (h, w):
            resized = Image.fromarray(rgb).resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
            rgb = np.asarray(resized)
        top, left = (new_h - s) // 2, (new_w - s) // 2  # Hugging Face floors; torchvision would round
        return rgb[top : top + s, left : left + s]


def _checked_kwargs(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise ValueError(f"{cls.__name__}.from_dict expects a mapping, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; expected a subset of {sorted(known)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _as_quality(value: Any, what: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 0 <= value <= 100:
        raise ValueError(f"{what} must be an integer JPEG quality in 0..100, got {value!r}")
    return int(value)


def _as_sigma(value: Any, what: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def _gaussian_blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """CNNDetection's blur: scipy gaussian_filter per channel into uint8 (so each 1-D pass is stored as uint8)."""
    out = np.empty_like(rgb)
    for c in range(3):
        gaussian_filter(rgb[..., c], sigma=sigma, output=out[..., c])
    return out


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """PIL JPEG round trip at ``quality`` with Pillow's other defaults (4:2:0 subsampling), as CNNDetection does."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.array(im.convert("RGB"))


@dataclass(frozen=True, kw_only=True)
class Perturbation:
    """A deterministic test-time degradation (paper Fig. 4): Gaussian blur first, then JPEG re-encoding.

    ``blur_sigma=0`` is the identity and is stored as None, so equal operations have equal keys.
    """

    jpeg_quality: int | None = None
    blur_sigma: float | None = None

    def __post_init__(self) -> None:
        if self.jpeg_quality is not None:
            object.__setattr__(self, "jpeg_quality", _as_quality(self.jpeg_quality, "Perturbation.jpeg_quality"))
        if self.blur_sigma is not None:
            sigma = _as_sigma(self.blur_sigma, "Perturbation.blur_sigma")
            object.__setattr__(self, "blur_sigma", sigma if sigma > 0 else None)

    @property
    def is_identity(self) -> bool:
        return self.jpeg_quality is None and self.blur_sigma is None

    @property
    def name(self) -> str:
        """A short stable label for tables and folder names: "none", "blur2", "jpeg90", "blur1.5+jpeg90"."""
        parts = []
        if self.blur_sigma is not None:
            parts.append(f"blur{self.blur_sigma:g}")
        if self.jpeg_quality is not None:
            parts.append(f"jpeg{self.jpeg_quality}")
        return "+".join(parts) or "none"

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> a new (H, W, 3) uint8 array; the input is never modified."""
        check_rgb(rgb)
        out = rgb
        if self.blur_sigma is not None:
            out = _gaussian_blur(out, self.blur_sigma)
        if self.jpeg_quality is not None:
            out = _jpeg(out, self.jpeg_quality)
        return out.copy() if out is rgb else out

    def to_dict(self) -> dict[str, Any] | None:
        """None for the identity, else the non-None fields; ``Perturbation.from_dict`` inverts it."""
        if self.is_identity:
            return None
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Perturbation:
        return cls() if d is None else cls(**_checked_kwargs(cls, d))


# Fig. 4's robustness sweep, one perturbation at a time: JPEG quality 100, 90, ..., 30 and blur sigma 1..4
# (sigma 0, the clean test, is the identity).
ROBUSTNESS_PERTURBATIONS: tuple[Perturbation, ...] = tuple(
    [Perturbation(jpeg_quality=q) for q in range(100, 29, -10)] + [Perturbation(blur_sigma=s) for s in (1, 2, 3, 4)]
)


@dataclass(frozen=True, kw_only=True)
class Augmentation:
    """CNNDetection's training augmentation: blur with sigma ~ U[lo, hi) with probability ``blur_prob``, then PIL
    JPEG with quality ~ U{lo..hi} (inclusive) with probability ``jpeg_prob``.

    Draws come from ``numpy.random.default_rng([seed, index])`` -- four uniforms per image in a fixed order, used or
    not -- so an image's augmentation depends only on (seed, index): re-runs and resumed runs reproduce it, and
    changing one probability does not reshuffle the other draws.
    """

    blur_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = 0.1
    jpeg_quality: tuple[int, int] = (30, 100)

    def __post_init__(self) -> None:
        for name in ("blur_prob", "jpeg_prob"):
            p = getattr(self, name)
            if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
                raise ValueError(f"Augmentation.{name} must be a probability in [0, 1], got {p!r}")
            object.__setattr__(self, name, float(p))
        lo_s, hi_s = self._pair("blur_sigma", _as_sigma)
        lo_q, hi_q = self._pair("jpeg_quality", _as_quality)
        object.__setattr__(self, "blur_sigma", (lo_s, hi_s))
        object.__setattr__(self, "jpeg_quality", (lo_q, hi_q))

    def _pair(self, name: str, check: Any) -> tuple[Any, Any]:
        value = getattr(self, name)
        if not isinstance(value, Sequence) or len(value) != 2:
            raise ValueError(f"Augmentation.{name} must be a (low, high) pair, got {value!r}")
        lo, hi = (check(v, f"Augmentation.{name}") for v in value)
        if lo > hi:
            raise ValueError(f"Augmentation.{name} must have low <= high, got {value!r}")
        return lo, hi

    def draw(self, *, seed: int, index: int) -> Perturbation:
        """The perturbation image ``index`` gets under ``seed`` (the identity for most images)."""
        for name, v in (("seed", seed), ("index", index)):
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0:
                raise ValueError(f"Augmentation: {name} must be a non-negative integer, got {v!r}")
        u_blur, u_sigma, u_jpeg, u_quality = np.random.default_rng([int(seed), int(index)]).random(4)
        sigma = None
        if u_blur < self.blur_prob:
            lo, hi = self.blur_sigma
            sigma = lo + float(u_sigma) * (hi - lo)
        quality = None
        if u_jpeg < self.jpeg_prob:
            lo, hi = self.jpeg_quality
            quality = min(hi, lo + int(u_quality * (hi - lo + 1)))
        return Perturbation(blur_sigma=sigma, jpeg_quality=quality)

    def apply(self, rgb: np.ndarray, *, seed: int, index: int) -> np.ndarray:
        """(H, W, 3) uint8 -> a new augmented array, deterministic given (seed, index)."""
        return self.draw(seed=seed, index=index).apply(rgb)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; ``Augmentation.from_dict(a.to_dict()) == a``."""
        return {
            "blur_prob": self.blur_prob,
            "blur_sigma": list(self.blur_sigma),
            "jpeg_prob": self.jpeg_prob,
            "jpeg_quality": list(self.jpeg_quality),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Augmentation:
        """Inverse of ``to_dict``; missing keys take the defaults, unknown keys are an error."""
        return cls(**_checked_kwargs(cls, d))
