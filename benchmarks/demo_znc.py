"""Can any CausalCLIP setting empty Znc of the label on the demo's forensic features? A short probe of the options.

    python benchmarks/demo_znc.py --out runs/demo-znc --demo-dir runs/demo [--seeds 2]
    python benchmarks/demo_znc.py --out runs/demo-znc --demo-dir runs/demo --setting alpha=10,lambda2=10

At the package defaults, a fresh logistic probe on the held-out non-causal part Znc = (1 - M) * E of the demo
features reads the label at about 0.98 while the adversary sits at chance (docs/reports/sensitivity.md). This trains
CausalCLIP on ``--train-family`` (the demo's one-family sets and training settings, as benchmarks/sensitivity.py
--demo-dir) with each setting of SETTINGS (or ``--setting``, repeatable: CausalCLIPConfig overrides) and reports,
mean and sample std over seeds: the fresh probe's and the adversary's accuracy on Znc, the probe on Zc, the fraction
of dimensions the mask keeps, nHSIC, and the test AP over the families other than the training and validation ones.
Outputs in --out: runs.csv, report.md (command, UTC date, code revision, machine).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from causalclip.demo.run import DEFAULT_TRAIN

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scm_benchmark import Job, aggregate, machine_info, markdown_table, parse_variant, run_jobs  # noqa: E402
from sensitivity import complete_row, demo_sets  # noqa: E402

# Fixed before any run: the defaults, then the levers that could push the label out of Znc (a stronger or bigger
# adversary, a heavier independence term, both, the paper's unbounded adversary, a mask that starts closed).
SETTINGS: list[str] = [
    "",
    "alpha=10",
    "alpha=50",
    "lambda2=10",
    "lambda2=100",
    "adversary_hidden=1024",
    "alpha=10,lambda2=10",
    "alpha=10,adversary_hidden=1024,lambda2=10",
    "adv_loss=paper,alpha=2",
    "mask_bias_init=-3",
]
METRICS = ["diag_nc_probe_acc", "diag_adv_acc", "diag_c_probe_acc", "dims_kept", "diag_nhsic", "test_ap", "val_ap"]
METRICS += ["heldout_val_ap", "best_epoch"]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--demo-dir", required=True, type=Path, help="output folder of `causalclip demo`")
    ap.add_argument("--train-family", default="tconv-gan")
    ap.add_argument("--val-family", default="vae", help="selection family, never tested (vae)")
    ap.add_argument("--setting", action="append", help="K=V[,K=V...] CausalCLIPConfig overrides (default SETTINGS)")
    ap.add_argument("--seeds", type=int, default=2, help="training seeds (default 2)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("causalclip").setLevel(logging.WARNING)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    env = machine_info()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    sets, gens, facts = demo_sets(args.demo_dir, args.train_family, args.val_family)
    test_gens = [g for g in gens if g not in (args.train_family, args.val_family)]
    train_over = {k.removeprefix("train."): v for k, v in DEFAULT_TRAIN.items()}
    train_over["nc_probe_every"] = 0  # the probe that matters is the saved model's (summary.json)
    jobs = []
    for text in args.setting or SETTINGS:
        over: dict[str, Any] = parse_variant(text) if text else {}
        name = text or "defaults"
        for seed in range(args.seeds):
            slug = name.replace("=", "").replace(",", "_")
            jobs.append(
                Job(
                    name=name,
                    head="causalclip",
                    seed=seed,
                    run_dir=str(out / "runs" / slug / f"seed{seed}"),
                    sets=sets,
                    train_overrides=train_over,
                    head_overrides=over,
                    threads=1,
                    group="znc",
                )
            )
    rows = run_jobs(jobs, args.jobs)
    full = [complete_row(row, job, facts["dim"])[0] for job, row in zip(jobs, rows, strict=True)]
    df = pd.DataFrame(full)
    failed = df[df["error"].notna()] if "error" in df else df.iloc[:0]
    ok = df.drop(failed.index).copy()
    ok["test_ap"] = ok[[f"test_{g}_ap" for g in test_gens]].mean(axis=1)
    ok.to_csv(out / "runs.csv", index=False)
    agg = aggregate(ok, METRICS)

    def pm(r: pd.Series, key: str, scale: float = 1.0, fmt: str = ".3f") -> str:
        sd = r[f"{key}_std"]
        return f"{scale * r[key]:{fmt}}" + ("" if pd.isna(sd) else f" ± {scale * sd:{fmt}}")

    header = ["setting", "seeds", "probe Znc", "adv acc", "probe Zc", "dims kept", "nHSIC", "test AP", "val AP"]
    table = [
        [
            name,
            str(int(r["seeds"])),
            pm(r, "diag_nc_probe_acc"),
            pm(r, "diag_adv_acc"),
            pm(r, "diag_c_probe_acc"),
            pm(r, "dims_kept"),
            pm(r, "diag_nhsic", fmt=".4f"),
            pm(r, "test_ap", 100, ".2f"),
            pm(r, "val_ap", 100, ".2f"),
        ]
        for name, r in agg.iterrows()
    ]
    finished = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    report = [
        "# Emptying Znc on the demo features",
        "",
        f"Command: `python benchmarks/demo_znc.py {' '.join(sys.argv[1:] if argv is None else argv)}`; {started} - "
        f"{finished} UTC ({(time.perf_counter() - t0) / 60:.1f} min); code {env['code_revision']}; {env['cpu']}, "
        f"{env['cpu_count']} CPUs; demo features made at {facts['demo'].get('code_revision')}.",
        f"Train {args.train_family}; early stopping on its validation split; test AP = mean over "
        f"{', '.join(test_gens)}; probes and adversary on the saved model's held-out validation features.",
        "",
        markdown_table(header, table),
    ]
    if len(failed):
        report += ["", "Failed runs:", ""] + [
            f"- {r['name']} seed {r['seed']}: {r['error']}" for _, r in failed.iterrows()
        ]
    (out / "report.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    print("\n".join(report))
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
