"""Feature-extraction speed on this machine: end-to-end images/s of `causalclip.extract` on a folder of JPEGs,
with the CLIP ViT-L/14 architecture and random weights (speed does not depend on the weights), against

- the naive loop: fp32, one image at a time, decode -> preprocess -> forward, no overlap;
- the machine's measured bf16 matmul ceiling (GFLOP/s of large bf16 matmuls of the shapes ViT-L/14 uses);

plus the cosine similarity of bf16 features to fp32 features, and peak memory of extraction at two dataset sizes
(with a tiny model, to show that memory does not grow with the number of images).

    python benchmarks/extract_speed.py              # ~5 minutes on a 2-core CPU
    python benchmarks/extract_speed.py --quick      # smaller counts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from causalclip.core.machine import cpu_model

VIT_L14 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 768,
}


def vit_flops(cfg: dict) -> float:
    """Forward FLOPs (2 per multiply-add) of one 224px image through a CLIP ViT: matmuls and attention."""
    d, i, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    patches = (cfg["image_size"] // cfg["patch_size"]) ** 2
    t = patches + 1
    patch_embed = 2 * patches * (3 * cfg["patch_size"] ** 2) * d
    per_layer = 2 * t * d * 3 * d + 2 * t * d * d + 2 * 2 * t * t * d + 2 * 2 * t * d * i
    return patch_embed + n_layers * per_layer + 2 * d * cfg["projection_dim"]


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {platform.python_version()}"


def matmul_ceiling(dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Best GFLOP/s over the matmul shapes of ViT-L/14 at batch 16 (QKV, MLP up, MLP down) and a large square one."""
    best = 0.0
    m = 16 * 257
    for k, n in ((1024, 3072), (1024, 4096), (4096, 1024), (4096, 4096)):
        a = torch.randn(m, k, dtype=dtype)
        b = torch.randn(k, n, dtype=dtype)
        for _ in range(3):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        best = max(best, reps * 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


CEILING_CHILD = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
start, seconds, m, k, n = float(sys.argv[2]), float(sys.argv[3]), 16 * 257, 1024, 4096
a, b = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, n, dtype=torch.bfloat16)
for _ in range(3):
    a @ b
while time.time() < start:
    time.sleep(0.01)
reps, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    a @ b
    reps += 1
