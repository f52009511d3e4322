"""Fuzz the image decoder (causalclip.images.decode.load_rgb) on mutated JPEG, PNG, WebP, GIF, TIFF and BMP files.

The contract: every input ends in an RGB array within the pixel limit or one clean ImageDecodeError; never another
exception, a crash, a hang or an allocation beyond what the limit allows. Each input is decoded in a child process
(fork) limited to --memory-mb of address space and --timeout seconds, so a segfault, a hang or a runaway
allocation shows as what it is. A finding is written to --out (the input's bytes and what happened) and the run
goes on; exit status 1 if there was any.

Seeds are small files made here with Pillow (several modes and codecs per format); inputs are the seeds with 1-6
random mutations (bit flips, special bytes, huge or zero 32-bit fields, inserted random bytes, deletions, cuts,
duplicated spans), reproducible from --seed.

    python benchmarks/fuzz_decode.py --examples 20000 --seed 0            # about 15 minutes on 2 cores
    python benchmarks/fuzz_decode.py --seconds 3600 --out fuzz-findings   # for an hour
    python benchmarks/fuzz_decode.py --engine atheris --seconds 600       # coverage-guided, if atheris is installed

With --engine atheris (pip install atheris) libFuzzer mutates the seeds with coverage feedback from Pillow's
Python plugins, with the same memory and time limits (-rss_limit_mb, -timeout); crash files land in --out.
"""

from __future__ import annotations

import argparse
import collections
import io
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MAX_PIXELS = 1 << 20


