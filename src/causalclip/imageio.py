"""Image files -> RGB arrays -> CLIP input tensors, plus the robustness perturbations and training augmentation.

The contract (README, "Image decoding and preprocessing"):

* ``load_rgb`` turns any supported file into an (H, W, 3) uint8 RGB array the same way for every format and mode:
  EXIF orientation applied, first frame of animations, alpha composited onto black, 16-bit samples scaled (not
  clipped) to 8 bits. Every bad file raises ``ImageDecodeError`` with a short reason; nothing is printed.
* ``Preprocessing`` maps that array to a normalised (3, size, size) float32 array: the paper's centre crop without
  resize (bit-identical to torchvision ``CenterCrop`` + ``ToTensor`` + ``Normalize``), or CLIP's resize-then-crop
  (bit-identical to Hugging Face ``CLIPImageProcessor``).
* ``Perturbation`` (Fig. 4: Gaussian blur, then PIL JPEG) and ``Augmentation`` (CNNDetection's blur/JPEG training
  augmentation) are deterministic, so two runs of the "same" evaluation or extraction give the same features.

Apply a perturbation or augmentation to the decoded image, before ``Preprocessing`` (as CNNDetection and UnivFD do).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import numbers
import os
import re
import struct
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from scipy.ndimage import gaussian_filter

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ROBUSTNESS_PERTURBATIONS",
    "Augmentation",
    "ImageDecodeError",
    "Perturbation",
    "Preprocessing",
    "load_rgb",
]

# Pillow's own default warning threshold (1024**3 // 4 // 3 pixels); a per-call limit, never a global setting.
DEFAULT_MAX_PIXELS = 89_478_485

# Formats a photo data set can plausibly hold. Pillow can open ~40 more, some without a magic number (TGA, SPIDER:
# random bytes may "decode" as one) and one that runs Ghostscript (EPS), so they are opt-in via ``formats=``.
# MPO (multi-picture JPEG) is opened by the JPEG plugin.
DEFAULT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "PPM", "JPEG2000")

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
# Header and EXIF parsing run with warnings silenced (see _quiet); catch_warnings swaps process-global state, so
# concurrent callers in one process take turns there. Pixel decoding runs unlocked.
_QUIET_LOCK = threading.Lock()
_PIL_PIXELS_RE = re.compile(r"\((\d+) pixels\)")


class _UnsupportedModeError(Exception):
    """Raised inside decoding for a Pillow mode with no RGB conversion; load_rgb turns it into ImageDecodeError."""


class ImageDecodeError(Exception):
    """A file could not be decoded into an RGB image; ``str(e) == f"{path}: {reason}"``.

    ``args == (path, reason)`` so the error pickles across DataLoader worker processes.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# --------------------------------------------------------------------------------------------------- decoding


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Pillow's warnings about a file's metadata (decompression-bomb size, corrupt EXIF, malformed MPO,
    invalid APNG): the bomb limit is enforced by load_rgb itself, and the rest describe data that is decoded as
    stored anyway -- printing one per image would flood an extraction log.
    """
    with _QUIET_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _read_bytes(path: str) -> bytes:
    """Read the whole file up front, so I/O failures are told apart from decoder failures (both are OSError)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except PermissionError:
        raise ImageDecodeError(path, "permission denied") from None
    except IsADirectoryError:
        raise ImageDecodeError(path, "is a directory") from None
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    return data


@functools.lru_cache(maxsize=8)
def _allowed_formats(formats: tuple[str, ...] | None) -> tuple[str, ...]:
    """Upper-cased Pillow format names (all of them for None); an unknown name is a programming error."""
    Image.init()
    if formats is None:
        return tuple(Image.ID)
    allowed = tuple(f.upper() for f in formats)
    unknown = [f for f in allowed if f not in Image.OPEN]
    if unknown or not allowed:
        raise ValueError(f"unknown Pillow image format(s) {unknown or '(none given)'}; this Pillow opens {Image.ID}")
    return allowed


