"""Image decoding, preprocessing and perturbations: contracts checked against references computed another way.

References: numpy for EXIF transposes and alpha compositing, a line-by-line transcription of torchvision's
``center_crop`` + ``ToTensor`` + ``Normalize`` (torchvision is not installable here) and PIL's ``Image.crop``,
Hugging Face's ``CLIPImageProcessor``, and CNNDetection's own blur/JPEG code.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import pickle
import struct
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from scipy.ndimage import gaussian_filter

from causalclip.images import decode as imageio
from causalclip.images.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, load_rgb
from causalclip.images.transforms import ROBUSTNESS_PERTURBATIONS, Augmentation, Perturbation, Preprocessing

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------------------------------------------------------------------- helpers


def picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise: asymmetric (so flips/rotations show) and JPEG-friendly."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 60 * np.sin(x / 7.0 + y / 11.0)], -1)
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def save(im: Image.Image, path, **kw) -> str:
    im.save(path, **kw)
    return str(path)


def png_bytes(
    width: int, height: int, *, color_type: int, bit_depth: int, rows: bytes = b"", idat: bytes | None = None
) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB), with valid CRCs; ``rows`` are filter-0 scanlines,
    ``idat`` replaces their compressed stream verbatim."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows) if idat is None else idat)
        + chunk(b"IEND", b"")
    )


def rows_of(arr: np.ndarray) -> bytes:
    return b"".join(b"\x00" + arr[y].tobytes() for y in range(arr.shape[0]))


def composite_reference(rgba: np.ndarray) -> np.ndarray:
    """round(c * a / 255) in float64, halves up: the documented alpha rule, computed independently."""
    c = rgba[..., :3].astype(np.float64)
    a = rgba[..., 3:4].astype(np.float64)
    return np.floor(c * a / 255.0 + 0.5).astype(np.uint8)


def pil_rgb(path) -> np.ndarray:
    """Pillow's plain decode, ignoring EXIF: np.array(Image.open(path).convert("RGB"))."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF while opening
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))


def pil_info(path) -> tuple[str, int]:
    """(mode, frame count) as Pillow opens the file."""
    with Image.open(path) as im:
        return im.mode, getattr(im, "n_frames", 1)


