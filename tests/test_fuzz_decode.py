"""The image decoder on mutated files: every input ends in an RGB array within the pixel limit or one clean
ImageDecodeError naming the file, never another exception, a crash, a hang or an allocation beyond the limit.

Seeds are small JPEG, PNG, WebP, GIF, TIFF and BMP files made with Pillow when the test runs (several modes and
codecs each; benchmarks/fuzz_decode.py makes them); hypothesis mutates them (bit flips, overwritten and inserted bytes, huge header values, cuts, duplicated
spans). The run is bounded (a few hundred examples); benchmarks/fuzz_decode.py runs the same idea for as long as
asked, in memory-limited child processes. Inputs that once failed are regression tests below with their bytes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from causalclip.images.decode import ImageDecodeError, load_rgb

MAX_PIXELS = 1 << 20  # 1 megapixel: small enough that any image beyond it must be refused from its header
ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    """benchmarks/fuzz_decode.py, which owns the seed files (the longer run mutates the same ones)."""
    spec = importlib.util.spec_from_file_location("fuzz_decode_script", ROOT / "benchmarks" / "fuzz_decode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SEEDS = _load_script().make_seeds()


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "byte", "huge", "insert", "delete", "cut", "dup"]))
        if kind == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and pos < len(data):
            data[pos] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif kind == "huge":  # a size or count field made enormous (or zero)
            data[pos : pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\0\0\0\0",
                                                        b"\x00\x01\x00\x00", b"\xff\xff"]))  # fmt: skip
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 32))]
        elif kind == "cut":
            del data[max(pos, 1) :]
        elif kind == "dup" and len(data) < 1 << 16:
            span = bytes(data[pos : pos + draw(st.integers(1, 64))])
            data[pos:pos] = span * draw(st.integers(1, 8))
    return name, bytes(data)


def check_one(name: str, data: bytes) -> None:
    """The contract for one input."""
    try:
        rgb = load_rgb(name, data=data, max_pixels=MAX_PIXELS)
    except ImageDecodeError as exc:
        assert exc.path == name and exc.reason and str(exc).startswith(f"{name}: ")
        assert "out of memory" not in exc.reason, "an allocation beyond what the pixel limit allows"
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert 0 < rgb.shape[0] * rgb.shape[1] <= MAX_PIXELS and rgb.flags.c_contiguous


def test_every_seed_decodes():
    for name, data in SEEDS.items():
        rgb = load_rgb(name, data=data)
        assert rgb.shape in ((9, 12, 3), (12, 9, 3)), name  # exif.jpg stands upright: 12 x 9


@settings(max_examples=400, deadline=5000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(mutated())
def test_mutated_files_decode_or_fail_cleanly(case):
    check_one(*case)


def test_header_sizes_beyond_the_limit_are_refused_before_decoding():
    """The PNG and BMP size fields made huge: refused from the header as bombs (no pixel buffer allocated)."""
    png = bytearray(SEEDS["rgba.png"])
    png[16:24] = (40_000).to_bytes(4, "big") * 2  # IHDR width, height, and the chunk's CRC to match
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    bmp = bytearray(SEEDS["rgb.bmp"])
    bmp[18:26] = (40_000).to_bytes(4, "little") * 2
    for name, data in (("big.png", bytes(png)), ("big.bmp", bytes(bmp))):
        with pytest.raises(ImageDecodeError, match="decompression bomb: 40000 x 40000"):
            load_rgb(name, data=data, max_pixels=MAX_PIXELS)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and fork: Linux")
def test_decoder_fuzz_in_a_memory_limited_child():
    """A short run of benchmarks/fuzz_decode.py: each input decoded in a child process limited to 1 GiB of address
    space and 10 s, so a crash, a hang or a runaway allocation is caught as such (not just as an exception)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "fuzz_decode.py"), "--examples", "300", "--seed", "1"]
    cmd += ["--memory-mb", "1024", "--timeout", "10"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "300 inputs" in run.stdout and "0 findings" in run.stdout, run.stdout