def _recognised_format(prefix: bytes) -> str | None:
    """The first Pillow format whose magic-number check accepts ``prefix`` (formats without one are skipped)."""
    Image.init()
    for fmt in Image.ID:
        _, accept = Image.OPEN[fmt]
        try:
            if accept is not None and accept(prefix) is True:
                return fmt
        except Exception:  # an accept() is a heuristic on 16 bytes; a failing one just does not recognise it
            continue
    return None


def _declared_size(data: bytes, formats: Sequence[str]) -> tuple[int, int] | None:
    """Width and height from the header alone, for the message when Pillow's own bomb check aborted Image.open."""
    for fmt in formats:
        factory, accept = Image.OPEN.get(fmt.upper(), (None, None))
        try:
            if factory is not None and (accept is None or accept(data[:16]) is True):
                return tuple(factory(io.BytesIO(data), "").size)  # type: ignore[return-value]
        except Exception:  # a best-effort probe for an error message; the caller has a fallback
            continue
    return None


def _bomb(path: str, size: tuple[int, int] | None, pixels: int, limit: int, note: str = "") -> ImageDecodeError:
    dims = f"{size[0]} x {size[1]} = " if size else ""
    return ImageDecodeError(path, f"decompression bomb: {dims}{pixels} pixels > {limit}{note}")


def _pillow_bomb(path: str, exc: Exception, size: tuple[int, int] | None, max_pixels: int) -> ImageDecodeError:
    """Pillow's own hard limit (2 x PIL.Image.MAX_IMAGE_PIXELS) fired: report it in load_rgb's words."""
    match = _PIL_PIXELS_RE.search(str(exc))
    pixels = size[0] * size[1] if size else int(match.group(1)) if match else None
    if pixels is None:
        return ImageDecodeError(path, f"decompression bomb: {exc}")
    if pixels > max_pixels:
        return _bomb(path, size, pixels, max_pixels)
    hard = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return _bomb(path, size, pixels, hard, " (Pillow's hard limit, 2 x PIL.Image.MAX_IMAGE_PIXELS)")


def _open(path: str, data: bytes, formats: Sequence[str], max_pixels: int) -> Image.Image:
    """Parse the header only, and refuse images over ``max_pixels`` before any pixel buffer is allocated."""
    with _quiet():
        try:
            im = Image.open(io.BytesIO(data), formats=list(formats))
        except Image.DecompressionBombError as exc:  # Image.open gave no image to read the size of: probe for it
            raise _pillow_bomb(path, exc, _declared_size(data, formats), max_pixels) from None
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise _bomb(path, (width, height), width * height, max_pixels)
    if width <= 0 or height <= 0:
        im.close()
        raise ImageDecodeError(path, f"empty image ({width} x {height})")
    return im


def _apply_exif_orientation(im: Image.Image) -> None:
    """Rotate/flip ``im`` upright in place. A corrupt EXIF block leaves the pixels as stored, as image viewers (and
    pipelines that ignore EXIF) show them: Pillow tolerates some damage with a warning and raises on other damage.
    """
    with _quiet():
        try:
            ImageOps.exif_transpose(im, in_place=True)
        except (SyntaxError, OSError, ValueError, TypeError, KeyError, IndexError, struct.error):
            pass


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 straight alpha -> (H, W, 3) uint8: round(c * a / 255), i.e. over a black background."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    prod = rgba[..., :3].astype(np.uint16) * alpha  # <= 255 * 255, fits uint16
    return ((prod + 127) // 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """One rule per mode; every alpha-carrying image (alpha band or tRNS/GIF transparency) goes through RGBA."""
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        # 16-bit samples -> their high byte, the same rule Pillow's PNG decoder applies to 16-bit RGB/RGBA/LA
        # (it reads only the most significant byte), so grey and colour 16-bit files agree; x * 257 maps back to x.
        # "I" (32-bit int) images come from 16-bit sources in practice and are read on the same 0..65535 scale.
        wide = np.asarray(im).astype(np.int64)
        grey = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        if "transparency" in im.info and mode != "I":
            alpha = np.where(wide == im.info["transparency"], 0, 255).astype(np.uint8)
            return _composite_on_black(np.dstack([grey, grey, grey, alpha]))
        return _grey_to_rgb(grey)
    if mode == "F":
        # Pillow's convention for float images is the 8-bit scale (L -> F keeps 0..255); NaN counts as 0.
        values = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        return _grey_to_rgb(np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8))
    if mode == "RGB" and "transparency" not in im.info:
        return np.array(im)
    alpha = mode in _ALPHA_MODES or "transparency" in im.info or (mode == "P" and im.palette.mode == "RGBA")
    try:
        # L, 1, P, CMYK (Pillow's naive conversion; Adobe-inverted JPEGs are handled by the decoder), YCbCr, LAB,
        # HSV, RGBX; with alpha: RGBA, LA, PA, RGBa, and P/L/RGB with a transparent palette entry or colour key.
        converted = np.array(im.convert("RGBA" if alpha else "RGB"))
    except ValueError as exc:  # "conversion from X to Y not supported"
        raise _UnsupportedModeError(mode) from exc
    return _composite_on_black(converted) if alpha else converted