def quiet_load(path, **kw):
    """load_rgb with every warning turned into a failure, so 'nothing printed, nothing warned' is checked too."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_rgb(path, **kw)


def decode_reason(path, **kw) -> str:
    with pytest.raises(ImageDecodeError) as info:
        quiet_load(path, **kw)
    err = info.value
    assert err.path == str(path) and str(err) == f"{path}: {err.reason}"
    return err.reason


# ------------------------------------------------------------------------------------------ load_rgb: modes


def test_plain_rgb_formats_decode_like_pil(tmp_path):
    ref = picture(37, 53)
    for ext, kw in [("png", {}), ("bmp", {}), ("tiff", {}), ("webp", {"lossless": True}), ("ppm", {})]:
        out = quiet_load(save(Image.fromarray(ref), tmp_path / f"a.{ext}", **kw))
        assert out.dtype == np.uint8 and out.shape == (37, 53, 3) and out.flags.c_contiguous and out.flags.writeable
        np.testing.assert_array_equal(out, ref, err_msg=ext)
    path = save(Image.fromarray(ref), tmp_path / "a.jpg", quality=90)
    np.testing.assert_array_equal(quiet_load(path), pil_rgb(path))


EXIF_UPRIGHT = {  # orientation -> what a viewer does to the stored pixels, written with numpy
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),  # rotate 90 degrees clockwise
    7: lambda a: np.rot90(a, k=2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", sorted(EXIF_UPRIGHT))
def test_exif_orientation_gives_upright_pixels(tmp_path, orientation):
    stored = picture(20, 30, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = quiet_load(save(Image.fromarray(stored), tmp_path / "o.png", exif=exif))
    np.testing.assert_array_equal(out, EXIF_UPRIGHT[orientation](stored))


def test_rotated_jpeg_gives_upright_pixels(tmp_path):
    stored = picture(40, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone held upright: stored landscape, shown portrait
    path = save(Image.fromarray(stored), tmp_path / "r.jpg", exif=exif, quality=95)
    out = quiet_load(path)
    assert out.shape == (64, 40, 3)
    as_stored = pil_rgb(path)  # what a decoder ignoring EXIF gives
    np.testing.assert_array_equal(out, np.rot90(as_stored, k=-1))  # rotated 90 degrees clockwise, exactly
    assert np.abs(as_stored.astype(int) - stored).mean() < 8.0  # (and that is the stored picture, up to JPEG noise)


def test_corrupt_exif_leaves_pixels_as_stored_without_warnings(tmp_path):
    stored = picture(8, 16)
    corrupt = [b"Exif\x00\x00" + bytes(range(256)) * 2, b"Exif\x00\x00MM\x00\x2a\x00\x00\xff\xff"]
    for i, exif in enumerate(corrupt):
        for ext, kw in (("jpg", {"quality": 95}), ("png", {})):
            path = save(
                Image.fromarray(stored), tmp_path / f"e{i}.{ext}", exif=exif[6:] if ext == "png" else exif, **kw
            )
            np.testing.assert_array_equal(quiet_load(path), pil_rgb(path))


def test_greyscale_and_bilevel(tmp_path):
    grey = picture(16, 24)[..., 0]
    np.testing.assert_array_equal(quiet_load(save(Image.fromarray(grey), tmp_path / "l.png")), np.dstack([grey] * 3))
    bits = grey > 128
    out = quiet_load(save(Image.fromarray(bits), tmp_path / "b.png"))
    assert pil_info(tmp_path / "b.png")[0] == "1"
    np.testing.assert_array_equal(out, np.dstack([bits.astype(np.uint8) * 255] * 3))


def palette_picture(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(indices (H, W) uint8, RGBA palette (4, 4) uint8) with opaque, half, clear and faint entries."""
    rng = np.random.default_rng(seed)
    palette = np.array([[200, 30, 40, 255], [10, 220, 90, 128], [250, 250, 5, 0], [90, 60, 230, 60]], np.uint8)
    return rng.integers(0, 4, (18, 26)).astype(np.uint8), palette


def p_image(indices: np.ndarray, palette: np.ndarray) -> Image.Image:
    im = Image.frombytes("P", indices.shape[::-1], indices.tobytes())
    im.putpalette(palette[:, :3].tobytes())
    return im


def test_palette_without_transparency(tmp_path):
    indices, palette = palette_picture()
    out = quiet_load(save(p_image(indices, palette), tmp_path / "p.png"))
    np.testing.assert_array_equal(out, palette[indices, :3])


def test_alpha_rule_is_the_same_for_every_alpha_mode(tmp_path):
    indices, palette = palette_picture()
    rgba = palette[indices]
    expected = composite_reference(rgba)
    assert expected[indices == 2].max() == 0  # fully transparent -> black, whatever colour is stored underneath
    from_rgba = quiet_load(save(Image.fromarray(rgba), tmp_path / "rgba.png"))
    from_p = quiet_load(save(p_image(indices, palette), tmp_path / "p.png", transparency=palette[:, 3].tobytes()))
    assert pil_info(tmp_path / "p.png")[0] == "P"
    np.testing.assert_array_equal(from_rgba, expected)
    np.testing.assert_array_equal(from_p, expected)
    # Straight webp alpha (lossless) follows the same rule.
    np.testing.assert_array_equal(quiet_load(save(Image.fromarray(rgba), tmp_path / "a.webp", lossless=True)), expected)

    grey_alpha = np.dstack([rgba[..., 1], rgba[..., 3]])
    la = quiet_load(save(Image.fromarray(grey_alpha, mode="LA"), tmp_path / "la.png"))
    grey_rgba = np.dstack([rgba[..., 1]] * 3 + [rgba[..., 3]])
    np.testing.assert_array_equal(la, composite_reference(grey_rgba))
    np.testing.assert_array_equal(la, quiet_load(save(Image.fromarray(grey_rgba), tmp_path / "grey_rgba.png")))


