"""Which ``train.min_epochs`` should CausalCLIP's model selection use? Measured on the SCM and the demo benchmark.

    python benchmarks/min_epochs.py --out runs/min-epochs                          # SCM (--quick size), ~5 min
    python benchmarks/min_epochs.py --out runs/min-epochs-demo --demo-dir runs/demo  # the demo's features

``train.min_epochs`` is the first epoch the saved model may come from (and early stopping cannot end the run
before it); ties go to the later epoch. Each value of ``--values`` (default 1, 3, 5, 10) is run with CausalCLIP at
its package defaults under both selection sources a user can have:

- ``val``: the training generator's validation split (the paper's protocol; its AP saturates early);
- ``heldout``: a validation generator that is not trained on (``train --val DIR heldout=DIR``), which is never a
  test generator here.

Data and training settings are those of benchmarks/sensitivity.py: the SCM at ``scm_benchmark.py --quick`` size,
train on gen0, validation generator gen3 (``--val-generator``), test AP = mean over the other generators; or, with
``--demo-dir``, train on ``--train-family``'s one-family sets, ``--val-family``'s test split as the held-out
validation set, test AP = mean over the remaining families, with the demo's own training settings. Reported per
(selection, min_epochs), mean and sample std over ``--seeds`` training seeds: the saved epoch, epochs run, the
selection score, test AP, and the fresh probe's and the adversary's accuracy on Znc of the saved model. The default
is judged on the test AP difference against min_epochs = 1 beyond seed spread (paired by seed), and on whether the
saved model has emptied Znc. Outputs in --out: runs.csv, summary.csv, report.md (with the command, UTC date,
code revision and machine). docs/reports/sensitivity.md#minimum-epochs-before-selection reports a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from causalclip.demo.run import DEFAULT_TRAIN
from causalclip.features.synthetic import SCMSpec, write_scm_benchmark
from causalclip.training.config import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scm_benchmark import Job, aggregate, machine_info, markdown_table, run_jobs, text_table  # noqa: E402
from sensitivity import complete_row, demo_sets  # noqa: E402

log = logging.getLogger("min_epochs")

SOURCES = ("val", "heldout")
METRICS = ["best_epoch", "epochs_run", "val_ap", "heldout_val_ap", "test_ap", "diag_nc_probe_acc", "diag_adv_acc"]


def _pm(mean: float, std: float, scale: float = 100.0, fmt: str = ".2f") -> str:
    if not np.isfinite(mean):
        return "-"
    sd = "" if not np.isfinite(std) else f" ± {scale * std:{fmt}}"
    return f"{scale * mean:{fmt}}{sd}"


def paired_difference(df: pd.DataFrame, source: str, value: int, base: int) -> tuple[float, float, int]:
    """Test AP of (source, value) minus (source, base), paired by seed: mean, sample std, number of seeds."""
    a = df[(df["source"] == source) & (df["min_epochs"] == value)].set_index("seed")["test_ap"]
    b = df[(df["source"] == source) & (df["min_epochs"] == base)].set_index("seed")["test_ap"]
    d = (a - b).dropna()
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else float("nan"), len(d)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--values", default="1,3,5,10", help="min_epochs values (default 1,3,5,10)")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="SCM seed and first training seed (default 0)")
    ap.add_argument("--val-generator", type=int, default=3, help="SCM validation generator, never tested (3)")
    ap.add_argument("--epochs", type=int, default=None, help="epoch cap (SCM 30; demo: DEFAULT_TRAIN's)")
    demo = ap.add_argument_group("demo benchmark (instead of the SCM)")
    demo.add_argument("--demo-dir", type=Path, help="output folder of `causalclip demo` (protocol one-family)")
    demo.add_argument("--train-family", default="tconv-gan")
    demo.add_argument("--val-family", default="vae", help="held-out validation family, never tested (vae)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel training processes, one torch thread each (2)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("causalclip").setLevel(logging.WARNING)
    values = [int(v) for v in args.values.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise SystemExit("--values: positive integers, e.g. 1,3,5,10")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    env: dict[str, Any] = {
        **machine_info(),
        "started_utc": started,
        "argv": list(sys.argv[1:] if argv is None else argv),
    }
    if args.demo_dir is None:
        spec = SCMSpec(seed=args.seed, dim=256, n_causal=16, n_family=16, n_specific=16, n_generators=6)
        if not 0 < args.val_generator < spec.n_generators:
            raise SystemExit(f"--val-generator must be in 1..{spec.n_generators - 1}")
        sets = write_scm_benchmark(
            out / "data", spec, n_train=2000, n_val=500, n_test=500, heldout_val_generators=[args.val_generator]
        )
        sets = {k: str(v) for k, v in sets.items()}
        gens = [f"gen{k}" for k in range(spec.n_generators)]
        train_gen, val_gen = "gen0", f"gen{args.val_generator}"
        train_over: dict[str, Any] = {"epochs": 30, "lr": 1e-3, "batch_size": 256, "nc_probe_every": 0}
        spec_d: dict[str, Any] | None = dataclasses.asdict(spec)
        dim = spec.dim
        env.update(benchmark="scm", spec=spec_d)
    else:
        train_gen, val_gen = args.train_family, args.val_family
        sets, gens, facts = demo_sets(args.demo_dir, train_gen, val_gen)
        train_over = {k.removeprefix("train."): v for k, v in DEFAULT_TRAIN.items()}
        spec_d, dim = None, facts["dim"]
        env.update(benchmark="demo", **facts)
    if args.epochs is not None:
        train_over["epochs"] = args.epochs
    test_gens = [g for g in gens if g not in (train_gen, val_gen)]
    seeds = [args.seed + i for i in range(args.seeds)]
    jobs, meta = [], []
    for source in SOURCES:
        for value in values:
            for seed in seeds:
                name = f"{source} min_epochs={value}"
                jobs.append(
                    Job(
                        name=name,
                        head="causalclip",
                        seed=seed,
                        run_dir=str(out / "runs" / f"{source}-min{value}" / f"seed{seed}"),
                        sets=sets,
                        train_overrides={**train_over, "min_epochs": value},
                        spec=spec_d,
                        threads=1,  # torch's default (every core) per run oversubscribes a shared machine
                        group="min_epochs",
                        select_on_heldout=source == "heldout",
                    )
                )
                meta.append({"source": source, "min_epochs": value})
    log.info(
        "%d runs (%d values x %d sources x %d seeds), %d at a time", len(jobs), len(values), 2, len(seeds), args.jobs
    )
    rows = run_jobs(jobs, args.jobs)
    full = [complete_row({**row, **m}, job, dim)[0] for job, row, m in zip(jobs, rows, meta, strict=True)]
    df = pd.DataFrame(full)
    failed = df[df["error"].notna()] if "error" in df else df.iloc[:0]
    ok = df.drop(failed.index).copy()
    ok["test_ap"] = ok[[f"test_{g}_ap" for g in test_gens]].mean(axis=1)
    ok.to_csv(out / "runs.csv", index=False)
    agg = aggregate(ok, METRICS)
    agg.to_csv(out / "summary.csv", index_label="setting")

    header = ["selection", "min_epochs", "seeds", "saved epoch", "epochs run", "selection score (AP)"]
    header += ["test AP", "test AP - min_epochs 1 (paired)", "probe Znc", "adv acc"]
    table = []
    base = min(values)
    for source in SOURCES:
        for value in values:
            r = agg.loc[f"{source} min_epochs={value}"]
            score = "heldout_val_ap" if source == "heldout" else "val_ap"
            d, sd, n = paired_difference(ok, source, value, base)
            table.append(
                [
                    source,
                    str(value),
                    str(int(r["seeds"])),
                    _pm(r["best_epoch"], r["best_epoch_std"], 1, ".1f"),
                    _pm(r["epochs_run"], r["epochs_run_std"], 1, ".1f"),
                    _pm(r[score], r[f"{score}_std"]),
                    _pm(r["test_ap"], r["test_ap_std"]),
                    "-" if value == base else _pm(d, sd),
                    _pm(r["diag_nc_probe_acc"], r["diag_nc_probe_acc_std"], 1, ".3f"),
                    _pm(r["diag_adv_acc"], r["diag_adv_acc_std"], 1, ".3f"),
                ]
            )
    elapsed = time.perf_counter() - t0
    finished = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    what = "SCM (quick size)" if args.demo_dir is None else f"demo features ({args.demo_dir})"
    report = [
        f"# min_epochs: {what}",
        "",
        f"Command: `python benchmarks/min_epochs.py {' '.join(env['argv'])}`; {started} - {finished} UTC "
        f"({elapsed / 60:.1f} min); code {env['code_revision']}; {env['cpu']}, {env['cpu_count']} CPUs; "
        f"torch {env['torch']}.",
        f"Train {train_gen}; selection on {train_gen}'s validation split (val) or on {val_gen} (heldout, never "
        f"tested); test AP = mean over {', '.join(test_gens)}. CausalCLIP package defaults; training {train_over}; "
        f"package default min_epochs = {TrainConfig().min_epochs}; seeds {seeds}. Mean ± sample std over seeds; AP "
        "in %; the paired column is the per-seed difference in test AP against the smallest value.",
        "",
        markdown_table(header, table),
    ]
    if len(failed):
        report += ["", "Failed runs:", ""] + [
            f"- {r['name']} seed {r['seed']}: {r['error']}" for _, r in failed.iterrows()
        ]
    (out / "report.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    env.update(wall_s=elapsed, finished_utc=finished, train=train_over, test_generators=test_gens)
    (out / "environment.json").write_text(json.dumps(env, indent=2, default=str) + "\n", encoding="utf-8")
    print(text_table(header, table))
    print(f"\nwrote {out / 'report.md'} ({elapsed / 60:.1f} min)")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
