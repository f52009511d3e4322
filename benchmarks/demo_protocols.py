"""Compare two ``causalclip demo`` runs: the one-family protocol against the leave-one-out protocol.

    python benchmarks/demo_protocols.py ONE_FAMILY_DIR LEAVE_ONE_OUT_DIR [--out FILE.md]

ONE_FAMILY_DIR is the output folder of ``causalclip demo`` (protocol "one-family", the default; a ``demo.json``
written before the protocol existed has no "protocol" key and is one-family), LEAVE_ONE_OUT_DIR that of
``causalclip demo --protocol leave-one-out``. Both need the same heads, seeds and families. Reads each folder's
``results.csv`` (one row per training set, head, seed and test family) and prints one Markdown table, per unseen
test family F and head (AP in %):

- one-family, mean of the others: per seed, the mean AP on F of the heads trained on each other family alone;
  then mean ± sample std (ddof=1) over the seeds;
- one-family, best single other family: the other family whose head, mean AP over the seeds, scored highest on F;
- leave-one-out: the AP on F of the head trained on every family but F, mean ± sample std over the seeds;

and, per head, the mean over F (per seed, then mean ± std over the seeds). The one-family mean over F equals that
run's unseen-family "Avg", because each family is unseen by the same number of single-family heads.
docs/reports/demo-results.md (run E, "Compared with the one-family protocol") reports its output.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from causalclip.demo.run import HEAD_LABELS

COLUMNS = ["train_family", "head", "seed", "test_family", "seen", "ap"]


class ComparisonError(Exception):
    """A folder is missing, of the wrong protocol, or does not match the other."""


def load_run(folder: Path, protocol: str) -> tuple[dict, pd.DataFrame]:
    """``demo.json`` and ``results.csv`` of a demo output folder, after checking its protocol."""
    meta_path, csv_path = folder / "demo.json", folder / "results.csv"
    for path in (meta_path, csv_path):
        if not path.is_file():
            raise ComparisonError(f"{path}: not found (expected the output folder of `causalclip demo`)")
    meta = json.loads(meta_path.read_text())
    # demo.json files written before the leave-one-out protocol existed have no "protocol" key: one-family.
    found = meta.get("protocol") or "one-family"
    if found != protocol:
        raise ComparisonError(f"{meta_path}: protocol {found!r}, expected {protocol!r}")
    results = pd.read_csv(csv_path)
    missing = [c for c in COLUMNS if c not in results.columns]
    if missing:
        raise ComparisonError(f"{csv_path}: missing columns {missing}")
    results["seen"] = results["seen"].astype(str).str.lower() == "true"
    families = list(meta.get("left_out_families") or meta["train_families"])
    expected_sets = {f"all-but-{f}" for f in families} if protocol == "leave-one-out" else set(families)
    if set(results["train_family"]) != expected_sets:
        raise ComparisonError(
            f"{csv_path}: training sets {sorted(set(results['train_family']))} do not match the {protocol} "
            f"protocol's {sorted(expected_sets)}"
        )
    return meta, results


def _mean_std(per_seed: pd.Series) -> tuple[float, float]:
    return float(per_seed.mean()), float(per_seed.std(ddof=1))


def _pm(mean_std: tuple[float, float]) -> str:
    return f"{100 * mean_std[0]:.2f} ± {100 * mean_std[1]:.2f}"


def compare(one_family: Path, leave_one_out: Path) -> str:
    """The comparison table as Markdown."""
    meta_d, d = load_run(one_family, "one-family")
    meta_e, e = load_run(leave_one_out, "leave-one-out")
    families = list(meta_d["train_families"])
    if sorted(meta_e["left_out_families"]) != sorted(families):
        raise ComparisonError(
            f"families differ: {one_family / 'demo.json'} has {families}, "
            f"{leave_one_out / 'demo.json'} has {meta_e['left_out_families']}"
        )
    for key in ("heads", "seeds"):
        if list(meta_d[key]) != list(meta_e[key]):
            raise ComparisonError(f"{key} differ: {meta_d[key]} in {one_family}, {meta_e[key]} in {leave_one_out}")
    heads, seeds = list(meta_d["heads"]), list(meta_d["seeds"])

    # Run D: unseen rows only (test family differs from the training family).
    d_unseen = d[d["train_family"] != d["test_family"]]
    if d_unseen["seen"].any():
        raise ComparisonError(f"{one_family / 'results.csv'}: a row tests on another family but is marked seen")
    # Run E: the family left out, i.e. the training set all-but-F tested on F.
    e_out = e[e["train_family"] == "all-but-" + e["test_family"]]
    if e_out["seen"].any():
        raise ComparisonError(f"{leave_one_out / 'results.csv'}: a left-out family is marked seen")

    header = [
        "left-out / unseen family F",
        "head",
        "run D: trained on one other family, mean of the 3",
        "run D: best single other family",
        "run E: trained on the other 3 together",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---:|---:|"]
    d_by_f: dict[str, list[pd.Series]] = {h: [] for h in heads}
    e_by_f: dict[str, list[pd.Series]] = {h: [] for h in heads}
    for fam in families:
        for head in heads:
            label = HEAD_LABELS.get(head, head)
            dd = d_unseen[(d_unseen["test_family"] == fam) & (d_unseen["head"] == head)]
            ee = e_out[(e_out["test_family"] == fam) & (e_out["head"] == head)]
            if len(dd) != (len(families) - 1) * len(seeds) or len(ee) != len(seeds):
                raise ComparisonError(
                    f"{fam}, {head}: expected {(len(families) - 1) * len(seeds)} one-family rows (one per other "
                    f"family and seed) and {len(seeds)} leave-one-out rows, found {len(dd)} and {len(ee)}"
                )
            d_seed = dd.groupby("seed")["ap"].mean().reindex(seeds)
            e_seed = ee.groupby("seed")["ap"].mean().reindex(seeds)
            d_by_f[head].append(d_seed)
            e_by_f[head].append(e_seed)
            per_train = dd.groupby("train_family")["ap"].mean()
            best = str(per_train.idxmax())
            lines.append(
                f"| {fam} | {label} | {_pm(_mean_std(d_seed))} | {100 * per_train[best]:.2f} ({best}) "
                f"| {_pm(_mean_std(e_seed))} |"
            )
    for head in heads:
        d_mean = pd.concat(d_by_f[head], axis=1).mean(axis=1)
        e_mean = pd.concat(e_by_f[head], axis=1).mean(axis=1)
        lines.append(
            f"| **mean over F** | {HEAD_LABELS.get(head, head)} | {_pm(_mean_std(d_mean))} | "
            f"| {_pm(_mean_std(e_mean))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("one_family", type=Path, help="output folder of `causalclip demo` (protocol one-family)")
    parser.add_argument("leave_one_out", type=Path, help="output folder of `causalclip demo --protocol leave-one-out`")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    try:
        table = compare(args.one_family, args.leave_one_out)
    except ComparisonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