print(reps * 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
"""


def concurrent_ceiling(processes: int, seconds: float = 6.0) -> tuple[float, list[float]]:
    """Sum of the bf16 GFLOP/s of ``processes`` single-purpose processes (cores // processes threads each) doing
    the MLP matmul of ViT-L/14 at the same time: the ceiling for data-parallel extraction."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    start = time.time() + 8.0
    procs = [
        subprocess.Popen([sys.executable, "-c", CEILING_CHILD, str(threads), str(start), str(seconds)], stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]  # fmt: skip
    each = [float(p.communicate()[0].strip()) for p in procs]
    return sum(each), each


def make_jpegs(folder: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """n photo-like 256x256 JPEGs (smooth noise, q=95) in folder/{real,fake}; returns the sample table."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cls = ("real", "fake")[i % 2]
        (folder / cls).mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((256, 256), Image.BICUBIC)
        path = f"{cls}/{i:05d}.jpg"
        img.save(folder / path, quality=95)
        rows.append((path, i % 2, "bench"))
    return pd.DataFrame(rows, columns=["path", "label", "generator"])


def naive_fp32(model_dir: Path, root: Path, paths: list[str]) -> float:
    """images/s of the plain loop: fp32, batch 1, decode and compute in turn."""
    from transformers import CLIPVisionModelWithProjection

    from causalclip.images.transforms import Preprocessing

    model = CLIPVisionModelWithProjection.from_pretrained(model_dir).eval()
    prep = Preprocessing()
    with torch.inference_mode():
        model(pixel_values=torch.zeros(1, 3, 224, 224))  # warm-up
        t0 = time.perf_counter()
        for p in paths:
            x = torch.from_numpy(prep(np.asarray(Image.open(root / p).convert("RGB"))))[None]
            _ = model(pixel_values=x).image_embeds
    return len(paths) / (time.perf_counter() - t0)


def run_extract(
    model_dir: Path,
    root: Path,
    samples: pd.DataFrame,
    out: Path,
    *,
    precision: str,
    compile: bool,
    batch: int,
    workers: int,
    processes: int = 1,
    bare: bool = True,
):
    """(the ExtractResult, the features, images/s of the bare forward pass of the same backbone just after, start-up
    seconds). One process: start-up (loading, and compiling on a first batch) happens before the timed extract
    and is timed here; several: the worker processes load and compile inside extract (its startup_seconds)."""
    from causalclip import open_feature_set
    from causalclip.backbones.registry import load_backbone
    from causalclip.features.extract import extract
    from causalclip.features.job import ExtractConfig

    t0 = time.perf_counter()
    bb = load_backbone(str(model_dir), precision=precision, compile=compile and processes == 1)
    if compile and processes == 1:  # compile outside the timed run (the first call traces the graph)
        from causalclip.images.transforms import Preprocessing

        x = torch.from_numpy(Preprocessing()(np.zeros((224, 224, 3), np.uint8)))[None].repeat(batch, 1, 1, 1)
        with torch.inference_mode():
            bb(x)
    elif compile:
        bb.model = torch.compile(bb.model)  # the workers compile their own copies
    startup = time.perf_counter() - t0
    res = extract(
        samples,
        root=root,
        out=out,
        backbone=bb,
        config=ExtractConfig(
            batch_size=batch, workers=workers, processes=processes, compile=False, storage_dtype="float32"
        ),  # compile=False: this function compiles (or not) itself, as the row says
        progress=False,
    )
    fs = open_feature_set(out)
    rate = float("nan")
    if bare:  # the bare forward pass on random pixels, right after: what the pipeline costs on top, same run
        x = torch.randn(batch, 3, 224, 224)
        steps = max(1, len(samples) // batch)
        with torch.inference_mode():
            bb(x)
            t0 = time.perf_counter()
            for _ in range(steps):
                bb(x)
        rate = steps * batch / (time.perf_counter() - t0)
    return res, fs.take(np.arange(len(fs))), rate, startup + res.startup_seconds


def full_forward_speed(model_dir: Path, *, batch: int, steps: int) -> float:
    """images/s of transformers' own forward (every token through the last layer), bf16, eager: the reference for
    the CLS-only last layer that causalclip's backbone uses (causalclip.backbones.clipfast)."""
    from causalclip.backbones.registry import load_backbone

    clip = load_backbone(str(model_dir), precision="bf16").model.clip
    x = torch.randn(batch, 3, 224, 224, dtype=torch.bfloat16)
    with torch.inference_mode():
        clip(pixel_values=x)
        t0 = time.perf_counter()
        for _ in range(steps):
            clip(pixel_values=x).image_embeds.float()
    return steps * batch / (time.perf_counter() - t0)


MEM_SCRIPT = """
import sys, pandas as pd
from causalclip.backbones.registry import load_backbone
from causalclip.features.extract import extract
from causalclip.features.job import ExtractConfig
s = pd.read_parquet(sys.argv[3])
extract(s, root=sys.argv[1], out=sys.argv[2], backbone=load_backbone(sys.argv[4], precision="fp32"),
        config=ExtractConfig(batch_size=32, shard_size=256, workers=1, processes=1, compile=False), progress=False)
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's size at fork time
print([int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


def peak_rss_mb(tmp: Path, root: Path, samples: pd.DataFrame, model_dir: Path, tag: str) -> float:
    samples.to_parquet(tmp / f"{tag}.parquet")
    out = subprocess.run(
        [sys.executable, "-c", MEM_SCRIPT, str(root), str(tmp / f"mem-{tag}"), str(tmp / f"{tag}.parquet"), str(model_dir)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=192, help="JPEGs for the end-to-end runs")
    ap.add_argument("--naive-images", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1, help="decoding processes of the one-process runs")
    ap.add_argument("--processes", type=int, default=0, help="processes of the data-parallel run (0: auto)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    ap.add_argument("--quick", action="store_true", help="32 images, 4 naive, no compile")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.naive_images, args.no_compile = 32, 4, True
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from causalclip.features.cpu_pool import default_processes

    procs = args.processes or default_processes("cpu")
    print(f"machine: {machine()}")
    flops = vit_flops(VIT_L14)
    print(f"ViT-L/14 forward: {flops / 1e9:.1f} GFLOP per image")
    ceil_bf16, ceil_fp32 = matmul_ceiling(torch.bfloat16), matmul_ceiling(torch.float32)
    ceil_dp, each = concurrent_ceiling(procs)
    ceiling = max(ceil_bf16, ceil_dp)
    print(
        f"matmul ceiling: bf16 {ceil_bf16:.0f} GFLOP/s in one process (= {ceil_bf16 * 1e9 / flops:.2f} images/s), "
        f"fp32 {ceil_fp32:.0f} GFLOP/s\n"
        f"                bf16 {ceil_dp:.0f} GFLOP/s summed over {procs} concurrent processes "
        f"({' + '.join(f'{e:.0f}' for e in each)}; = {ceil_dp * 1e9 / flops:.2f} images/s)"
    )
    figures: dict[str, float] = {
        "gflop_per_image": flops / 1e9,
        "ceiling_bf16_gflops": ceil_bf16,
        "ceiling_bf16_concurrent_gflops": ceil_dp,
        "ceiling_fp32_gflops": ceil_fp32,
        "processes": procs,
    }

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        torch.manual_seed(0)
        model_dir = tmp / "vit-l14-random"
        CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_L14)).save_pretrained(model_dir)
        root = tmp / "jpegs"
        samples = make_jpegs(root, args.images)
        n_img = len(samples)
        rows = []  # (name, images/s once started, start-up seconds or None)

        naive = naive_fp32(model_dir, root, list(samples["path"][: args.naive_images]))
        rows.append(("naive fp32 loop (batch 1, no overlap)", naive, None))
        b = args.batch_size
        common = {"batch": b, "workers": args.workers}
        r32, f32, _, _ = run_extract(
            model_dir, root, samples.iloc[: args.naive_images * 2], tmp / "e-fp32", precision="fp32", compile=False,
            bare=False, **common,
        )  # fmt: skip
        rows.append((f"extract fp32, 1 process (batch {b})", r32.images_per_s, None))
        r16, fb16, bare, _ = run_extract(
            model_dir, root, samples, tmp / "e-bf16", precision="bf16", compile=False, **common
        )
        rows.append((f"extract bf16, 1 process (batch {b})", r16.images_per_s, None))
        rows.append(("  bare bf16 forward of the same backbone, just after", bare, None))
        full = full_forward_speed(model_dir, batch=b, steps=max(1, n_img // b))
        rows.append(("  bare bf16 forward, transformers' full last layer", full, None))
        rdp, fdp, _, st = run_extract(
            model_dir, root, samples, tmp / "e-bf16-dp", precision="bf16", compile=False, processes=procs,
            bare=False, **common,
        )  # fmt: skip
        rows.append((f"extract bf16, {procs} processes (batch {b})", rdp.steady_images_per_s, st))
        same = bool(np.allclose(fdp, fb16, rtol=1e-2, atol=1e-2))
        if not args.no_compile:
            rc, _, barec, stc = run_extract(
                model_dir, root, samples, tmp / "e-bf16c", precision="bf16", compile=True, **common
            )
            rows.append((f"extract bf16 + torch.compile, 1 process (batch {b})", rc.images_per_s, stc))
            rows.append(("  bare compiled bf16 forward, just after", barec, None))
            rcd, _, _, stcd = run_extract(
                model_dir, root, samples, tmp / "e-bf16c-dp", precision="bf16", compile=True, processes=procs,
                bare=False, **common,
            )  # fmt: skip
            rows.append((f"extract bf16 + torch.compile, {procs} processes (batch {b})", rcd.steady_images_per_s, stcd))
        n = len(f32)
        cos = (f32 * fb16[:n]).sum(1) / (np.linalg.norm(f32, axis=1) * np.linalg.norm(fb16[:n], axis=1))
        print(
            f"\nimages/s: once started (one process: loading and compiling done before the timed run; several: "
            f"after every worker process is ready).\n{n_img}-image job: wall time of the whole job, start-up "
            f"included, as images/s.\n% ceiling: of the higher of the two bf16 ceilings ({ceiling:.0f} GFLOP/s)."
        )
        print(
            f"\n{'run':<56} {'images/s':>9} {'GFLOP/s':>8} {'% ceiling':>10} {'x naive':>8} {'start-up':>9} "
            f"{f'{n_img}-image job':>15}"
        )
        for name, v, start in rows:
            job = "" if start is None else f"{n_img / (start + n_img / v):.2f} img/s"
            st = "" if start is None else f"{start:.0f} s"
            print(
                f"{name:<56} {v:>9.2f} {v * flops / 1e9:>8.0f} {100 * v * flops / 1e9 / ceiling:>9.0f}% "
                f"{v / naive:>8.2f} {st:>9} {job:>15}"
            )
            figures[name] = v
            if start is not None:
                figures[name + " (start-up s)"] = start
        print(
            f"\nbf16 vs fp32 features (random weights, {n} images): cosine min {cos.min():.5f}, mean {cos.mean():.5f}"
        )
        print(f"{procs}-process bf16 features equal the 1-process ones (allclose 1e-2): {same}")
        figures["cosine_bf16_fp32_min"] = float(cos.min())

        # memory does not grow with the number of images (tiny model, many small images)
        tiny = tmp / "tiny"
        CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=224, patch_size=32, projection_dim=16)).save_pretrained(tiny)  # fmt: skip
        many = pd.concat([samples] * 20, ignore_index=True).assign(
            generator=lambda d: [f"g{i // len(samples)}" for i in range(len(d))]
        )
        small = many.iloc[: len(many) // 4]
        rss_small = peak_rss_mb(tmp, root, small, tiny, "small")
        rss_big = peak_rss_mb(tmp, root, many, tiny, "big")
        print(
            f"peak RSS of extraction (tiny model): {len(small)} images {rss_small:.0f} MB, {len(many)} images {rss_big:.0f} MB"
        )
        figures.update(rss_mb_small=rss_small, rss_mb_big=rss_big)
    figures["self_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
