"""Load test of `causalclip serve` on loopback: latency percentiles, throughput, 5xx count and server memory.

Starts `causalclip serve` in a subprocess on 127.0.0.1 (a free port), waits for /healthz, sends a few warm-up
requests, then N requests (one image each) from C concurrent clients (httpx, asyncio), and stops the server. The
load is bounded in count (--requests) and time (--time-limit): it never runs away, and it only talks to loopback.

Without --detector it builds one in a temporary folder: a tiny CLIP saved like a real one (measures the server's
own overhead), or any backbone spec with --backbone (e.g. ``clip-random:arch=vit-b-32`` for a realistic
ViT-B/32 forward pass with random weights, no download), with a probe head trained for one epoch on random
features of the right dimension. Scores are meaningless; speed and memory are not.

    python benchmarks/serve_load.py                                   # 500 requests, 20 clients, tiny CLIP
    python benchmarks/serve_load.py --backbone clip-random:arch=vit-b-32
    python benchmarks/serve_load.py --detector detectors/cc --requests 200 --out load.json

Exit status 1 if any request got a 5xx or failed to connect.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from causalclip.core.machine import cpu_model


def start_server(detector: Path, port: int, serve_args: list[str]) -> subprocess.Popen:
    """`causalclip serve DETECTOR` on 127.0.0.1:``port`` in a subprocess (offline), warnings only."""
    cmd = [sys.executable, "-m", "causalclip", "serve", str(detector), "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([*cmd, "--log-level", "warning", *serve_args], env=env)


def wait_ready(server: subprocess.Popen, base: str, limit: float = 180) -> float:
    """Seconds until ``server`` answers /healthz; RuntimeError if it exits first or takes over ``limit`` s."""
    import httpx

    t0 = time.monotonic()
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode} before answering")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        if time.monotonic() - t0 > limit:
            raise RuntimeError(f"the server did not answer /healthz within {limit:g} s")
        time.sleep(0.2)


def stop_server(server: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 60) -> int:
    """Send ``sig``, wait up to ``grace`` s (then kill); the exit status."""
    server.send_signal(sig)
    try:
        return server.wait(grace)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


def _rss_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, from /proc (Linux)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def build_detector(folder: Path, backbone: str) -> Path:
    """A detector for ``backbone`` ("tiny" or any load_backbone spec) with a one-epoch probe head."""
    import pandas as pd

    from causalclip import resolve_run_config, train, write_feature_set
    from causalclip.backbones.registry import load_backbone
    from causalclip.detector.folder import export_detector_from_feature_set

    if backbone == "tiny":
        import torch
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        torch.manual_seed(0)
        config = CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=224,
            patch_size=32, projection_dim=16,
        )  # fmt: skip
        CLIPVisionModelWithProjection(config).save_pretrained(folder / "clip")
        backbone = str(folder / "clip")
    bb = load_backbone(backbone, precision="fp32")
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 2
    x = rng.normal(size=(64, bb.dim)).astype(np.float32) + labels[:, None] * 0.5
    df = pd.DataFrame({"path": [f"{i}.png" for i in range(64)], "label": labels, "generator": "g"})
    meta = {"backbone": bb.describe(), "preprocessing": bb.preprocessing.to_dict(), "precision": "float32"}
    feats = write_feature_set(folder / "feats", x, df, meta=meta)
    rc = resolve_run_config("univfd", overrides={"epochs": 1, "batch_size": 32})
    train(train_set=feats, val_set=feats, out=folder / "run", run_config=rc, progress=False)
    return export_detector_from_feature_set(folder / "run", feats, folder / "detector")


def make_images(n: int, size: tuple[int, int]) -> list[bytes]:
    """JPEGs (quality 90) of smooth random content, like photos in size on disk."""
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run_load(base: str, images: list[bytes], n: int, concurrency: int, time_limit: float) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    failures: list[str] = []
    next_index = 0
    deadline = time.monotonic() + time_limit
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < n and time.monotonic() < deadline:
            i = next_index
            next_index += 1
            files = [("files", (f"img{i}.jpg", images[i % len(images)], "image/jpeg"))]
            t0 = time.perf_counter()
            try:
                r = await client.post(base + "/v1/detect", files=files)
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - t0)
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1

    async with httpx.AsyncClient(limits=limits, timeout=max(30.0, time_limit)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    sent = sum(statuses.values()) + len(failures)
    return {
        "requests_sent": sent,
        "requests_planned": n,
        "stopped_by_time_limit": sent < n,
        "status_counts": statuses,
        "n_5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
        "connection_failures": len(failures),
        "failure_examples": failures[:3],
        "wall_s": wall,
        "throughput_rps": sum(statuses.values()) / wall if wall > 0 else float("nan"),
        "latency_ms": {
            "p50": float(np.percentile(lat, 50)) if len(lat) else None,
            "p95": float(np.percentile(lat, 95)) if len(lat) else None,
            "p99": float(np.percentile(lat, 99)) if len(lat) else None,
            "max": float(lat.max()) if len(lat) else None,
            "mean": float(lat.mean()) if len(lat) else None,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", help="detector folder (default: build one for --backbone in a temp folder)")
    p.add_argument("--backbone", default="tiny", help="tiny (a tiny CLIP) or any backbone spec, without --detector")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--time-limit", type=float, default=300, help="stop sending after this many seconds")
    p.add_argument("--image-size", default="512x384", help="WxH of the JPEGs sent")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1, help="repeat the load; RSS after each round shows any growth")
    p.add_argument("--serve-args", default="", help="extra arguments for `causalclip serve`, e.g. '--crops grid'")
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.time_limit <= 0 or not 1 <= args.rounds <= 10:
        p.error("--requests, --concurrency and --time-limit must be positive, --rounds 1..10")
    w, h = (int(v) for v in args.image_size.lower().split("x"))

    import httpx

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        detector = Path(args.detector) if args.detector else build_detector(Path(tmp), args.backbone)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        t_start = time.perf_counter()
        server = start_server(detector, port, args.serve_args.split())
        try:
            try:
                wait_ready(server, base)
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                return 2
            startup_s = time.perf_counter() - t_start
            rss_started = _rss_mb(server.pid)
            model = httpx.get(base + "/v1/model", timeout=10).json()
            images = make_images(8, (w, h))
            warm = asyncio.run(run_load(base, images, args.warmup, min(args.concurrency, args.warmup), 60))
            rss_before = _rss_mb(server.pid)
            rounds, rss_rounds = [], []
            for _ in range(args.rounds):
                rounds.append(asyncio.run(run_load(base, images, args.requests, args.concurrency, args.time_limit)))
                rss_rounds.append(_rss_mb(server.pid).get("VmRSS"))
            result = rounds[0]
            rss_after = _rss_mb(server.pid)
        finally:
            stop_server(server, signal.SIGINT, 30)
    report = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "detector": {
            "backbone": model.get("backbone"),
            "feature_dim": model.get("feature_dim"),
            "crops": model.get("crops"),
            "device": model.get("device"),
            "precision": model.get("precision"),
        },  # fmt: skip
        "load": {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "image": f"{w}x{h} JPEG q90",
            "bytes_per_image": int(np.mean([len(b) for b in images])),
        },  # fmt: skip
        "startup_s": startup_s,
        "warmup_status_counts": warm["status_counts"],
        "rss_mb": {
            "after_startup": rss_started.get("VmRSS"),
            "before_load": rss_before.get("VmRSS"),
            "after_load": rss_after.get("VmRSS"),
            "after_each_round": rss_rounds,
            "peak": rss_after.get("VmHWM"),
        },
        **result,
        "later_rounds": [
            {k: r[k] for k in ("throughput_rps", "latency_ms", "status_counts", "n_5xx", "connection_failures")}
            for r in rounds[1:]
        ],
    }
    lat = report["latency_ms"]
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores")
    print(f"detector: {report['detector']['backbone']} ({report['detector']['feature_dim']}-d), crops {model['crops']}")
    print(
        f"{report['requests_sent']} requests ({args.concurrency} concurrent clients, {w}x{h} JPEGs) in "
        f"{report['wall_s']:.1f} s: {report['throughput_rps']:.1f} requests/s"
    )
    if lat["p50"] is not None:
        print(f"latency ms: p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}  max {lat['max']:.1f}")
    print(f"status codes: {report['status_counts']}; 5xx: {report['n_5xx']}; connection failures: "
          f"{report['connection_failures']}")  # fmt: skip
    r = report["rss_mb"]
    print(
        f"server RSS MB: after startup {r['after_startup']:.0f}, before load {r['before_load']:.0f}, after load "
        f"{r['after_load']:.0f} (peak {r['peak']:.0f}); startup {startup_s:.1f} s"
    )
    for i, later in enumerate(report["later_rounds"], start=2):
        lat_i = later["latency_ms"]
        print(
            f"round {i}: {later['throughput_rps']:.1f} requests/s, p50 {lat_i['p50']:.1f} p95 {lat_i['p95']:.1f} ms, "
            f"5xx {later['n_5xx']}, RSS after {rss_rounds[i - 1]:.0f} MB"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    bad = report["n_5xx"] + report["connection_failures"]
    bad += sum(r["n_5xx"] + r["connection_failures"] for r in report["later_rounds"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