def test_binary_transparency_gif_and_colour_keys(tmp_path):
    indices, palette = palette_picture(1)
    binary = palette.copy()
    binary[:, 3] = np.where(np.arange(4) == 2, 0, 255)
    expected = composite_reference(binary[indices])
    gif = quiet_load(save(p_image(indices, palette), tmp_path / "t.gif", transparency=2))
    np.testing.assert_array_equal(gif, expected)
    # tRNS colour key on an RGB PNG and on a greyscale PNG: that colour becomes transparent (-> black).
    rgb = palette[indices, :3]
    out = quiet_load(save(Image.fromarray(rgb), tmp_path / "key.png", transparency=tuple(int(v) for v in rgb[0, 0])))
    np.testing.assert_array_equal(out, np.where((rgb == rgb[0, 0]).all(-1, keepdims=True), 0, rgb))
    grey = rgb[..., 0]
    out = quiet_load(save(Image.fromarray(grey), tmp_path / "lkey.png", transparency=int(grey[0, 0])))
    np.testing.assert_array_equal(out, np.dstack([np.where(grey == grey[0, 0], 0, grey)] * 3))


def test_cmyk_jpeg_is_not_inverted(tmp_path):
    ref = picture(32, 48)
    path = save(Image.fromarray(ref).convert("CMYK"), tmp_path / "c.jpg", quality=95)
    assert pil_info(path)[0] == "CMYK"
    out = quiet_load(path)
    assert out.shape == ref.shape
    assert np.abs(out.astype(int) - ref).mean() < 4.0  # JPEG noise, not 255 - ref


def test_16_bit_samples_keep_their_high_byte_for_grey_and_colour(tmp_path):
    rng = np.random.default_rng(3)
    v = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    v[0, :4] = [0, 255, 256, 65535]
    high = (v >> 8).astype(np.uint8)
    grey_png = save(Image.fromarray(v), tmp_path / "g16.png")
    assert pil_info(grey_png)[0] in ("I;16", "I")  # "I" before Pillow 10.x: the same rule applies
    np.testing.assert_array_equal(quiet_load(grey_png), np.dstack([high] * 3))
    np.testing.assert_array_equal(quiet_load(save(Image.fromarray(v), tmp_path / "g16.tiff")), np.dstack([high] * 3))
    # 16-bit RGB (Pillow decodes it to 8-bit RGB itself): the same grey data gives the same pixels.
    (tmp_path / "rgb16.png").write_bytes(
        png_bytes(11, 9, color_type=2, bit_depth=16, rows=rows_of(np.dstack([v] * 3).astype(">u2")))
    )
    np.testing.assert_array_equal(quiet_load(tmp_path / "rgb16.png"), np.dstack([high] * 3))
    colour = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    (tmp_path / "c16.png").write_bytes(png_bytes(11, 9, color_type=2, bit_depth=16, rows=rows_of(colour.astype(">u2"))))
    np.testing.assert_array_equal(quiet_load(tmp_path / "c16.png"), (colour >> 8).astype(np.uint8))
    # Not PIL's convert("RGB"), which clips: everything >= 255 would be white.
    assert (pil_rgb(grey_png)[..., 0] == 255).mean() > 0.9
    # An 8-bit picture widened as x * 257 comes back exactly.
    grey8 = picture(9, 11)[..., 2]
    wide = save(Image.fromarray(grey8.astype(np.uint16) * 257), tmp_path / "w.png")
    np.testing.assert_array_equal(quiet_load(wide), np.dstack([grey8] * 3))


def test_32_bit_int_and_float_modes(tmp_path):
    ints = np.array([[-5, 0, 255, 256, 40000, 65535, 70000, 2**31 - 1]], np.int32)
    path = save(Image.fromarray(ints), tmp_path / "i.tiff")
    assert pil_info(path)[0] == "I"
    np.testing.assert_array_equal(quiet_load(path)[..., 0], [[0, 0, 0, 1, 156, 255, 255, 255]])
    floats = np.array([[-3.0, 0.0, 0.4, 0.6, 127.5, 254.6, 300.0, np.nan]], np.float32)
    path = save(Image.fromarray(floats), tmp_path / "f.tiff")
    assert pil_info(path)[0] == "F"
    np.testing.assert_array_equal(quiet_load(path)[..., 0], [[0, 0, 0, 1, 128, 255, 255, 0]])
    # Pillow's convention: an L picture converted to F decodes to the same pixels.
    grey = picture(7, 9)[..., 0]
    out = quiet_load(save(Image.fromarray(grey).convert("F"), tmp_path / "lf.tiff"))
    np.testing.assert_array_equal(out, np.dstack([grey] * 3))


