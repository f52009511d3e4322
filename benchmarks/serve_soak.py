"""Soak and overload test of `causalclip serve` on loopback: a long steady load, then bursts beyond capacity.

1. **Capacity**: a closed loop (--concurrency clients, each sending its next request when the last is answered)
   measures how many requests per second the server answers.
2. **Soak**: --soak-requests (10,000) requests at a steady open-loop rate of --soak-load x capacity (one every
   1/rate s, whatever the server does), while the server's RSS is read every second.
3. **Overload**: --bursts bursts of --burst-seconds each at --overload x capacity (5x), --pause seconds apart.

Reported per phase: latency p50/p95/p99 (all answers, and 200s alone, as the client measured them and as the
server did in its Server-Timing header, from the request's estimated arrival), counts by status, connection failures, the
offered and achieved rates; RSS over time. The targets (exit status 1 if one is missed): no 5xx other than 503, some
503 under overload, RSS growth under 10% over the soak (median of its last tenth against its first tenth), and
p95 latency in every burst no worse than the server's deadline plus --slack seconds (default 0), and bursts that
reached 95% of their target rate (else the load generator, on the same cores, was the bottleneck: make each request
cost more, e.g. larger images with more crops, so that 5 x capacity is a rate it can offer).

Without --detector it builds a detector in a temporary folder like benchmarks/serve_load.py does: a tiny CLIP saved
like a real one (random weights, no download; the server's own overhead dominates), or --backbone SPEC. Everything
stays on 127.0.0.1; every loop is bounded in count and time.

    python benchmarks/serve_soak.py --out soak.json                    # ~10 minutes on 2 cores
    python benchmarks/serve_soak.py --soak-requests 2000 --bursts 2   # shorter
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from causalclip.core.machine import cpu_model
from serve_load import _rss_mb, build_detector, free_port, make_images, start_server, stop_server, wait_ready

# The server's own time of an answer, from its estimated arrival (causalclip serve's Server-Timing header).
_SERVER_TIMING = re.compile(rb"(?im)^server-timing:\s*total;dur=([0-9.]+)")


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values) * 1000
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}  # fmt: skip


class Recorder:
    """Outcomes of one phase."""

    def __init__(self, name: str) -> None:
        self.name, self.latencies, self.ok_latencies = name, [], []
        self.server_ok_latencies: list[float] = []  # the server's own time of each 200 (Server-Timing)
        self.statuses: dict[str, int] = {}
        self.failures: list[str] = []
        self.t0 = self.t1 = time.monotonic()
        self.sent = 0

    def add(self, status: int, seconds: float, server_seconds: float | None = None) -> None:
        self.latencies.append(seconds)
        if status == 200:
            self.ok_latencies.append(seconds)
            if server_seconds is not None:
                self.server_ok_latencies.append(server_seconds)
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1

    def summary(self) -> dict:
        wall = max(self.t1 - self.t0, 1e-9)
        n5 = sum(v for k, v in self.statuses.items() if k.startswith("5"))
        return {
            "phase": self.name,
            "requests_sent": self.sent,
            "wall_s": wall,
            "offered_rps": self.sent / wall,
            "answered_200_rps": self.statuses.get("200", 0) / wall,
            "status_counts": dict(sorted(self.statuses.items())),
            "n_503": self.statuses.get("503", 0),
            "n_5xx_other_than_503": n5 - self.statuses.get("503", 0),
            "connection_failures": len(self.failures),
            "failure_examples": self.failures[:3],
            "latency_ms_all": _percentiles(self.latencies),
            "latency_ms_200": _percentiles(self.ok_latencies),
            "server_timing_ms_200": _percentiles(self.server_ok_latencies),
        }


def raw_requests(port: int, images: list[bytes]) -> list[bytes]:
    """Each image as the bytes of a whole HTTP/1.1 POST /v1/detect (multipart, Connection: close), built once:
    the load generator shares the 2 cores with the server, so each request costs it one write and one read."""
    import httpx

    out = []
    for i, image in enumerate(images):
        req = httpx.Request(
            "POST", f"http://127.0.0.1:{port}/v1/detect", files=[("files", (f"img{i}.jpg", image, "image/jpeg"))]
        )
        body = req.read()
        head = f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {req.headers['content-type']}\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        out.append(head.encode() + body)
    return out


async def _one(port: int, request: bytes, rec: Recorder) -> None:
    """One request on its own connection; the latency runs from connecting to the last byte of the answer."""
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            answer = await reader.read()
        finally:
            writer.close()
    except OSError as exc:
        rec.failures.append(f"{type(exc).__name__}: {exc}")
        return
    try:
        status = int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        rec.failures.append(f"no HTTP answer ({len(answer)} bytes)")
        return
    timing = _SERVER_TIMING.search(answer.split(b"\r\n\r\n", 1)[0])
    rec.add(status, time.perf_counter() - t0, float(timing.group(1)) / 1000 if timing else None)


async def closed_loop(port, requests, n: int, concurrency: int, rec: Recorder) -> None:
    counter = iter(range(n))

    async def worker():
        for i in counter:
            rec.sent += 1
            await _one(port, requests[i % len(requests)], rec)

    rec.t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rec.t1 = time.monotonic()


async def open_loop(port, requests, rate: float, n: int, rec: Recorder, max_in_flight: int) -> None:
    """Request i starts at t0 + i / rate (not when an earlier one ends); at most max_in_flight at once (the
    client's own bound; a request that cannot start on time starts late and counts in 'late_starts')."""
    gate = asyncio.Semaphore(max_in_flight)
    tasks = []
    rec.t0 = start = time.monotonic()
    rec.late_starts = 0

    async def fire(i: int) -> None:
        try:
            await _one(port, requests[i % len(requests)], rec)
        finally:
            gate.release()

    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.05:
            rec.late_starts += 1
        await gate.acquire()
        rec.sent += 1
        tasks.append(asyncio.create_task(fire(i)))
    rec.sending_s = time.monotonic() - start  # the last request started: the rate offered is (n - 1) / this
    await asyncio.gather(*tasks)
    rec.t1 = time.monotonic()


def _started_rps(rec: Recorder) -> float:
    """Requests per second the generator started (the wall of summary() also holds the last answers' wait)."""
    return (rec.sent - 1) / rec.sending_s if rec.sent > 1 and rec.sending_s > 0 else float("nan")


async def sample_rss(pid: int, series: list, phase: list[str], stop: asyncio.Event) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        series.append((round(time.monotonic() - t0, 1), phase[0], _rss_mb(pid).get("VmRSS")))
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass


async def sample_readiness(port: int, samples: list, phase: list[str], stop: asyncio.Event) -> None:
    """GET /readyz twice a second: the server's own view (status, queued images, event-loop lag)."""
    request = f"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    t0 = time.monotonic()
    while not stop.is_set():
        t = round(time.monotonic() - t0, 2)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
            try:
                writer.write(request)
                answer = await asyncio.wait_for(reader.read(), 2)
            finally:
                writer.close()
            body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            samples.append((t, phase[0], body["status"], body["queued_images"], body.get("loop_lag_s")))
        except (OSError, TimeoutError, ValueError, IndexError, KeyError):
            samples.append((t, phase[0], "no answer", None, None))
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        except TimeoutError:
            pass


def readiness_summary(samples: list, phase: str) -> dict:
    """Per phase: how often each readiness status was seen, the largest event-loop lag and queue."""
    rows = [s for s in samples if s[1] == phase]
    lags = [s[4] for s in rows if s[4] is not None]
    queued = [s[3] for s in rows if s[3] is not None]
    statuses: dict[str, int] = {}
    for s in rows:
        statuses[s[2]] = statuses.get(s[2], 0) + 1
    return {"samples": len(rows), "statuses": statuses, "max_loop_lag_s": max(lags, default=None),
            "median_loop_lag_s": float(np.median(lags)) if lags else None, "max_queued_images": max(queued, default=None)}  # fmt: skip


async def run_all(port: int, pid: int, images: list[bytes], args) -> dict:
    requests = raw_requests(port, images)
    series: list = []
    ready_samples: list = []
    phase = ["warm-up"]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, series, phase, stop))
    ready_sampler = asyncio.create_task(sample_readiness(port, ready_samples, phase, stop))
    out: dict = {}
    await closed_loop(port, requests, args.warmup, min(args.concurrency, args.warmup), Recorder("warm-up"))
    phase[0] = "capacity"
    cap = Recorder("capacity")
    await closed_loop(port, requests, args.capacity_requests, args.concurrency, cap)
    out["capacity"] = cap.summary()
    capacity = out["capacity"]["answered_200_rps"]
    print(f"capacity: {capacity:.1f} requests/s ({args.concurrency} clients, closed loop)", flush=True)

    phase[0] = "soak"
    rate = args.soak_load * capacity
    soak = Recorder("soak")
    soak_start = len(series)
    print(f"soak: {args.soak_requests} requests at {rate:.1f}/s ...", flush=True)
    await open_loop(port, requests, rate, args.soak_requests, soak, args.max_in_flight)
    out["soak"] = {
        **soak.summary(),
        "target_rps": rate,
        "started_rps": _started_rps(soak),
        "late_starts": soak.late_starts,
        "readiness": readiness_summary(ready_samples, "soak"),
    }
    soak_rss = [r for _, p, r in series[soak_start:] if p == "soak" and r is not None]

    bursts = []
    for b in range(args.bursts):
        phase[0] = "pause"
        await asyncio.sleep(args.pause)
        phase[0] = f"burst {b + 1}"
        rate = args.overload * capacity
        n = max(1, int(rate * args.burst_seconds))
        rec = Recorder(f"burst {b + 1}")
        print(f"burst {b + 1}: {n} requests at {rate:.1f}/s ...", flush=True)
        await open_loop(port, requests, rate, n, rec, args.max_in_flight)
        bursts.append(
            {
                **rec.summary(),
                "target_rps": rate,
                "started_rps": _started_rps(rec),
                "late_starts": rec.late_starts,
                "readiness": readiness_summary(ready_samples, f"burst {b + 1}"),
            }
        )
        out.setdefault("_burst_recorders", []).append(rec)
    out["bursts"] = bursts
    phase[0] = "after"
    await asyncio.sleep(1.5)
    stop.set()
    await sampler
    await ready_sampler
    out["readiness_series"] = ready_samples
    tenth = max(1, len(soak_rss) // 10)
    first, last = float(np.median(soak_rss[:tenth])), float(np.median(soak_rss[-tenth:]))
    out["rss"] = {
        "series": series,
        "soak_first_tenth_mb": first,
        "soak_last_tenth_mb": last,
        "soak_growth_pct": 100 * (last - first) / first,
        "max_mb": max(r for _, _, r in series if r is not None),
    }
    recs = out.pop("_burst_recorders", [])
    all_burst = Recorder("all bursts")
    all_burst.t0, all_burst.t1 = 0.0, sum(rec.t1 - rec.t0 for rec in recs)  # their walls added up
    for rec in recs:
        all_burst.latencies += rec.latencies
        all_burst.ok_latencies += rec.ok_latencies
        all_burst.server_ok_latencies += rec.server_ok_latencies
        all_burst.sent += rec.sent
        all_burst.failures += rec.failures
        for k, v in rec.statuses.items():
            all_burst.statuses[k] = all_burst.statuses.get(k, 0) + v
    out["overload"] = all_burst.summary()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", help="detector folder (default: build one for --backbone in a temp folder)")
    p.add_argument("--backbone", default="tiny", help="tiny (a tiny CLIP) or any backbone spec, without --detector")
    p.add_argument("--concurrency", type=int, default=20, help="clients of the capacity measurement")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--capacity-requests", type=int, default=400)
    p.add_argument("--soak-requests", type=int, default=10_000)
    p.add_argument("--soak-load", type=float, default=0.5, help="soak rate as a fraction of capacity")
    p.add_argument("--overload", type=float, default=5.0, help="burst rate as a multiple of capacity")
    p.add_argument("--bursts", type=int, default=3)
    p.add_argument("--burst-seconds", type=float, default=10.0)
    p.add_argument("--pause", type=float, default=5.0, help="seconds between bursts")
    p.add_argument("--max-in-flight", type=int, default=256, help="the load generator's own bound on open requests")
    p.add_argument("--deadline", type=float, default=2.0, help="the server's --deadline (seconds)")
    p.add_argument("--max-queued-images", type=int, default=64, help="the server's --max-queued-images")
    p.add_argument("--slack", type=float, default=0.0, help="seconds allowed above the deadline at p95 (client side)")
    p.add_argument("--image-size", default="512x384", help="WxH of the JPEGs sent")
    p.add_argument("--serve-args", default="", help="more arguments for `causalclip serve`")
    p.add_argument("--time-limit", type=float, default=3600, help="the whole run is stopped after this many seconds")
    p.add_argument("--out", help="also write the results (with the RSS series) as JSON here")
    args = p.parse_args(argv)
    if min(args.concurrency, args.warmup, args.capacity_requests, args.soak_requests, args.max_in_flight) < 1:
        p.error("counts must be positive")
    if not (0 < args.soak_load and 0 < args.overload and args.bursts >= 0 and args.burst_seconds > 0):
        p.error("--soak-load, --overload and --burst-seconds must be positive")
    w, h = (int(v) for v in args.image_size.lower().split("x"))

    import httpx

    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        detector = Path(args.detector) if args.detector else build_detector(Path(tmp), args.backbone)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve_args = ["--deadline", str(args.deadline), "--max-queued-images", str(args.max_queued_images)]
        server = start_server(detector, port, [*serve_args, *args.serve_args.split()])
        try:
            try:
                wait_ready(server, base)
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                return 2
            model = httpx.get(base + "/v1/model", timeout=10).json()
            images = make_images(8, (w, h))
            result = asyncio.run(asyncio.wait_for(run_all(port, server.pid, images, args), args.time_limit))
        finally:
            exit_status = stop_server(server)
    over, soak, rss = result["overload"], result["soak"], result["rss"]
    phases = [result["capacity"], soak, *result["bursts"]]
    targets = {
        "no 5xx other than 503": all(ph["n_5xx_other_than_503"] == 0 for ph in phases),
        "no connection failures": all(ph["connection_failures"] == 0 for ph in phases),
        "503 under overload": args.bursts == 0 or over["n_503"] > 0,
        "RSS growth over the soak < 10%": rss["soak_growth_pct"] < 10,
        "p95 under overload <= deadline + slack, in every burst": all(
            (b["latency_ms_all"]["p95"] or 0) <= 1000 * (args.deadline + args.slack) for b in result["bursts"]
        ),
        "bursts started at >= 95% of their target rate": all(
            b["started_rps"] >= 0.95 * b["target_rps"] for b in result["bursts"]
        ),
        "server exit status 0 after SIGTERM": exit_status == 0,
    }
    report = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "detector": {k: model.get(k) for k in ("backbone", "feature_dim", "crops", "device", "precision")},
        "server": {
            "deadline_s": args.deadline,
            "max_queued_images": args.max_queued_images,
            "serve_args": args.serve_args,
        },  # fmt: skip
        "image": f"{w}x{h} JPEG q90",
        **result,
        "targets": targets,
    }
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores; detector {model.get('backbone')}")
    for ph in [*phases, over]:
        a, ok = ph["latency_ms_all"], ph["latency_ms_200"]
        fmt = lambda d: "-" if d["p50"] is None else f"{d['p50']:.0f}/{d['p95']:.0f}/{d['p99']:.0f}"  # noqa: E731
        print(
            f"{ph['phase']:>10}: sent {ph['requests_sent']} in {ph['wall_s']:.0f} s (offered {ph['offered_rps']:.1f}/s, "
            + (f"started at {ph['started_rps']:.1f}/s of {ph['target_rps']:.1f}/s, " if "started_rps" in ph else "")
            + f"200s {ph['answered_200_rps']:.1f}/s); statuses {ph['status_counts']}; failures "
            f"{ph['connection_failures']}; ms p50/p95/p99 all {fmt(a)}, 200s {fmt(ok)}, "
            f"200s by the server's Server-Timing {fmt(ph['server_timing_ms_200'])}"
        )
        if "readiness" in ph:
            r = ph["readiness"]
            lag = (
                "-"
                if r["max_loop_lag_s"] is None
                else f"median {r['median_loop_lag_s']:.3f} s, max {r['max_loop_lag_s']:.3f} s"
            )
            print(f"{'':>12}/readyz: {r['statuses']}; event-loop lag {lag}; queued images max {r['max_queued_images']}")
    print(
        f"RSS MB: soak first tenth {rss['soak_first_tenth_mb']:.0f}, last tenth {rss['soak_last_tenth_mb']:.0f} "
        f"({rss['soak_growth_pct']:+.1f}%), max {rss['max_mb']:.0f}; server exit status {exit_status}"
    )
    for name, ok in targets.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
