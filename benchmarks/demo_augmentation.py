"""Does CNNSpot's blur + JPEG augmentation explain why it transfers across the demo's generator families?

    python benchmarks/demo_augmentation.py --baseline DEMO_DIR --out /tmp/demo-aug [--seeds 0 1 2] [--cache DIR]

DEMO_DIR is the output folder of ``causalclip demo --seeds 0 1 2`` (the networks as the demo trains them: CNNSpot
with its recipe's Blur+JPEG(0.5) augmentation, NPR and FreDect, whose recipes have none). The script runs the same
one-family protocol (Python API, the benchmark the demo cached) twice more with networks only: CNNSpot with blur and
JPEG switched off (``recipe.blur_prob=0``, ``recipe.jpeg_prob=0``), and NPR and FreDect with Blur+JPEG(0.5)
switched on. The demo is deterministic on one machine, so the baseline rows are those the same code would
recompute. Prints, per network and setting, the unseen-family and in-distribution AP: mean ± sample std (ddof=1)
over seeds of each seed's mean over training families, as the demo's seeds table. docs/reports/demo-results.md
(run F) reports its output.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from causalclip.demo.run import DEFAULT_NETWORK_TRAIN, HEAD_LABELS, DemoConfig, run_demo

# (setting, networks it is run for, recipe overrides)
SETTINGS = [
    ("blur+JPEG off", ("cnnspot",), {"recipe.blur_prob": 0.0, "recipe.jpeg_prob": 0.0}),
    ("blur+JPEG(0.5) on", ("npr", "fredect"), {"recipe.blur_prob": 0.5, "recipe.jpeg_prob": 0.5}),
]
BASELINE = "as the demo trains it"


def _per_seed(results: pd.DataFrame, seen: bool) -> pd.DataFrame:
    rows = results[results["seen"].astype(bool) == seen]
    return rows.groupby(["head", "seed"])["ap"].mean().reset_index()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="folder for the demo outputs (one per setting)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--cache", help="benchmark cache (default: the demo's)")
    p.add_argument("--preset", default="full", choices=["full", "tiny"], help="tiny: a smoke test of the script")
    p.add_argument("--baseline", required=True, type=Path, help="output folder of `causalclip demo --seeds 0 1 2`")
    args = p.parse_args(argv)
    runs = [(BASELINE, pd.read_csv(args.baseline / "results.csv"))]
    for name, networks, change in SETTINGS:
        cfg = dataclasses.replace(
            DemoConfig.preset(args.preset),
            heads=(),
            networks=networks,
            network_overrides=tuple({**DEFAULT_NETWORK_TRAIN, **change}.items()),
            seeds=tuple(args.seeds),
            plots=False,
        )
        out = args.out / name.replace(" ", "-").replace("(", "").replace(")", "").replace("+", "")
        runs.append((name, run_demo(out, cfg, cache=args.cache, overwrite=True).results))
    rows = []
    for name, results in runs:
        results = results[results["seed"].isin(args.seeds) & results["head"].isin(["npr", "cnnspot", "fredect"])]
        unseen, seen = _per_seed(results, False), _per_seed(results, True)
        for head in dict.fromkeys(results["head"]):
            u, s = unseen[unseen["head"] == head]["ap"], seen[seen["head"] == head]["ap"]
            rows.append((HEAD_LABELS.get(head, head), name, u.mean(), u.std(ddof=1), s.mean(), s.std(ddof=1)))
    order = [BASELINE, *(n for n, _, _ in SETTINGS)]
    print(f"Seeds {args.seeds}; mean ± sample std over seeds of each seed's mean over the training families.\n")
    print("| Method | blur + JPEG | unseen AP | in-distribution AP |")
    print("|:---|:---|---:|---:|")
    for label, name, um, us, sm, ss in sorted(rows, key=lambda r: (r[0], order.index(r[1]))):
        print(f"| {label} | {name} | {100 * um:.2f} ± {100 * us:.2f} | {100 * sm:.2f} ± {100 * ss:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