def _save(im, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def make_seeds() -> dict[str, bytes]:
    """Small valid files of every default format family, in the modes and codecs real data sets hold."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (9, 12, 4), dtype=np.uint8), "RGBA")
    grey16 = Image.fromarray(rng.integers(0, 65536, (9, 12), dtype=np.uint16))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    flipped = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return {
        "rgb.jpg": _save(rgb, "JPEG", quality=80),
        "exif.jpg": _save(rgb, "JPEG", quality=80, exif=exif),
        "grey.jpg": _save(rgb.convert("L"), "JPEG"),
        "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG"),
        "progressive.jpg": _save(rgb, "JPEG", progressive=True),
        "rgba.png": _save(rgba, "PNG"),
        "pal.png": _save(pal, "PNG", transparency=0),
        "grey16.png": _save(grey16, "PNG"),
        "lossy.webp": _save(rgb, "WEBP", quality=70),
        "lossless.webp": _save(rgba, "WEBP", lossless=True),
        "anim.gif": _save(rgb.convert("P"), "GIF", save_all=True, append_images=[flipped.convert("P")]),
        "raw.tif": _save(rgb, "TIFF"),
        "deflate.tif": _save(rgba, "TIFF", compression="tiff_adobe_deflate"),
        "lzw.tif": _save(rgb, "TIFF", compression="tiff_lzw"),
        "rgb.bmp": _save(rgb, "BMP"),
        "pal.bmp": _save(pal, "BMP"),
    }


_SPECIAL = [0x00, 0x01, 0x7F, 0x80, 0xFF]
_HUGE = [b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\0\0\0\0", b"\x00\x01\x00\x00", b"\xff\xff"]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """1-6 random mutations of ``data``."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 7))):
        pos = int(rng.integers(0, len(out) + 1))
        kind = int(rng.integers(0, 7))
        if kind == 0 and pos < len(out):
            out[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1 and pos < len(out):
            out[pos] = _SPECIAL[int(rng.integers(0, len(_SPECIAL)))]
        elif kind == 2:
            out[pos : pos + 4] = _HUGE[int(rng.integers(0, len(_HUGE)))]
        elif kind == 3:
            out[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
        elif kind == 4:
            del out[pos : pos + int(rng.integers(1, 33))]
        elif kind == 5:
            del out[max(pos, 1) :]
        elif kind == 6 and len(out) < 1 << 16:
            span = bytes(out[pos : pos + int(rng.integers(1, 65))])
            out[pos:pos] = span * int(rng.integers(1, 9))
    return bytes(out)


def inputs(seeds: dict[str, bytes], seed: int, start: int, stop: int):
    """Inputs number start..stop-1 of the run ``seed`` (each from its own RNG, so any one can be regenerated)."""
    names = sorted(seeds)
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        name = names[int(rng.integers(0, len(names)))]
        yield i, name, mutate(seeds[name], rng)


def check(name: str, data: bytes) -> str:
    """'ok', or 'error: <reason>' for a clean ImageDecodeError; raises AssertionError for a broken contract."""
    from causalclip.images.decode import ImageDecodeError, load_rgb

    try:
        rgb = load_rgb(name, data=data, max_pixels=MAX_PIXELS)
    except ImageDecodeError as exc:
        if "out of memory" in exc.reason:
            raise AssertionError(f"allocation beyond the limit: {exc.reason}") from exc
        return "error: " + exc.reason.split(" (")[0].split(":")[0]
    ok = rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and 0 < rgb.shape[0] * rgb.shape[1] <= MAX_PIXELS
    if not ok:
        raise AssertionError(f"bad output: {rgb.dtype} {rgb.shape}")
    return "ok"


def _child(seeds, seed, start, stop, memory_mb, timeout, current, results) -> None:
    """Decode inputs start..stop-1; write each input to ``current`` first and each outcome to ``results``."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # a hang ends the child with SIGALRM
    with open(results, "a", encoding="utf-8") as log:
        for i, name, data in inputs(seeds, seed, start, stop):
            Path(current).write_bytes(f"{i}\n{name}\n".encode() + data)
            signal.alarm(timeout)
            try:
                outcome = check(name, data)
            except AssertionError as exc:
                outcome = f"FINDING {exc}"
            except Exception as exc:  # anything else escaping load_rgb breaks the contract  # noqa: BLE001
                outcome = f"FINDING {type(exc).__name__}: {exc}"
            signal.alarm(0)
            log.write(f"{i}\t{outcome}\n")
            log.flush()


def run_random(args) -> int:
    seeds = make_seeds()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("fork")
    counts: collections.Counter[str] = collections.Counter()
    findings = []
    t_end = time.monotonic() + args.seconds if args.seconds else None
    with tempfile.TemporaryDirectory(prefix="fuzz-decode-") as tmp:
        current, results = os.path.join(tmp, "current"), os.path.join(tmp, "results")
        done = 0
        while done < args.examples and (t_end is None or time.monotonic() < t_end):
            stop = min(args.examples, done + args.chunk)
            Path(results).write_text("")
            proc = ctx.Process(target=_child, args=(seeds, args.seed, done, stop, args.memory_mb, args.timeout,
                                                    current, results))  # fmt: skip
            proc.start()
            proc.join()
            lines = [ln.split("\t", 1) for ln in Path(results).read_text().splitlines() if ln]
            for i, outcome in lines:
                if outcome.startswith("FINDING"):
                    findings.append((int(i), outcome))
                    counts["FINDING"] += 1
                else:
                    counts[outcome] += 1
            done += len(lines)
            if proc.exitcode != 0:  # crashed, hung or killed on an input: the one in `current`
                head, name, data = Path(current).read_bytes().split(b"\n", 2)
                what = f"child exit {proc.exitcode}" + (" (SIGALRM: hang)" if proc.exitcode == -signal.SIGALRM else "")
                findings.append((int(head), what))
                counts["FINDING"] += 1
                done += 1
        for i, what in findings:
            _, name, data = next(inputs(seeds, args.seed, i, i + 1))
            (out / f"finding-{args.seed}-{i}-{name}").write_bytes(data)
            (out / f"finding-{args.seed}-{i}-{name}.txt").write_text(what + "\n")
    print(f"{done} inputs (seed {args.seed}), {len(findings)} findings; outcomes:")
    for outcome, n in counts.most_common(15):
        print(f"  {n:6d}  {outcome}")
    for i, what in findings[:20]:
        print(f"FINDING input {i}: {what}")
    return 1 if findings else 0


def run_atheris(args) -> int:
    import atheris  # noqa: PLC0415  (optional)

    with atheris.instrument_imports():
        import PIL.Image  # noqa: F401

        from causalclip.images import decode  # noqa: F401  (instrumented: coverage of our code and Pillow's plugins)

    corpus = Path(args.out) / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for name, data in make_seeds().items():
        (corpus / name).write_bytes(data)

    def one(data: bytes) -> None:
        check("input", data)

    flags = [sys.argv[0], str(corpus), f"-rss_limit_mb={args.memory_mb}", f"-timeout={args.timeout}"]
    flags += [f"-artifact_prefix={Path(args.out)}/", f"-seed={args.seed + 1}"]
    flags += [f"-max_total_time={int(args.seconds)}"] if args.seconds else [f"-runs={args.examples}"]
    atheris.Setup(flags, one)
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=2000, help="inputs to try (default %(default)s)")
    p.add_argument("--seconds", type=float, help="stop after this long instead (or whichever comes first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-mb", type=int, default=1024, help="address-space limit of the decoding child")
    p.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    p.add_argument("--chunk", type=int, default=500, help="inputs per child process")
    p.add_argument("--engine", choices=["random", "atheris"], default="random")
    p.add_argument("--out", default="fuzz-decode-findings", help="folder for findings (and atheris' corpus)")
    args = p.parse_args(argv)
    if args.examples < 1 or args.timeout < 1 or args.memory_mb < 256:
        p.error("--examples and --timeout must be positive, --memory-mb at least 256")
    if args.seconds is not None and args.examples == p.get_default("examples"):
        args.examples = 1 << 62  # time-bounded
    return run_atheris(args) if args.engine == "atheris" else run_random(args)


if __name__ == "__main__":
    sys.exit(main())
