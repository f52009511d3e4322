"""Training throughput and peak memory of the heads on cached 768-d float16 features (a benchmark, not a test).

The requirement it measures::

    Training throughput on cached 768-d float16 features, batch 256, on this 2-core machine: at least 5,000
    samples/s for the full CausalCLIP objective (an epoch of the 720k-image ProGAN set in under 2.5 minutes),
    printed beside the UnivFD probe's throughput (head ``univfd``) from the same run. RSS while training on a
    1M x 768 float16 set stays under 3 GB.

What it does:

1. Writes a feature set of ``--rows`` random float16 vectors (balanced labels) in streaming fashion
   (``np.lib.format.open_memmap`` + a Parquet samples table), so building 1M x 768 does not need 1.5 GB of RAM,
   plus a small validation set (``--val-rows``) with :func:`causalclip.write_feature_set`. Both are checked with
   :func:`causalclip.open_feature_set`. Values are random: the speed of the heads does not depend on them.
2. Throughput: for each head of ``--heads`` a child process calls :func:`causalclip.train` (the code path of
   ``causalclip train``) with ``resolve_run_config(head, overrides={"train.epochs": E, "train.batch_size": B,
   "train.patience": 10**6, "train.seed": S})``, everything else at its defaults (``nc_probe_every`` included),
   for ``--epochs`` epochs of ``--steps`` batches each: the training set is a row view of the first
   steps x batch rows of the big set, which is opened and validated first as ``train`` does with a path. The
   figure per epoch is the training loop's own ``samples_per_s`` column of the run's metrics.csv (it excludes
   the per-epoch validation); the head's figure is the median over the epochs that ran on an idle machine.
   The wall time of the whole ``train()`` call is printed beside it.
3. Memory: one more child trains ``--rss-head`` (default causalclip) for one full epoch over all ``--rows``
   rows, passing the feature-set *path* to ``train`` exactly as a user does; its peak RSS is the child's VmHWM
   (cross-checked with ``ru_maxrss`` from ``wait4``, and split into anonymous and file-backed peaks by a
   sampler thread), so building the data set does not count. This run also gives the wall time of a whole
   epoch, validation included.

On 2 cores, any other busy process distorts the figures badly (torch's two OpenMP threads then wait on each
other at every operator: CausalCLIP can drop from ~9k to ~200 samples/s). The script measures, per epoch, how
much of the CPUs other processes used, ignores epochs above ``--max-other-cpu`` when there are clean ones, and
marks the figure as a lower bound (verdict INCONCLUSIVE) when there are none. ``--wait-idle SECONDS`` waits for
an idle machine before each measurement.

Usage::

    python benchmarks/train_throughput.py                  # the full run (~5 min on an idle machine)
    python benchmarks/train_throughput.py --quick          # a smoke run on 100k rows
    python benchmarks/train_throughput.py --wait-idle 600  # on a shared machine
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from causalclip.core.machine import cpu_model

REQUIRED_SAMPLES_PER_S = 5000.0
PROGAN_TRAIN_ROWS = 720_000
REQUIRED_EPOCH_S = 150.0
REQUIRED_RSS_BYTES = 3e9
CHUNK_ROWS = 65_536
SET_VERSION = 1  # bump when the layout of the generated set changes, so a kept --workdir is rebuilt


# ---------------------------------------------------------------------------------------------------------
# machine and load


def machine_info() -> dict[str, Any]:
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        capability = "unknown"
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_total_gb": round(mem_total / 1e9, 1) if mem_total else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": capability,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
    }


def cpu_busy_seconds() -> float:
    """CPU-seconds all CPUs of the machine have spent busy since boot (from /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    vals = [int(v) for v in fields]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    busy = sum(vals[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------------
# the feature sets


def _set_stamp(rows: int, dim: int, seed: int) -> dict[str, Any]:
    return {"rows": rows, "dim": dim, "seed": seed, "version": SET_VERSION}


def build_train_set(root: Path, *, rows: int, dim: int, seed: int) -> tuple[Path, bool]:
    """Write (or reuse) a rows x dim float16 feature set in ``root`` without holding it in memory.

    Returns (root, reused). Labels are exactly balanced (rows // 2 fakes) in a seeded random order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    stamp = _set_stamp(rows, dim, seed)
    meta_path = root / "meta.json"
    if meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()).get("benchmark") == stamp:
                return root, True
        except ValueError:
            pass
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    mm = np.lib.format.open_memmap(root / "features.npy", mode="w+", dtype=np.float16, shape=(rows, dim))
    for i in range(0, rows, CHUNK_ROWS):
        n = min(CHUNK_ROWS, rows - i)
        mm[i : i + n] = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)
    mm.flush()
    del mm
    labels = np.zeros(rows, dtype=np.int64)
    labels[: rows // 2] = 1
    rng.shuffle(labels)
    kind = np.where(labels == 1, "1_fake", "0_real")
    paths = [f"progan/class{i % 20:02d}/{k}/{i:08d}.png" for i, k in enumerate(kind)]
    table = pa.table(
        {
            "path": pa.array(paths, type=pa.string()),
            "label": pa.array(labels),
            "generator": pa.array(["progan"] * rows, type=pa.string()),
        }
    )
    pq.write_table(table, root / "samples.parquet")
    del table, paths, kind
    meta = {
        "dim": dim,
        "dtype": "float16",
        "count": rows,
        "backbone": "random (benchmark)",
        "preprocessing": "none",
        "benchmark": stamp,
    }
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")  # last: marks the set complete
    return root, False


def build_val_set(root: Path, *, rows: int, dim: int, seed: int) -> Path:
    import pandas as pd

    from causalclip import write_feature_set

    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16)
    labels = np.zeros(rows, dtype=np.int64)
    labels[: rows // 2] = 1
    rng.shuffle(labels)
    samples = pd.DataFrame({"path": [f"val/{i:08d}.png" for i in range(rows)], "label": labels, "generator": "progan"})
    meta = {"backbone": "random (benchmark)", "preprocessing": "none"}
    return write_feature_set(root, x, samples, meta=meta)


# ---------------------------------------------------------------------------------------------------------
# the child: one call of causalclip.train, measured from inside


def _proc_status() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


class _RssSampler(threading.Thread):
    """Polls /proc/self/status: the peak of the anonymous and the file-backed parts of RSS, separately."""

    def __init__(self, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.every_s = every_s
        self.peak: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.sample()

    def sample(self) -> dict[str, int]:
        st = _proc_status()
        for k, v in st.items():
            self.peak[k] = max(v, self.peak.get(k, 0))
        return st


def _snapshot() -> tuple[float, float, float]:
    """(wall clock, CPU-s the whole machine has been busy, CPU-s this process has used)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), cpu_busy_seconds(), ru.ru_utime + ru.ru_stime


class _EpochClock(logging.Handler):
    """Takes a :func:`_snapshot` whenever train() logs the end of an epoch (after that epoch's validation)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.marks: list[tuple[float, float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("epoch %d:"):
            self.marks.append(_snapshot())


def _other_cpu_frac(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Share of the machine's CPU capacity used by *other* processes between snapshots a and b."""
    wall = b[0] - a[0]
    other = (b[1] - a[1]) - (b[2] - a[2])
    return max(other, 0.0) / (wall * (os.cpu_count() or 1)) if wall > 0 else float("nan")


def matmul_gflops(reps: int = 200) -> float:
    """Speed of the machine right now: GFLOP/s of the (256 x 768) @ (768 x 512) float32 matmul of the mask MLP."""
    import torch

    a, b = torch.randn(256, 768), torch.randn(768, 512)
    for _ in range(20):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * 256 * 768 * 512 * reps / (time.perf_counter() - t0) / 1e9


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd
    import torch

    import causalclip
    from causalclip import FeatureSet, open_feature_set, resolve_run_config

    sampler = _RssSampler()
    sampler.start()
    clock = _EpochClock()
    log = logging.getLogger("causalclip")
    log.addHandler(clock)
    log.setLevel(logging.INFO)

    overrides: dict[str, Any] = {
        "train.epochs": spec["epochs"],
        "train.batch_size": spec["batch_size"],
        "train.patience": 1_000_000,  # never stop early (nor decay lr): every requested epoch runs
        "train.seed": spec["seed"],
    }
    if spec.get("nc_probe_every") is not None:
        overrides["train.nc_probe_every"] = spec["nc_probe_every"]
    if spec.get("num_threads"):
        overrides["train.num_threads"] = spec["num_threads"]
    rc = resolve_run_config(spec["head"], overrides=overrides)

    t_start = time.perf_counter()
    open_s = None
    if spec["rows_used"] is None:
        train_set: Any = spec["train"]  # a path: train() opens and validates it, as for a user
    else:
        full = open_feature_set(spec["train"])  # what train() would do with the path
        open_s = time.perf_counter() - t_start
        n = spec["rows_used"]
        train_set = FeatureSet(
            root=full.root,
            meta=full.meta,
            samples=full.samples.iloc[:n].reset_index(drop=True),
            shards=[full.shards[0][:n]],
        )
    if spec.get("num_threads"):
        torch.set_num_threads(spec["num_threads"])  # as train() will, so the calibration uses the same threads
    gflops_before = matmul_gflops()
    start = _snapshot()
    causalclip.train(
        train_set=train_set, val_set=spec["val"], out=spec["out"], run_config=rc, progress=False, overwrite=True
    )
    end = _snapshot()
    gflops_after = matmul_gflops()
    sampler.stop.set()
    sampler.join()
    at_exit = sampler.sample()
    hist = pd.read_csv(Path(spec["out"]) / "metrics.csv")
    epochs = []
    prev = start
    for i, mark in enumerate(clock.marks):
        epochs.append(
            {
                "samples_per_s": float(hist["samples_per_s"].iloc[i]),
                "train_seconds": float(hist["train_seconds"].iloc[i]),
                # epoch 1: from the train() call (incl. opening a path); later: from the previous epoch's end
                "wall_s": mark[0] - prev[0],
                "other_cpu_frac": _other_cpu_frac(prev, mark),
            }
        )
        prev = mark
    return {
        "head": spec["head"],
        "torch_threads": torch.get_num_threads(),
        "rows_used": spec["rows_used"],
        "epochs": epochs,
        "open_s": open_s,
        "matmul_gflops": [gflops_before, gflops_after],
        "train_call_s": end[0] - start[0],
        "final_s": end[0] - prev[0],  # after the last epoch: best-state reload, final diagnostics (probe), saving
        "proc": at_exit,  # VmHWM = the process's peak RSS; the other keys are values at the end
        "rss_peaks": sampler.peak,  # per-kind peaks seen by the 0.25 s sampler (RssAnon, RssFile, ...)
        "config": rc.to_dict(),
    }


def wait_idle(max_wait_s: float, *, window_s: float = 10.0, threshold: float = 0.05) -> float:
    """Wait (at most max_wait_s) until the machine's CPUs have been < threshold busy for window_s; seconds waited."""
    t0 = time.perf_counter()
    quiet_since = None
    prev = _snapshot()
    while time.perf_counter() - t0 < max_wait_s:
        time.sleep(1.0)
        cur = _snapshot()
        quiet = _other_cpu_frac(prev, cur) < threshold
        prev = cur
        if not quiet:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = cur[0]
        elif cur[0] - quiet_since >= window_s:
            break
    return time.perf_counter() - t0


def spawn_child(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; return its report plus wait4's peak RSS and CPU figures."""
    spec_path = workdir / f"spec-{spec['label']}.json"
    out_path = workdir / f"result-{spec['label']}.json"
    spec_path.write_text(json.dumps(spec))
    if out_path.exists():
        out_path.unlink()
    busy0, wall0 = cpu_busy_seconds(), time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", str(spec_path), str(out_path)])
    try:
        _, status, ru = os.wait4(proc.pid, 0)
    except BaseException:  # Ctrl-C / SIGTERM: do not leave the child training
        proc.kill()
        os.waitpid(proc.pid, 0)
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall, busy = time.perf_counter() - wall0, cpu_busy_seconds() - busy0
    if proc.returncode != 0 or not out_path.is_file():
        raise RuntimeError(f"the {spec['label']} measurement failed (exit code {proc.returncode})")
    res = json.loads(out_path.read_text())
    child_cpu = ru.ru_utime + ru.ru_stime
    res.update(
        wall_s=wall,
        ru_maxrss_bytes=ru.ru_maxrss * 1024,  # Linux: KiB
        child_cpu_s=child_cpu,
        other_cpu_frac=max(busy - child_cpu, 0.0) / (wall * (os.cpu_count() or 1)) if wall > 0 else float("nan"),
    )
    return res


def headline(res: dict[str, Any], max_other: float) -> tuple[float, int, int]:
    """(median samples/s over the epochs run while other processes used <= max_other of the CPUs, #clean, #all).

    When no epoch was clean, the median over all epochs (then a lower bound of the idle-machine figure).
    """
    eps = res["epochs"]
    clean = [e["samples_per_s"] for e in eps if e["other_cpu_frac"] <= max_other]
    vals = clean or [e["samples_per_s"] for e in eps]
    return float(np.median(vals)), len(clean), len(eps)


# ---------------------------------------------------------------------------------------------------------
# reporting


def _gf(res: dict[str, Any]) -> str:
    before, after = res.get("matmul_gflops", [float("nan")] * 2)
    return f"{before:.0f}/{after:.0f}"


def _fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s:.0f} s ({s / 60:.2f} min)"


def _verdict(ok: bool, busy: bool = False) -> str:
    if busy and not ok:
        return "INCONCLUSIVE (measured on a busy machine)"
    return "PASS" if ok else "FAIL"


def report(
    args: argparse.Namespace, info: dict[str, Any], tp: dict[str, dict[str, Any]], mem: dict[str, Any] | None
) -> dict[str, Any]:
    p = print
    mo = args.max_other_cpu
    summary: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}}
    summary["throughput"] = {}
    contended = False
    if tp:
        p("")
        p("== Training throughput: causalclip.train(), training loop only (metrics.csv samples_per_s) ==")
        any_res = next(iter(tp.values()))
        p(
            f"    {args.dim}-d float16 features, batch {args.batch_size}, {args.epochs} epoch(s) x {args.steps} steps "
            f"({args.steps * args.batch_size:,} samples) per head, torch threads {any_res['torch_threads']}"
        )
        p(
            f"    {'head':<12}{'samples/s':>10}{'ms/step':>9}{'720k epoch':>12}  {'per epoch (other CPU %)':>44}"
            f"{'train() wall':>14}{'GFLOP/s':>15}"
        )
        for head, r in tp.items():
            sps, n_clean, n_all = headline(r, mo)
            flag = "" if n_clean else " *"
            contended |= not n_clean
            per = ", ".join(f"{e['samples_per_s']:,.0f} ({100 * e['other_cpu_frac']:.0f}%)" for e in r["epochs"])
            p(
                f"    {head:<12}{sps:>10,.0f}{1000 * args.batch_size / sps:>9.1f}{PROGAN_TRAIN_ROWS / sps:>10.1f} s"
                f"  {per:>44}{r['train_call_s']:>12.1f} s{_gf(r):>15}{flag}"
            )
            summary["throughput"][head] = {
                "samples_per_s": sps,
                "clean_epochs": n_clean,
                "epochs": r["epochs"],
                "projected_720k_epoch_s": PROGAN_TRAIN_ROWS / sps,
                "train_call_s": r["train_call_s"],
                "peak_rss_bytes": r["proc"].get("VmHWM"),
            }
        p(
            f"    samples/s = median over the epochs in which other processes used <= {100 * mo:.0f}% of the CPUs; "
            "train() wall = the whole call (epochs, per-epoch validation + diagnostics, final probe, saving); "
            "GFLOP/s = a 256x768x512 matmul timed just before/after train(), how fast the machine was"
        )
        if contended:
            p("    * no epoch of this head ran on an idle machine: its figure is a lower bound; rerun with --wait-idle")
    if "causalclip" in tp and "univfd" in tp:
        c = summary["throughput"]["causalclip"]["samples_per_s"]
        u = summary["throughput"]["univfd"]["samples_per_s"]
        p(f"    causalclip / univfd throughput: {c / u:.3f} (the linear probe is {u / c:.1f}x faster)")
        summary["ratio_causalclip_univfd"] = c / u

    summary["memory"] = None
    if mem is not None:
        e = mem["epochs"][0]
        over = e["wall_s"] - e["train_seconds"]
        st = mem["proc"]
        p("")
        p(
            f"== One full epoch + peak RSS: head {mem['head']} on {args.rows:,} x {args.dim} float16, "
            f"train(train_set=PATH) in a child process =="
        )
        p(
            f"    training loop {e['samples_per_s']:,.0f} samples/s ({_fmt_s(e['train_seconds'])}); epoch wall "
            f"{_fmt_s(e['wall_s'])} incl. {over:.1f} s outside the loop (opening + checking the set, validation); "
            f"other processes used {100 * e['other_cpu_frac']:.0f}% of the CPUs; matmul GFLOP/s before/after {_gf(mem)}"
        )
        p(
            f"    scaled to 720k samples: {_fmt_s(PROGAN_TRAIN_ROWS / e['samples_per_s'])} training loop, "
            f"{_fmt_s(PROGAN_TRAIN_ROWS / e['samples_per_s'] + over)} with that overhead"
        )
        p(
            f"    peak RSS (VmHWM) {st.get('VmHWM', 0) / 1e9:.3f} GB [wait4 ru_maxrss {mem['ru_maxrss_bytes'] / 1e9:.3f} GB]; "
            f"at exit: anonymous {st.get('RssAnon', 0) / 1e9:.3f} GB + file-backed (the memory map) "
            f"{st.get('RssFile', 0) / 1e9:.3f} GB"
        )
        if e["other_cpu_frac"] > mo:
            p("    WARNING: the machine was busy during this epoch: its speed is not representative (its RSS is)")
        pk = mem.get("rss_peaks", {})
        p(
            f"    sampled peaks (every 0.25 s): anonymous {pk.get('RssAnon', 0) / 1e9:.3f} GB, "
            f"file-backed {pk.get('RssFile', 0) / 1e9:.3f} GB (features.npy is "
            f"{args.rows * args.dim * 2 / 1e9:.3f} GB)"
        )
        summary["memory"] = {
            "head": mem["head"],
            "rows": args.rows,
            "epoch": e,
            "projected_720k_epoch_s": PROGAN_TRAIN_ROWS / e["samples_per_s"],
            "peak_rss_bytes": st.get("VmHWM"),
            "ru_maxrss_bytes": mem["ru_maxrss_bytes"],
            "rss_anon_exit_bytes": st.get("RssAnon"),
            "rss_file_exit_bytes": st.get("RssFile"),
            "rss_sampled_peaks_bytes": mem.get("rss_peaks"),
        }

    p("")
    p("== Requirement ==")
    if "causalclip" in summary["throughput"]:
        t = summary["throughput"]["causalclip"]
        sps, busy = t["samples_per_s"], not t["clean_epochs"]
        note = " (machine busy: a lower bound)" if busy else ""
        p(
            f"    causalclip >= {REQUIRED_SAMPLES_PER_S:,.0f} samples/s: {sps:,.0f}{note}  "
            f"{_verdict(sps >= REQUIRED_SAMPLES_PER_S, busy)}"
        )
        p(
            f"    720k-sample epoch < {REQUIRED_EPOCH_S / 60:.1f} min: {PROGAN_TRAIN_ROWS / sps / 60:.2f} min "
            f"(training loop){note}  {_verdict(PROGAN_TRAIN_ROWS / sps < REQUIRED_EPOCH_S, busy)}"
        )
        summary["pass_throughput"] = sps >= REQUIRED_SAMPLES_PER_S
    if mem is not None:
        rss = summary["memory"]["peak_rss_bytes"] or 0
        note = "" if args.rows >= 1_000_000 else f"  (only {args.rows:,} rows: the requirement is for 1M)"
        p(
            f"    peak RSS < 3 GB training on {args.rows:,} x {args.dim} float16: {rss / 1e9:.3f} GB  {_verdict(rss < REQUIRED_RSS_BYTES)}{note}"
        )
        summary["pass_rss"] = rss < REQUIRED_RSS_BYTES
    return summary


# ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Measure training throughput (samples/s) of the causalclip heads on cached float16 features, "
        "and the peak RSS of a full epoch on a large set.",
    )
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the training feature set (default 1M)")
    ap.add_argument("--dim", type=int, default=768, help="feature dimension (default 768)")
    ap.add_argument("--batch-size", type=int, default=256, help="training batch size (default 256)")
    ap.add_argument(
        "--epochs", type=int, default=3, help="epochs per throughput run; each is timed on its own (default 3)"
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=200,
        help="batches per epoch in the throughput runs (they train on the first steps x batch rows; default 200)",
    )
    ap.add_argument("--val-rows", type=int, default=8000, help="rows of the validation set (default 8000)")
    ap.add_argument(
        "--heads", nargs="*", default=["causalclip", "univfd", "vib"], help="heads to time (default: all three)"
    )
    ap.add_argument(
        "--rss-head",
        default="causalclip",
        help="head of the full-epoch peak-RSS run over all --rows rows (default causalclip; 'none' skips it)",
    )
    ap.add_argument(
        "--nc-probe-every",
        type=int,
        default=None,
        help="override train.nc_probe_every (default: the library default; the probe runs in validation, "
        "outside the timed training loop)",
    )
    ap.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.05,
        help="an epoch counts as measured on an idle machine when other processes used at most this share of the "
        "CPUs meanwhile (default 0.05)",
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measurement, wait up to SECONDS for 10 s of idle machine (for shared machines; default 0)",
    )
    ap.add_argument(
        "--num-threads",
        type=int,
        default=0,
        help="train.num_threads for every run (default 0: torch's default, one per core)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where the sets and runs go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep --workdir (a kept set is reused by the next run)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 100k rows, 50 steps, 2000 validation rows")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a requirement is not met")
    ap.add_argument("--child", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.steps, args.val_rows = 100_000, 50, 2000
    if args.steps * args.batch_size > args.rows:
        ap.error(f"--steps {args.steps} x --batch-size {args.batch_size} exceeds --rows {args.rows}")
    return args


def _maybe_wait(args: argparse.Namespace) -> None:
    if args.wait_idle > 0:
        waited = wait_idle(args.wait_idle, threshold=args.max_other_cpu)
        if waited > 2:
            print(f"   (waited {waited:.0f} s for an idle machine)", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        spec_path, out_path = args.child
        res = run_child(json.loads(Path(spec_path).read_text()))
        Path(out_path).write_text(json.dumps(res))
        return 0

    # SIGTERM runs the cleanup below (and kills a running child) instead of leaving a temp dir behind
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    info = machine_info()
    print("== Machine ==")
    print(
        f"    CPU: {info['cpu']}; {info['cores']} cores ({info['cores_usable']} usable); RAM {info['mem_total_gb']} GB"
    )
    print(
        f"    Python {info['python']}, numpy {info['numpy']}, torch {info['torch']} "
        f"(torch.get_num_threads() = {info['torch_threads']}, CPU capability {info['torch_cpu_capability']}, "
        f"OMP_NUM_THREADS {info['OMP_NUM_THREADS']})"
    )
    print(f"    load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("    command: python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))

    made_tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="causalclip-bench-")) if made_tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        from causalclip import open_feature_set

        t0 = time.perf_counter()
        train_root, reused = build_train_set(workdir / "train", rows=args.rows, dim=args.dim, seed=args.seed)
        val_root = build_val_set(workdir / "val", rows=args.val_rows, dim=args.dim, seed=args.seed)
        fs = open_feature_set(train_root, check_finite=False)
        n, n_fake, size = len(fs), int(fs.labels.sum()), (train_root / "features.npy").stat().st_size
        del fs
        print("")
        print(
            f"== Data == {'reused' if reused else 'built'} {train_root}: {n:,} x {args.dim} float16 "
            f"({size / 1e9:.2f} GB, {n_fake:,} fake), validation {args.val_rows:,} rows, in {time.perf_counter() - t0:.1f} s"
        )

        base = {
            "train": str(train_root),
            "val": str(val_root),
            "batch_size": args.batch_size,
            "seed": args.seed,
            "nc_probe_every": args.nc_probe_every,
            "num_threads": args.num_threads,
        }
        tp: dict[str, dict[str, Any]] = {}
        for head in args.heads:
            spec = {
                **base,
                "label": f"tp-{head}",
                "head": head,
                "epochs": args.epochs,
                "rows_used": args.steps * args.batch_size,
                "out": str(workdir / "runs" / f"tp-{head}"),
            }
            _maybe_wait(args)
            print(f"-- throughput: {head}, {args.epochs} x {args.steps} steps ...", flush=True)
            tp[head] = spawn_child(spec, workdir)
            per = ", ".join(f"{e['samples_per_s']:,.0f} ({100 * e['other_cpu_frac']:.0f}%)" for e in tp[head]["epochs"])
            print(f"   samples/s per epoch (other processes' CPU share): {per}", flush=True)
        mem = None
        if args.rss_head != "none":
            spec = {
                **base,
                "label": f"rss-{args.rss_head}",
                "head": args.rss_head,
                "epochs": 1,
                "rows_used": None,
                "out": str(workdir / "runs" / f"rss-{args.rss_head}"),
            }
            _maybe_wait(args)
            print(f"-- full epoch + peak RSS: {args.rss_head}, {args.rows:,} rows ...", flush=True)
            mem = spawn_child(spec, workdir)
            e = mem["epochs"][0]
            print(
                f"   {e['samples_per_s']:,.0f} samples/s ({100 * e['other_cpu_frac']:.0f}%), peak RSS "
                f"{mem['proc'].get('VmHWM', 0) / 1e9:.3f} GB",
                flush=True,
            )
        print(f"    load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        summary = report(args, info, tp, mem)
        if args.json is not None:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        if made_tmp and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep or not made_tmp:
            print(f"\n(work directory kept: {workdir})")
    if args.strict and not (summary.get("pass_throughput", True) and summary.get("pass_rss", True)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
