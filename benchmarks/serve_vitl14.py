"""Serving the paper's backbone: `causalclip serve` with CLIP ViT-L/14 (architecture with random weights, built
locally with transformers' CLIPVisionConfig; no download) in bf16 on CPU.

For each configuration a server process is started on 127.0.0.1, warmed up, then measured with
  1. one client sending one 512 x 384 JPEG at a time (--single requests): latency p50/p95 (goal: p95 < 0.5 s);
  2. 20 clients at once (--multi requests): throughput and latency.
Configurations (the extraction speed levers that apply to one server process; docs/reports/extraction-speed.md):
  - bf16, torch threads = cores - 1 (what `causalclip serve --precision bf16` does by default);
  - bf16, torch threads = all cores (--threads 2 on the 2-core VM);
  - bf16 + `causalclip serve --compile` (torch.compile of the backbone and a pass of every batch size 1..8 before
    it listens, so that no request waits for a compilation), threads as the faster above.
The CLS-only last layer (backbones/clipfast.py) is on in all of them (the CLIP backbone uses it by default). One
process per core, the other extraction lever, does not apply: one server holds one engine.

To say what bounds the latency, the bare forward pass of one preprocessed image is timed in this process too
(bf16, 1 and 2 threads, eager and compiled), outside any server.

    python benchmarks/serve_vitl14.py --out vitl14.json          # ~10 minutes on 2 cores
    python benchmarks/serve_vitl14.py --configs bf16,compile --single 20 --multi 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from causalclip.core.machine import cpu_model
from serve_load import _rss_mb, build_detector, free_port, make_images, run_load, start_server, stop_server, wait_ready

CONFIGS = {
    "bf16": {"threads": None, "compile": False},
    "bf16-threads-all": {"threads": os.cpu_count() or 2, "compile": False},
    "compile": {"threads": "best", "compile": True},
}


def bare_forward(detector: Path, threads: int, compiled: bool, reps: int) -> dict[str, float]:
    """Seconds per forward pass of one preprocessed 224 x 224 image (median and min of ``reps``)."""
    import torch

    from causalclip.detect.engine import DetectionEngine

    torch.set_num_threads(threads)
    engine = DetectionEngine(detector, precision="bf16")
    if compiled:
        engine.backbone.model = torch.compile(engine.backbone.model)
    x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    for _ in range(3 if compiled else 1):
        engine.probabilities(x)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        engine.probabilities(x)
        times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times))}


def serve_args(threads: int | None, compiled: bool) -> list[str]:
    """`causalclip serve` options of one configuration: bf16, its threads, --compile."""
    return [
        "--precision",
        "bf16",
        *(["--threads", str(threads)] if threads else []),
        *(["--compile"] if compiled else []),
    ]


def measure(detector: Path, name: str, threads, compiled: bool, images, args) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(detector, port, serve_args(threads, compiled))
    try:
        startup = wait_ready(server, base, limit=300)
        t0 = time.perf_counter()
        warm = asyncio.run(run_load(base, images, args.warmup, 1, 600))
        warm_s = time.perf_counter() - t0
        single = asyncio.run(run_load(base, images, args.single, 1, args.time_limit))
        multi = asyncio.run(run_load(base, images, args.multi, 20, args.time_limit))
        rss = _rss_mb(server.pid)
    finally:
        stop_server(server)
    keep = ("requests_sent", "status_counts", "n_5xx", "connection_failures", "wall_s", "throughput_rps", "latency_ms")
    return {
        "config": name,
        "threads": threads or max(1, (os.cpu_count() or 2) - 1),
        "compile": compiled,
        "startup_s": startup,
        "warmup": {"requests": args.warmup, "seconds": warm_s, "status_counts": warm["status_counts"]},
        "one_client": {k: single[k] for k in keep},
        "twenty_clients": {k: multi[k] for k in keep},
        "rss_mb": rss,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    p.add_argument("--single", type=int, default=30, help="requests of the one-client measurement")
    p.add_argument("--multi", type=int, default=60, help="requests of the 20-client measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--bare-reps", type=int, default=7, help="timed bare forward passes per setting (0: skip)")
    p.add_argument("--time-limit", type=float, default=600, help="per measurement, seconds")
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args(argv)
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; known: {list(CONFIGS)}")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-vitl14-") as tmp:
        t0 = time.perf_counter()
        detector = build_detector(Path(tmp), "clip-random:arch=vit-l-14")
        print(f"detector built in {time.perf_counter() - t0:.0f} s", flush=True)
        bare = {}
        if args.bare_reps:
            for threads in sorted({1, os.cpu_count() or 2}):
                for compiled in (False, True):
                    key = f"threads {threads}, {'compiled' if compiled else 'eager'}"
                    bare[key] = bare_forward(detector, threads, compiled, args.bare_reps)
                    print(f"bare bf16 forward, 1 image, {key}: {bare[key]['median_s'] * 1000:.0f} ms", flush=True)
        images = make_images(8, (512, 384))
        results = []
        best_threads = None
        for name in names:
            cfg = CONFIGS[name]
            threads = cfg["threads"]
            if threads == "best":
                threads = best_threads
            results.append(measure(detector, name, threads, cfg["compile"], images, args))
            r = results[-1]
            one, twenty = r["one_client"], r["twenty_clients"]
            print(
                f"{name} (threads {r['threads']}): 1 client p50 {one['latency_ms']['p50']:.0f} ms, p95 "
                f"{one['latency_ms']['p95']:.0f} ms; 20 clients {twenty['throughput_rps']:.2f} requests/s, p50 "
                f"{twenty['latency_ms']['p50']:.0f} ms, p95 {twenty['latency_ms']['p95']:.0f} ms; 5xx "
                f"{one['n_5xx'] + twenty['n_5xx']}; RSS {r['rss_mb'].get('VmRSS', 0):.0f} MB; startup "
                f"{r['startup_s']:.0f} s, warm-up {r['warmup']['seconds']:.0f} s",
                flush=True,
            )
            if not cfg["compile"]:
                fastest = min(
                    (x for x in results if not x["compile"]), key=lambda x: x["one_client"]["latency_ms"]["p95"]
                )
                best_threads = fastest["threads"]
    report = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "image": "512x384 JPEG q90",
        "bare_forward_one_image": bare,
        "servers": results,
    }
    print(f"load average before {load_before}, after {report['load_average_after']}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 1 if any(r["one_client"]["n_5xx"] + r["twenty_clients"]["n_5xx"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