@pytest.mark.parametrize("fmt", ["gif", "webp", "png"])
def test_animations_give_their_first_frame(tmp_path, fmt):
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]
    frames = [Image.new("RGB", (12, 8), c) for c in colours]
    kw = {"lossless": True} if fmt == "webp" else {}
    path = save(frames[0], tmp_path / f"anim.{fmt}", save_all=True, append_images=frames[1:], duration=100, **kw)
    assert pil_info(path)[1] == 3
    out = quiet_load(path)
    assert out.shape == (8, 12, 3)
    np.testing.assert_array_equal(out, np.broadcast_to(np.array(colours[0], np.uint8), (8, 12, 3)))


def test_mpo_gives_its_primary_image(tmp_path):
    first, second = Image.new("RGB", (16, 8), (200, 40, 40)), Image.new("RGB", (16, 8), (20, 40, 220))
    path = save(first, tmp_path / "stereo.mpo", format="MPO", save_all=True, append_images=[second], quality=95)
    assert pil_info(path)[1] == 2
    assert np.abs(quiet_load(path).astype(int) - (200, 40, 40)).max() <= 3


# ------------------------------------------------------------------------------------- load_rgb: bad input


@pytest.fixture
def good_jpeg_png(tmp_path):
    ref = Image.fromarray(picture(64, 80))
    jpg, png = io.BytesIO(), io.BytesIO()
    ref.save(jpg, "JPEG", quality=90)
    ref.save(png, "PNG")
    return jpg.getvalue(), png.getvalue()


