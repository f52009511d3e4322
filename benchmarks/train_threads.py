"""Does ``train.num_threads`` change CausalCLIP's training speed on small features? A paired, interleaved benchmark.

    python benchmarks/train_threads.py --out runs/train-threads                      # SCM features, ~3 min
    python benchmarks/train_threads.py --out runs/train-threads --demo-dir runs/demo  # + the demo's features

Each repetition trains CausalCLIP (package defaults, a fixed number of epochs: early stopping cannot end it) once
per ``--threads`` value, each in a fresh Python process (``torch.set_num_threads`` is process-wide, and a fresh
process is what a user's ``causalclip train`` is), in an order rotated every repetition so that a slow spell of
the shared machine does not fall on one setting. Timed: the ``train()`` call inside the child (reading the features,
the epochs, the per-epoch validation and fresh Znc probe, the final diagnostics and the run folder), excluding
Python start-up and imports, which the child reports separately. The 1-minute load average before each run is
recorded, since other jobs share the machine.

Reported per data set and setting: median, min and max seconds; the median over repetitions of the ratio to the
``--reference`` setting (default 1 thread) measured in the same repetition; how many repetitions it was faster.
Settings: 0 = torch's default (``torch.get_num_threads()`` at start-up, printed). Outputs in --out: runs.csv,
report.md (command, UTC date, code revision, machine). docs/reports/training-throughput.md reports a run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(args: argparse.Namespace) -> int:
    """One timed training run; prints one JSON line."""
    t_start = time.perf_counter()
    import torch

    from causalclip import resolve_run_config, train

    default_threads = torch.get_num_threads()
    overrides = {
        "train.epochs": args.epochs,
        "train.min_epochs": args.epochs,
        "train.patience": args.epochs + 1,  # never stop early: every run does the same work
        "train.num_threads": args.threads,
        "train.seed": 0,
    }
    rc = resolve_run_config("causalclip", overrides=overrides)
    imported = time.perf_counter() - t_start
    t0 = time.perf_counter()
    res = train(train_set=args.train, val_set=args.val, out=args.run_out, run_config=rc, progress=False, overwrite=True)
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "seconds": seconds,
                "startup_s": imported,
                "epochs_run": len(res.history),
                "torch_threads": torch.get_num_threads(),
                "torch_default_threads": default_threads,
                "train_s_per_epoch": float(res.history["train_seconds"].mean()),
            }
        )
    )
    return 0


def scm_sets(out: Path, n: int) -> dict[str, str]:
    from causalclip.features.synthetic import SCMSpec, write_scm_benchmark

    spec = SCMSpec(seed=0, dim=256, n_causal=16, n_family=16, n_specific=16, n_generators=6)
    sets = write_scm_benchmark(out / "data", spec, n_train=n, n_val=max(n // 4, 50), n_test=50)
    return {"train": str(sets["train"]), "val": str(sets["val"])}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="output folder")
    ap.add_argument("--threads", default="0,1,2", help="train.num_threads values (default 0,1,2; 0 = torch's)")
    ap.add_argument("--reference", type=int, default=1, help="the setting ratios are taken against (default 1)")
    ap.add_argument("--repeats", type=int, default=6, help="repetitions (default 6)")
    ap.add_argument("--epochs", type=int, default=6, help="epochs per run (default 6)")
    ap.add_argument("--n-train", type=int, default=2000, help="SCM training samples per class (default 2000)")
    ap.add_argument("--demo-dir", type=Path, help="also time on a `causalclip demo` folder's tconv-gan sets")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--train", help=argparse.SUPPRESS)
    ap.add_argument("--val", help=argparse.SUPPRESS)
    ap.add_argument("--run-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.child and args.out is None:
        ap.error("--out is required")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        args.threads = int(args.threads)
        return child(args)
    from scm_benchmark import machine_info, markdown_table

    settings = [int(t) for t in args.threads.split(",")]
    if args.reference not in settings:
        raise SystemExit(f"--reference {args.reference} is not among --threads {settings}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    env = machine_info()
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    data = {"SCM 256-d": scm_sets(out, args.n_train)}
    if args.demo_dir is not None:
        folder = args.demo_dir / "features" / "tconv-gan"
        data["demo 135-d"] = {"train": str(folder / "train"), "val": str(folder / "val")}
    rows = []
    for rep in range(args.repeats):
        order = settings[rep % len(settings) :] + settings[: rep % len(settings)]
        for name, sets in data.items():
            for t in order:
                load = os.getloadavg()[0]
                cmd = [sys.executable, __file__, "--child", "--threads", str(t), "--epochs", str(args.epochs)]
                cmd += ["--train", sets["train"], "--val", sets["val"], "--run-out", str(out / "runs" / f"t{t}")]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise SystemExit(f"child failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append({"data": name, "rep": rep, "threads": t, "load1": load, "process_s": wall, **res})
                print(f"rep {rep} {name} threads {t}: {res['seconds']:.2f} s (load {load:.2f})", flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "runs.csv", index=False)
    finished = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    header = ["data", "num_threads", "torch threads", "median s", "min-max s", f"median ratio to {args.reference}"]
    header += [f"faster than {args.reference}", "s/epoch (training only)"]
    table = []
    for name in data:
        d = df[df["data"] == name]
        ref = d[d["threads"] == args.reference].set_index("rep")["seconds"]
        for t in settings:
            s = d[d["threads"] == t].set_index("rep")
            ratio = (s["seconds"] / ref).dropna()
            wins = int((s["seconds"] < ref).sum())
            table.append(
                [
                    name,
                    f"{t}" + (" (torch default)" if t == 0 else ""),
                    str(int(s["torch_threads"].iloc[0])),
                    f"{s['seconds'].median():.2f}",
                    f"{s['seconds'].min():.2f}-{s['seconds'].max():.2f}",
                    "-" if t == args.reference else f"{np.median(ratio):.2f}",
                    "-" if t == args.reference else f"{wins} of {len(ratio)}",
                    f"{s['train_s_per_epoch'].median():.3f}",
                ]
            )
    report = [
        "# train.num_threads: CausalCLIP training time",
        "",
        f"Command: `python benchmarks/train_threads.py {argv_text}`; {started} - {finished} UTC; code "
        f"{env['code_revision']}; {env['cpu']}, {env['cpu_count']} CPUs; torch {env['torch']}; torch's default "
        f"thread count {int(df['torch_default_threads'].iloc[0])}.",
        f"{args.repeats} repetitions x {len(settings)} settings, order rotated each repetition; {args.epochs} epochs "
        f"per run, CausalCLIP package defaults (batch 256, fresh Znc probe every epoch). Load average before the "
        f"runs: median {df['load1'].median():.2f}, max {df['load1'].max():.2f}.",
        "",
        markdown_table(header, table),
    ]
    (out / "report.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
