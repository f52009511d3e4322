"""Image files (or bytes, or PIL images) -> (H, W, 3) uint8 RGB arrays, the same way for every format and mode.

The contract (docs/guides/image-decoding.md): EXIF orientation applied, first frame of animations, alpha composited
onto black, 16-bit samples scaled (not clipped) to 8 bits. Every bad file raises ``ImageDecodeError`` with a short
reason; decompression bombs are refused from the header; nothing is printed.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import struct
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "load_rgb",
    "pil_to_rgb",
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


def read_image_bytes(path: str, read: Callable[[], bytes] | None = None) -> bytes:
    """The whole file up front (``read()`` when given, e.g. from an object store), so that I/O failures are told
    apart from decoder failures (both are OSError): each becomes an ImageDecodeError with a short reason."""
    try:
        if read is not None:
            data = read()
        else:
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
    data = read_image_bytes(spath) if data is None else bytes(data)
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


def pil_to_rgb(im: Image.Image, *, name: str = "<PIL image>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image already open in memory -> (H, W, 3) uint8 RGB by the rules of :func:`load_rgb` (EXIF orientation,
    alpha onto black, 16-bit high byte). ``im`` itself is left unchanged; ``name`` names it in errors."""
    pixels = im.width * im.height
    if pixels > max_pixels:
        raise _bomb(name, im.size, pixels, max_pixels)
    try:
        upright = im.copy()
        _apply_exif_orientation(upright)
        return np.ascontiguousarray(_to_rgb(upright))
    except _UnsupportedModeError as exc:
        raise ImageDecodeError(name, f"unsupported image mode {exc.args[0]}") from None
    except (OSError, ValueError) as exc:  # e.g. a lazily opened image whose file is gone or truncated
        raise ImageDecodeError(name, f"cannot read the image ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------------- preprocessing


# ------------------------------------------------------------------------------------------------ perturbations