def load_rgb(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] | None = DEFAULT_FORMATS,
    data: bytes | None = None,
) -> np.ndarray:
    """Decode ``path`` to a C-contiguous, writeable (H, W, 3) uint8 RGB array, the same way for every format.

    ``data``: the file's bytes, already in memory (an HTTP upload); ``path`` then only names it in errors.

    The EXIF orientation is applied (upright pixels), animations give their first frame, alpha is composited onto
    black, 16-bit samples keep their high byte. Images over ``max_pixels`` are refused from the header alone, before
    decoding. ``formats`` are Pillow format names (None: every format Pillow has). Every bad file raises
    ImageDecodeError(path, reason); nothing is printed.

    Pillow's hard limit (2 x ``PIL.Image.MAX_IMAGE_PIXELS``) still applies: a ``max_pixels`` above it needs that
    global raised by the application too. ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` must be False, otherwise
    truncated files would decode silently into grey-filled images; this raises RuntimeError if it is not.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images would decode silently with grey fill; "
            "set it back to False before decoding data sets"
        )
    spath = os.fsdecode(os.fspath(path))
    allowed = _allowed_formats(None if formats is None else tuple(formats))
    data = _read_bytes(spath) if data is None else bytes(data)
    try:
        im = _open(spath, data, allowed, max_pixels)
        with im:
            im.load()  # frame 0 of an animation: Image.open leaves the file on its first frame
            _apply_exif_orientation(im)
            rgb = _to_rgb(im)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        fmt = _recognised_format(data[:16])
        if fmt is None:
            reason = "not an image (unrecognised format)"
        elif fmt in allowed:
            reason = f"corrupt or truncated {fmt} header"
        else:
            reason = f"format {fmt} is not enabled (formats={list(allowed)})"
        raise ImageDecodeError(spath, reason) from None
    except _UnsupportedModeError as exc:
        raise ImageDecodeError(spath, f"unsupported image mode {exc.args[0]}") from None
    except Image.DecompressionBombError as exc:  # a plugin's own check while decoding (e.g. TIFF tiles)
        raise _pillow_bomb(spath, exc, None, max_pixels) from None
    except MemoryError:
        raise ImageDecodeError(spath, "out of memory while decoding") from None
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, EOFError, ...
        message = str(exc) or type(exc).__name__
        if "truncated" in message.lower():
            raise ImageDecodeError(spath, "truncated image data") from exc
        raise ImageDecodeError(spath, f"corrupt image data ({type(exc).__name__}: {message})") from exc
    return np.ascontiguousarray(rgb)


# ---------------------------------------------------------------------------------------------- preprocessing


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {got}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {rgb.shape}")


@functools.lru_cache(maxsize=16)
def _normalise_lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
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
        _check_rgb(rgb)
        if self.mode == "crop":
            crop = self._centre_crop(rgb)
        else:
            crop = self._resize_crop(rgb)
        lut = _normalise_lut(self.mean, self.std)
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


# ------------------------------------------------------------------------------------------------ perturbations


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
        _check_rgb(rgb)
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