def test_empty_file(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    assert decode_reason(tmp_path / "e.jpg") == "empty file (0 bytes)"


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_truncated_jpeg_and_png_are_errors_not_grey_images(tmp_path, good_jpeg_png, fraction):
    for name, data in zip(("t.jpg", "t.png"), good_jpeg_png, strict=True):
        (tmp_path / name).write_bytes(data[: int(len(data) * fraction)])
        assert decode_reason(tmp_path / name) == "truncated image data", name
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_header_cut_short_and_corrupt_data(tmp_path, good_jpeg_png):
    jpg, png = good_jpeg_png
    (tmp_path / "h.png").write_bytes(png[:40])  # inside the IHDR chunk
    assert decode_reason(tmp_path / "h.png") == "corrupt or truncated PNG header"
    (tmp_path / "j.jpg").write_bytes(jpg[:-2])  # all but the end-of-image marker
    assert decode_reason(tmp_path / "j.jpg") == "truncated image data"
    garbage = np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes()
    # A structurally valid PNG (good CRCs) whose compressed pixel stream is noise.
    (tmp_path / "idat.png").write_bytes(png_bytes(16, 16, color_type=2, bit_depth=8, idat=garbage))
    assert decode_reason(tmp_path / "idat.png").startswith("corrupt image data")
    crc = bytearray(png)
    crc[30] ^= 0xFF  # inside IHDR: the checksum no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(crc))
    assert decode_reason(tmp_path / "crc.png") == "corrupt or truncated PNG header"


def test_non_images(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture\n")
    assert decode_reason(tmp_path / "notes.jpg") == "not an image (unrecognised format)"
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert decode_reason(tmp_path / "noise.png") == "not an image (unrecognised format)"
    ico = save(Image.fromarray(picture(16, 16)), tmp_path / "i.ico")
    assert decode_reason(ico).startswith("format ICO is not enabled")
    assert quiet_load(ico, formats=None).shape == (16, 16, 3)
    with pytest.raises(ValueError, match="unknown Pillow image format"):
        load_rgb(ico, formats=["NOPE"])


def test_unreadable_paths(tmp_path, monkeypatch):
    assert decode_reason(tmp_path / "missing.png") == "file not found"
    assert decode_reason(tmp_path) == "is a directory"

    def deny(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(imageio, "open", deny, raising=False)  # shadows the builtin inside the module only
    assert decode_reason(tmp_path / "x.png") == "permission denied"

    def eio(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(imageio, "open", eio, raising=False)
    assert decode_reason(tmp_path / "x.png") == "cannot read file: Input/output error"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads mode-000 files")
def test_permission_denied_for_real(tmp_path):
    path = save(Image.new("RGB", (4, 4)), tmp_path / "locked.png")
    os.chmod(path, 0)
    try:
        assert decode_reason(path) == "permission denied"
    finally:
        os.chmod(path, 0o600)


def jpeg_declaring(tmp_path, width: int, height: int) -> str:
    """A valid 8 x 8 JPEG whose frame header is patched to claim width x height."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    (tmp_path / "big.jpg").write_bytes(bytes(data))
    return str(tmp_path / "big.jpg")


@pytest.mark.parametrize("side", [10_000, 40_000])  # Pillow warns above 89.5M pixels and raises above 179M
def test_decompression_bombs_are_refused_from_the_header(tmp_path, monkeypatch, side):
    def no_decoding(self):
        raise AssertionError("pixel decoding started")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    (tmp_path / "big.png").write_bytes(png_bytes(side, side, color_type=2, bit_depth=8))
    for path in (str(tmp_path / "big.png"), jpeg_declaring(tmp_path, side, side)):
        start = time.perf_counter()
        reason = decode_reason(path)
        assert time.perf_counter() - start < 0.5
        assert reason == f"decompression bomb: {side} x {side} = {side * side} pixels > {DEFAULT_MAX_PIXELS}"


def test_max_pixels_is_per_call(tmp_path, monkeypatch):
    path = save(Image.fromarray(picture(40, 50)), tmp_path / "p.png")
    assert decode_reason(path, max_pixels=1999) == "decompression bomb: 50 x 40 = 2000 pixels > 1999"
    assert quiet_load(path, max_pixels=2000).shape == (40, 50, 3)
    # A limit above Pillow's warning threshold replaces it: no warning, and decoding is reached.
    (tmp_path / "big.png").write_bytes(png_bytes(10_000, 10_000, color_type=0, bit_depth=1))

    def reached(self):
        raise RuntimeError("reached decoding")

    monkeypatch.setattr(ImageFile.ImageFile, "load", reached)
    assert "reached decoding" in decode_reason(tmp_path / "big.png", max_pixels=150_000_000)


def test_bad_files_print_nothing(tmp_path, capfd, good_jpeg_png):
    jpg, png = good_jpeg_png
    bad = {"a.jpg": jpg[: len(jpg) // 2], "b.png": png[:100], "c.jpg": b"text", "d.gif": b"GIF89a" + b"\x00" * 20}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        decode_reason(tmp_path / name)
    (tmp_path / "big.png").write_bytes(png_bytes(12_000, 12_000, color_type=2, bit_depth=8))
    decode_reason(tmp_path / "big.png")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_threads_decode_alike_and_leave_warning_filters_alone(tmp_path, good_jpeg_png):
    jpg, png = good_jpeg_png
    files = {"a.jpg": jpg, "b.png": png, "c.jpg": jpg[: len(jpg) // 2], "d.txt": b"text"}
    files["e.png"] = png_bytes(12_000, 12_000, color_type=2, bit_depth=8)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    def attempt(name):
        try:
            return load_rgb(tmp_path / name)
        except ImageDecodeError as err:
            return err.reason

    filters = list(warnings.filters)
    expected = {name: attempt(name) for name in files}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(attempt, list(files) * 8))
    for name, got in zip(list(files) * 8, results, strict=True):
        np.testing.assert_equal(got, expected[name])
    assert warnings.filters == filters


def test_error_pickles_and_truncation_setting_is_guarded(tmp_path, monkeypatch):
    err = pickle.loads(pickle.dumps(ImageDecodeError("/x/y.png", "truncated image data")))
    assert (err.path, err.reason, str(err)) == ("/x/y.png", "truncated image data", "/x/y.png: truncated image data")
    path = save(Image.new("RGB", (4, 4)), tmp_path / "ok.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        load_rgb(path)


# ------------------------------------------------------------------------------------------- Preprocessing


def torchvision_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """torchvision.transforms.functional.center_crop (v0.15+), transcribed line by line for an HWC array."""
    image_height, image_width = img.shape[:2]
    crop_height = crop_width = size
    if crop_width > image_width or crop_height > image_height:
        padding_ltrb = [
            (crop_width - image_width) // 2 if crop_width > image_width else 0,
            (crop_height - image_height) // 2 if crop_height > image_height else 0,
            (crop_width - image_width + 1) // 2 if crop_width > image_width else 0,
            (crop_height - image_height + 1) // 2 if crop_height > image_height else 0,
        ]
        left, top, right, bottom = padding_ltrb
        img = np.pad(img, ((top, bottom), (left, right), (0, 0)), constant_values=0)
        image_height, image_width = img.shape[:2]
        if crop_width == image_width and crop_height == image_height:
            return img
    crop_top = int(round((image_height - crop_height) / 2.0))
    crop_left = int(round((image_width - crop_width) / 2.0))
    return img[crop_top : crop_top + crop_height, crop_left : crop_left + crop_width]


def pil_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The same crop with PIL's Image.crop, whose out-of-bounds area is zero: one box, no separate padding."""
    h, w = img.shape[:2]
    left = int(round((w - size) / 2.0)) if w >= size else -((size - w) // 2)
    top = int(round((h - size) / 2.0)) if h >= size else -((size - h) // 2)
    return np.asarray(Image.fromarray(img).crop((left, top, left + size, top + size)))


def to_tensor_normalize(crop: np.ndarray) -> np.ndarray:
    """torchvision ToTensor + Normalize(CLIP mean, std), in torch."""
    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean = torch.as_tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    return t.sub_(mean).div_(std).numpy()


CROP_SHAPES = [(224, 224), (225, 225), (226, 227), (229, 231), (300, 301), (500, 333), (100, 150), (223, 221),
               (1, 1), (223, 500), (600, 97), (224, 230)]  # fmt: skip


@pytest.mark.parametrize("shape", CROP_SHAPES)
def test_crop_mode_is_torchvision_center_crop_bit_for_bit(shape):
    rgb = picture(*shape, seed=shape[0] * 7 + shape[1])
    ref_crop = torchvision_center_crop(rgb, 224)
    np.testing.assert_array_equal(ref_crop, pil_center_crop(rgb, 224))
    out = Preprocessing()(rgb)
    assert out.dtype == np.float32 and out.shape == (3, 224, 224) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, to_tensor_normalize(ref_crop))


def undo_normalisation(out: np.ndarray) -> np.ndarray:
    mean, std = np.array(CLIP_MEAN)[:, None, None], np.array(CLIP_STD)[:, None, None]
    return np.rint((out * std + mean) * 255).astype(int)


@pytest.mark.parametrize(
    ("width", "first_column", "pad_left", "pad_right"),
    [(224, 0, 0, 0), (225, 0, 0, 0), (226, 1, 0, 0), (227, 2, 0, 0), (229, 2, 0, 0), (231, 4, 0, 0),
     (223, 0, 0, 1), (222, 0, 1, 1), (221, 0, 1, 2)],
)  # fmt: skip
def test_crop_offsets_round_half_to_even_and_pad_right_heavy(width, first_column, pad_left, pad_right):
    cols = np.broadcast_to((np.arange(width) + 1).astype(np.uint8)[None, :, None], (224, width, 3)).copy()
    row = undo_normalisation(Preprocessing()(cols))[0, 0]
    assert (row[:pad_left] == 0).all() and (row[224 - pad_right :] == 0).all()
    assert row[pad_left] == first_column + 1
    np.testing.assert_array_equal(np.diff(row[pad_left : 224 - pad_right]), 1)


@pytest.fixture(scope="module")
def hf_clip_processor():
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPImageProcessor()


def test_clip_mode_matches_hugging_face_clip_image_processor(hf_clip_processor):
    pre = Preprocessing(mode="clip")
    worst = 0.0
    for shape in [(300, 400), (180, 250), (500, 227), (224, 224), (231, 224), (97, 123), (640, 481)]:
        rgb = picture(*shape, seed=shape[1])
        ref = hf_clip_processor(images=rgb, return_tensors="np")["pixel_values"][0]
        out = pre(rgb)
        assert out.shape == ref.shape == (3, 224, 224)
        worst = max(worst, float(np.abs(out - ref).max()))
    assert worst <= 1e-6  # observed: 0.0 (bit-identical: same PIL resize, same float ops)


def test_preprocessing_config_round_trips_and_validates():
    for pre in (Preprocessing(), Preprocessing(mode="clip", size=336, mean=(0.5, 0.5, 0.5), std=(0.2, 0.3, 0.4))):
        d = json.loads(json.dumps(pre.to_dict()))
        assert Preprocessing.from_dict(d) == pre and d["mode"] == pre.mode
    assert Preprocessing.from_dict({}) == Preprocessing()
    with pytest.raises(ValueError, match="unknown key"):
        Preprocessing.from_dict({"mode": "crop", "resize": 256})
    for bad in ({"mode": "resize"}, {"size": 0}, {"size": 2.5}, {"std": (1, 0, 1)}, {"mean": (1, 2)}):
        with pytest.raises(ValueError):
            Preprocessing(**bad)
    pre = Preprocessing(size=32)
    assert pre(picture(50, 40)).shape == (3, 32, 32)
    for bad_input in (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((0, 8, 3), np.uint8)):
        with pytest.raises(ValueError, match="uint8|non-empty"):
            pre(bad_input)


# -------------------------------------------------------------------------------------------- Perturbation


def cnndetection_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """CNNDetection's data/datasets.py gaussian_blur: per channel, in place, uint8 output."""
    img = img.copy()
    gaussian_filter(img[:, :, 0], output=img[:, :, 0], sigma=sigma)
    gaussian_filter(img[:, :, 1], output=img[:, :, 1], sigma=sigma)
    gaussian_filter(img[:, :, 2], output=img[:, :, 2], sigma=sigma)
    return img


def pil_jpg(img: np.ndarray, quality: int) -> np.ndarray:
    """CNNDetection's pil_jpg."""
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="jpeg", quality=quality)
    with Image.open(out) as im:
        return np.array(im)


def test_jpeg_perturbation_is_pils_round_trip():
    rgb = picture(61, 83)
    for q in (100, 75, 30):
        out = Perturbation(jpeg_quality=q).apply(rgb)
        assert out.dtype == np.uint8 and out.shape == rgb.shape
        assert not np.array_equal(out, rgb)
        np.testing.assert_array_equal(out, pil_jpg(rgb, q))
    assert np.abs(pil_jpg(rgb, 30).astype(int) - rgb).mean() > np.abs(pil_jpg(rgb, 90).astype(int) - rgb).mean()


def test_blur_perturbation_is_cnndetections_and_sigma_zero_is_identity():
    rgb = picture(40, 50)
    for sigma in (0.5, 1.0, 3.0):
        np.testing.assert_array_equal(Perturbation(blur_sigma=sigma).apply(rgb), cnndetection_blur(rgb, sigma))
    for identity in (Perturbation(), Perturbation(blur_sigma=0), Perturbation(blur_sigma=None)):
        assert identity.is_identity and identity.to_dict() is None and identity.name == "none"
        out = identity.apply(rgb)
        np.testing.assert_array_equal(out, rgb)
        assert out is not rgb  # always a new array
    assert Perturbation(blur_sigma=0.0, jpeg_quality=90) == Perturbation(jpeg_quality=90)


def test_blur_happens_before_jpeg_and_input_is_untouched():
    rgb = picture(48, 64)
    before = rgb.copy()
    both = Perturbation(jpeg_quality=50, blur_sigma=2.0).apply(rgb)
    np.testing.assert_array_equal(rgb, before)
    np.testing.assert_array_equal(both, pil_jpg(cnndetection_blur(rgb, 2.0), 50))
    assert not np.array_equal(both, cnndetection_blur(pil_jpg(rgb, 50), 2.0))
    np.testing.assert_array_equal(both, Perturbation(jpeg_quality=50, blur_sigma=2.0).apply(rgb))  # deterministic


def test_perturbation_dicts_round_trip_and_validate():
    for p in (Perturbation(jpeg_quality=90), Perturbation(blur_sigma=1.5), Perturbation(jpeg_quality=30, blur_sigma=4)):
        d = json.loads(json.dumps(p.to_dict()))
        assert Perturbation.from_dict(d) == p
    assert Perturbation.from_dict(None) == Perturbation()
    assert Perturbation(jpeg_quality=90, blur_sigma=1.5).name == "blur1.5+jpeg90"
    with pytest.raises(ValueError, match="unknown key"):
        Perturbation.from_dict({"jpeg": 90})
    for bad in ({"jpeg_quality": 101}, {"jpeg_quality": 90.0}, {"jpeg_quality": True}, {"blur_sigma": -1},
                {"blur_sigma": math.nan}):  # fmt: skip
        with pytest.raises(ValueError):
            Perturbation(**bad)
    names = [p.name for p in ROBUSTNESS_PERTURBATIONS]
    assert names == [f"jpeg{q}" for q in range(100, 29, -10)] + ["blur1", "blur2", "blur3", "blur4"]


# -------------------------------------------------------------------------------------------- Augmentation


def test_augmentation_is_deterministic_per_seed_and_index():
    aug = Augmentation(blur_prob=0.5, jpeg_prob=0.5)
    rgb = picture(32, 40)
    for index in range(6):
        a = aug.apply(rgb, seed=7, index=index)
        np.testing.assert_array_equal(a, aug.apply(rgb.copy(), seed=7, index=index))
        np.testing.assert_array_equal(a, aug.draw(seed=7, index=index).apply(rgb))
    draws = [aug.draw(seed=7, index=i) for i in range(200)]
    assert len({d.name for d in draws}) > 50  # indices get different draws
    assert [aug.draw(seed=8, index=i) for i in range(200)] != draws
    # Changing one probability does not reshuffle the other augmentation's draws.
    no_blur = Augmentation(blur_prob=0.0, jpeg_prob=0.5)
    assert [no_blur.draw(seed=7, index=i).jpeg_quality for i in range(200)] == [d.jpeg_quality for d in draws]


def test_augmentation_distribution_matches_cnndetection():
    aug = Augmentation()  # p = 0.1 each, sigma ~ U[0, 3), quality ~ U{30..100}
    draws = [aug.draw(seed=0, index=i) for i in range(4000)]
    blurs = [d.blur_sigma for d in draws if d.blur_sigma is not None]
    quals = [d.jpeg_quality for d in draws if d.jpeg_quality is not None]
    assert 0.08 < len(blurs) / 4000 < 0.12 and 0.08 < len(quals) / 4000 < 0.12
    assert 0 <= min(blurs) and max(blurs) < 3.0
    assert 30 <= min(quals) and max(quals) <= 100
    always = Augmentation(blur_prob=1.0, jpeg_prob=1.0, jpeg_quality=(98, 100), blur_sigma=(1.0, 2.0))
    seen = {always.draw(seed=1, index=i).jpeg_quality for i in range(300)}
    assert seen == {98, 99, 100}  # both ends inclusive
    never = Augmentation(blur_prob=0.0, jpeg_prob=0.0)
    assert all(never.draw(seed=1, index=i).is_identity for i in range(100))


def test_augmentation_dicts_round_trip_and_validate():
    aug = Augmentation(blur_prob=0.2, blur_sigma=(0.5, 2.0), jpeg_prob=0.3, jpeg_quality=(60, 95))
    assert Augmentation.from_dict(json.loads(json.dumps(aug.to_dict()))) == aug
    assert Augmentation.from_dict({}) == Augmentation()
    with pytest.raises(ValueError, match="unknown key"):
        Augmentation.from_dict({"blur_probability": 0.1})
    for bad in ({"blur_prob": 1.5}, {"blur_sigma": (2.0, 1.0)}, {"jpeg_quality": (30, 101)}, {"jpeg_quality": (30,)}):
        with pytest.raises(ValueError):
            Augmentation(**bad)
    with pytest.raises(ValueError, match="seed"):
        aug.draw(seed=-1, index=0)
