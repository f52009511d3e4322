"""Sensitivity of CausalCLIP to lambda1, lambda2, alpha, beta, p and tau on the SCM and the demo benchmark.

    python benchmarks/sensitivity.py --out runs/sensitivity            # 18 settings x 3 seeds, ~15-25 min on 2 cores
    python benchmarks/sensitivity.py --out runs/sensitivity --replot   # tables and figure again from runs.csv
    python benchmarks/sensitivity.py --out runs/sensitivity-demo --demo-dir runs/demo   # the demo benchmark

One-at-a-time sweeps around the package defaults (``CausalCLIPConfig()``): each parameter takes the values of
SWEEPS while every other key keeps its default; the all-defaults setting is run once per seed and shared by the six
sweeps. The data is the SCM of ``benchmarks/scm_benchmark.py`` (``--quick`` size by default), written and trained
with that script's ``write_scm_benchmark`` / ``run_job``: train on generator 0, early stopping on generator 0's
validation split. One other generator (``--val-generator``, default 3) is the *validation generator*: its
validation split is scored for every run, it is what a user may select on, and it is never a test generator. The
held-out *test* AP is the mean over the remaining generators.

Demo mode (``--demo-dir``, the folder of a ``causalclip demo`` run, protocol one-family): the same sweeps on the
demo's per-family feature sets ``features/<family>/{train,val,test}``. CausalCLIP is trained with the demo's own
training settings (``causalclip.demo.run.DEFAULT_TRAIN``) on ``--train-family``'s train split, early stopping on its
val split; ``--val-family``'s test split is the selection signal (never tested); the test AP is the mean over the
test splits of the remaining families. The demo has no known causal dimensions, so there is no mask-recovery AUC;
the mean mask is reported per feature block of the demo's backbone instead (e.g. spectrum / NPR).

Per setting (mean and sample std over seeds): gen0 validation AP, validation-generator AP, test AP, the fraction of
dimensions the mask keeps, nHSIC and HSIC(Zc, Znc), the adversary's and a fresh logistic probe's accuracy on Znc,
the causal-vs-spurious mask AUC (scm_benchmark.mask_recovery), each term's share of the summed per-term gradient
norms on the mask at the saved epoch (metrics.csv), and how far the mask moved from the defaults' relative to the
seed-to-seed distance. Outputs in --out: runs.csv (every run), summary.csv and report.md (aggregates),
sensitivity.png (one panel per parameter), masks.npz (mean mask per dimension of every run), environment.json.
docs/reports/sensitivity.md reports a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from causalclip import evaluate, load_head, open_feature_set
from causalclip.core.revision import code_revision
from causalclip.demo.run import DEFAULT_TRAIN
from causalclip.features.synthetic import SCMSpec, write_scm_benchmark
from causalclip.heads.causalclip import CausalCLIPConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scm_benchmark import (  # noqa: E402
    Job,
    add_summary_columns,
    aggregate,
    machine_info,
    markdown_table,
    run_jobs,
    text_table,
)

log = logging.getLogger("sensitivity")

# The swept values (fixed before any run of this script); each list contains the package default.
SWEEPS: dict[str, list[float]] = {
    "lambda1": [0.0, 1e-3, 1e-2, 1e-1, 1.0],
    "lambda2": [0.0, 0.1, 1.0, 10.0],
    "alpha": [0.0, 0.1, 0.5, 2.0],
    "beta": [0.0, 0.1, 1.0, 10.0],
    "p": [0.03, 0.1, 0.3],
    "tau": [0.3, 1.0, 3.0],
}
TERMS = ("cls", "adv", "inv", "l1", "indep")  # the weighted terms of L_total (CausalCLIPHead.mask_terms)
TERM_OF = {"lambda1": "l1", "lambda2": "indep", "alpha": "adv", "beta": "inv"}  # whose weight a parameter is
DEFAULTS_NAME = "defaults"
# Columns aggregated over seeds (those absent from the runs are skipped).
METRICS = [
    "val_ap",
    "heldout_val_ap",
    "test_ap",
    "id_ap",
    "dims_kept",
    "diag_mask_mean",
    "diag_mask_frac_above_half",
    "diag_nhsic",
    "diag_hsic",
    "diag_adv_acc",
    "diag_nc_probe_acc",
    "diag_c_probe_acc",
    "mask_auc_causal_vs_spurious",
    "mask_auc_causal_vs_rest",
    "mask_causal",
    "mask_family",
    "mask_own_specific",
    "mask_other_specific",
    "mask_nuisance",
    *[f"share_{t}" for t in TERMS],
    *[f"grad_{t}" for t in TERMS],
    "best_epoch",
    "epochs_run",
    "seconds",
]


def default_values() -> dict[str, float]:
    d = dataclasses.asdict(CausalCLIPConfig())
    return {k: float(d[k]) for k in SWEEPS}


def settings(params: Sequence[str]) -> list[tuple[str, str | None, float | None, dict[str, float]]]:
    """(name, parameter, value, head overrides): the defaults first, then every non-default value of each sweep."""
    defaults = default_values()
    out: list[tuple[str, str | None, float | None, dict[str, float]]] = [(DEFAULTS_NAME, None, None, {})]
    for param in params:
        if not any(math.isclose(v, defaults[param]) for v in SWEEPS[param]):
            raise SystemExit(f"SWEEPS[{param!r}] lacks the default {defaults[param]}")
        for v in SWEEPS[param]:
            if not math.isclose(v, defaults[param]):
                out.append((f"{param}={v:g}", param, v, {param: v}))
    return out


# ---------------------------------------------------------------------------------------------------------
# per-run measurements added to scm_benchmark.run_job's row


def mean_mask(run_dir: Path, val_dir: str) -> np.ndarray:
    """The mean inference mask per dimension on the validation features (as scm_benchmark.mask_recovery)."""
    head = load_head(run_dir).head
    fs = open_feature_set(val_dir)
    e = torch.from_numpy(fs.take(np.arange(len(fs))).astype(np.float32))
    with torch.no_grad():
        return head.mask(e, stochastic=False).mean(0).numpy()


def saved_epoch_terms(run_dir: Path, best_epoch: int) -> dict[str, float]:
    """Per-term gradient norms on the mask, nHSIC and the mask statistics of the saved epoch's metrics.csv row,
    and each term's share of the summed norms (a term the config does not have, e.g. inv at beta=0, counts 0)."""
    metrics = pd.read_csv(run_dir / "metrics.csv")
    row = metrics[metrics["epoch"] == best_epoch].iloc[0]
    grads = {t: float(row[f"grad_{t}"]) if f"grad_{t}" in row and np.isfinite(row[f"grad_{t}"]) else 0.0 for t in TERMS}
    total = sum(grads.values())
    out = {f"grad_{t}": g for t, g in grads.items()}
    out.update({f"share_{t}": g / total if total > 0 else float("nan") for t, g in grads.items()})
    for key in ("nhsic", "hsic", "mask_mean", "mask_frac_above_half", "mask_dims_selected", "adv_acc"):
        if key in row:
            out[f"epoch_{key}"] = float(row[key])
    return out


def complete_row(
    row: dict[str, Any], job: Job, dim: int, blocks: dict[str, list[int]] | None = None
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Add the diagnostics run_job does not copy (summary.json), the saved epoch's gradient shares, dims kept; the
    AP/ACC on the extra test sets ``job.sets["test:<name>"]`` (demo: one set per test family, which run_job does not
    evaluate) and the mean mask per feature block (``blocks``: name -> [start, stop))."""
    if "error" in row:
        return row, None
    run_dir = Path(job.run_dir)
    diag = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("diagnostics", {})
    for key, value in diag.items():
        if isinstance(value, int | float):
            row[f"diag_{key}"] = value
    row.update(saved_epoch_terms(run_dir, int(row["best_epoch"])))
    row["dims_kept"] = row["diag_mask_dims_selected"] / dim
    extra = {k.removeprefix("test:"): v for k, v in job.sets.items() if k.startswith("test:")}
    if extra:
        metrics = evaluate(run_dir, list(extra.values()), out=run_dir / "eval_tests").metrics
        for _, r in metrics[metrics["generator"] != "mean"].iterrows():
            row[f"test_{r['generator']}_ap"] = float(r["ap"])
            row[f"test_{r['generator']}_acc"] = float(r["acc"])
    mask = mean_mask(run_dir, job.sets["val"])
    for name, (a, b) in (blocks or {}).items():
        row[f"mask_block_{name}"] = float(mask[a:b].mean())
    return row, mask


# ---------------------------------------------------------------------------------------------------------
# the demo benchmark


def demo_sets(demo_dir: Path, train: str, val: str) -> tuple[dict[str, str], list[str], dict[str, Any]]:
    """The feature sets of one-family runs on a ``causalclip demo`` output folder: train / val / test of the training
    family, ``val_heldout`` = the validation family's test split (selection only), ``test:<family>`` = the test
    split of each remaining family. Returns (sets, families, facts: dim, feature blocks, the demo's provenance)."""
    record = demo_dir / "demo.json"
    if not record.is_file():
        raise SystemExit(f"--demo-dir {demo_dir}: no demo.json (not the output folder of `causalclip demo`)")
    demo = json.loads(record.read_text(encoding="utf-8"))
    families = list(demo["build"]["families"])
    for opt, fam in (("--train-family", train), ("--val-family", val)):
        if fam not in families:
            raise SystemExit(f"{opt} {fam!r}: not a family of this demo ({families})")
    if train == val:
        raise SystemExit("--val-family must differ from --train-family")

    def path(fam: str, split: str) -> str:
        p = demo_dir / "features" / fam / split
        if not (p / "meta.json").is_file():
            raise SystemExit(f"{p}: no feature set (the demo writes features/<family>/<split>)")
        return str(p)

    sets = {"train": path(train, "train"), "val": path(train, "val"), "test": path(train, "test")}
    sets["val_heldout"] = path(val, "test")
    sets.update({f"test:{f}": path(f, "test") for f in families if f not in (train, val)})
    fs = open_feature_set(sets["train"])
    blocks, start = {}, 0
    for part in (fs.meta.get("backbone") or {}).get("parts", []):
        blocks[str(part["name"])] = [start, start + int(part["dim"])]
        start += int(part["dim"])
    if start != fs.dim:
        blocks = {}
    facts = {
        "dim": fs.dim,
        "blocks": blocks,
        "demo": {
            "dir": str(demo_dir.resolve()),
            "benchmark": demo.get("benchmark"),
            "backbone": demo.get("backbone"),
            "code_revision": demo.get("code_revision"),
            "seeds": demo.get("seeds"),
            "n": {k: len(open_feature_set(v)) for k, v in sets.items()},
        },
    }
    return sets, families, facts


# ---------------------------------------------------------------------------------------------------------
# aggregation


def mask_distances(masks: dict[tuple[str, int], np.ndarray], names: Sequence[str]) -> pd.DataFrame:
    """Mean |M_a - M_b| per dimension between the mean masks of two runs: to the defaults (every pair of different
    seeds) and within the setting (pairs of different seeds); ratio = the first over the defaults' own
    seed-to-seed distance. A ratio near 1: the setting moves the mask no more than a change of seed does."""

    def dist(a: str, b: str) -> float:
        seeds_a = [s for n, s in masks if n == a]
        seeds_b = [s for n, s in masks if n == b]
        d = [np.abs(masks[a, s] - masks[b, t]).mean() for s in seeds_a for t in seeds_b if s != t]
        return float(np.mean(d)) if d else float("nan")

    base = dist(DEFAULTS_NAME, DEFAULTS_NAME)
    rows = []
    for name in names:
        to_def = dist(name, DEFAULTS_NAME)
        rows.append(
            {
                "name": name,
                "mask_dist_to_defaults": to_def,
                "mask_dist_seeds": dist(name, name),
                "mask_ratio": to_def / base,
            }
        )
    return pd.DataFrame(rows).set_index("name")


def beyond_spread(df: pd.DataFrame, name: str, column: str) -> str:
    """'+' when every seed of ``name`` lies above every seed of the defaults on ``column``, '-' when below, '' else.
    With 3 seeds each, disjoint ranges arise by chance with probability 2 / C(6, 3) = 0.1 when the setting has no
    effect (exchangeable seeds)."""
    a = df.loc[df["name"] == name, column].dropna().to_numpy()
    b = df.loc[df["name"] == DEFAULTS_NAME, column].dropna().to_numpy()
    if len(a) < 2 or len(b) < 2:
        return ""
    if a.min() > b.max():
        return "+"
    if a.max() < b.min():
        return "-"
    return ""


def paired_wins(df: pd.DataFrame, name: str, column: str) -> str:
    """'k/n': in k of the n seeds that both ran, ``name`` scored higher on ``column`` than the defaults with the
    same training seed (same initialisation and batch order up to the changed parameter)."""
    a = df[df["name"] == name].set_index("seed")[column]
    b = df[df["name"] == DEFAULTS_NAME].set_index("seed")[column]
    both = a.index.intersection(b.index)
    return f"{int((a[both] > b[both]).sum())}/{len(both)}"


def build_summary(ok: pd.DataFrame, masks: dict[tuple[str, int], np.ndarray], names: Sequence[str]) -> pd.DataFrame:
    agg = aggregate(ok, METRICS + [c for c in ok.columns if c.startswith("mask_block_")])
    meta = ok.groupby("name", sort=False)[["param", "value"]].first()
    agg.insert(0, "param", meta["param"])
    agg.insert(1, "value", meta["value"])
    agg = agg.join(mask_distances(masks, [n for n in names if n in agg.index]))
    for col in ("test_ap", "heldout_val_ap", "val_ap"):
        agg[f"d_{col}"] = agg[col] - agg.loc[DEFAULTS_NAME, col]
    flags = ["test_ap", "heldout_val_ap", "val_ap", "dims_kept", "diag_nhsic", "diag_nc_probe_acc", "diag_adv_acc"]
    flags += ["mask_auc_causal_vs_spurious"]
    for col in [c for c in flags if c in ok.columns]:
        agg[f"sig_{col}"] = [beyond_spread(ok, n, col) if n != DEFAULTS_NAME else "" for n in agg.index]
    for col in ("test_ap", "heldout_val_ap"):
        agg[f"wins_{col}"] = [paired_wins(ok, n, col) if n != DEFAULTS_NAME else "" for n in agg.index]
    return agg


# ---------------------------------------------------------------------------------------------------------
# tables and figure


def _pm(mean: float, std: float, scale: float = 1.0, fmt: str = ".2f") -> str:
    if not np.isfinite(mean):
        return "-"
    s = format(scale * mean, fmt)
    return s if not np.isfinite(std) else f"{s} ± {format(scale * std, fmt)}"


def _flag(r: pd.Series, col: str) -> str:
    f = r.get(f"sig_{col}", "")
    return {"+": " ↑", "-": " ↓"}.get(f if isinstance(f, str) else "", "")


def tables(agg: pd.DataFrame, val_label: str, train_gen: str = "gen0") -> dict[str, tuple[list[str], list[list[str]]]]:
    """The main, gradient and selection tables; ``val_label`` names the selection score (e.g. "gen3 val AP")."""
    has_auc = "mask_auc_causal_vs_spurious" in agg.columns  # SCM only: the demo has no known causal dims
    main_h = ["setting", f"{train_gen} val AP", f"{val_label} (select)", "test AP", "dims kept", "nHSIC", "HSIC"]
    main_h += ["adv acc Znc", "probe Znc"] + (["AUC causal/spur."] if has_auc else [])
    main_r = []
    for name, r in agg.iterrows():
        auc = (
            [
                _pm(r["mask_auc_causal_vs_spurious"], r["mask_auc_causal_vs_spurious_std"], 1, ".3f")
                + _flag(r, "mask_auc_causal_vs_spurious")
            ]
            if has_auc
            else []
        )
        main_r.append(
            [
                name,
                _pm(r["val_ap"], r["val_ap_std"], 100) + _flag(r, "val_ap"),
                _pm(r["heldout_val_ap"], r["heldout_val_ap_std"], 100) + _flag(r, "heldout_val_ap"),
                _pm(r["test_ap"], r["test_ap_std"], 100) + _flag(r, "test_ap"),
                _pm(r["dims_kept"], r["dims_kept_std"], 1, ".3f") + _flag(r, "dims_kept"),
                _pm(r["diag_nhsic"], r["diag_nhsic_std"], 1, ".3f") + _flag(r, "diag_nhsic"),
                _pm(r["diag_hsic"], np.nan, 1, ".4f"),
                _pm(r["diag_adv_acc"], r["diag_adv_acc_std"], 1, ".3f") + _flag(r, "diag_adv_acc"),
                _pm(r["diag_nc_probe_acc"], r["diag_nc_probe_acc_std"], 1, ".3f") + _flag(r, "diag_nc_probe_acc"),
                *auc,
            ]
        )
    block_cols = [c for c in agg.columns if c.startswith("mask_block_") and not c.endswith("_std")]
    if block_cols:  # the demo: mean mask per feature block of the backbone
        block_label = "M " + "/".join(c.removeprefix("mask_block_") for c in block_cols)
    else:  # the SCM's blocks
        block_cols = ["mask_causal", "mask_family", "mask_own_specific", "mask_other_specific", "mask_nuisance"]
        block_label = "M causal/family/own/other/nuis."
    grad_h = [
        "setting",
        *[f"share {t}" for t in TERMS],
        "norm grad cls",
        block_label,
        "mask dist ratio",
    ]
    grad_h += ["best epoch"]
    grad_r = []
    for name, r in agg.iterrows():
        blocks = "/".join(_pm(r.get(k, np.nan), np.nan, 1, ".2f") for k in block_cols)
        grad_r.append(
            [
                name,
                *[_pm(r[f"share_{t}"], r[f"share_{t}_std"], 1, ".3f") for t in TERMS],
                _pm(r["grad_cls"], np.nan, 1, ".3g"),
                blocks,
                _pm(r["mask_ratio"], np.nan, 1, ".2f"),
                _pm(r["best_epoch"], r["best_epoch_std"], 1, ".1f"),
            ]
        )
    sel_h = ["parameter", "default", f"best on {val_label}", f"{val_label}: best / default", "beyond spread"]
    sel_h += ["seeds better", "test: AP best / default", "test beyond spread", "test seeds better"]
    sel_r = []
    for param in SWEEPS:
        sub = agg[(agg["param"] == param) | (agg.index == DEFAULTS_NAME)]
        if len(sub) < 2:
            continue
        best = sub["heldout_val_ap"].idxmax()
        d = agg.loc[DEFAULTS_NAME]
        b = agg.loc[best]
        sel_r.append(
            [
                param,
                f"{default_values()[param]:g}",
                "default" if best == DEFAULTS_NAME else best,
                f"{_pm(b['heldout_val_ap'], np.nan, 100)} / {_pm(d['heldout_val_ap'], np.nan, 100)}",
                {"+": "yes", "-": "yes (worse)"}.get(b.get("sig_heldout_val_ap", ""), "no")
                if best != DEFAULTS_NAME
                else "-",
                b.get("wins_heldout_val_ap", "") or "-",
                f"{_pm(b['test_ap'], np.nan, 100)} / {_pm(d['test_ap'], np.nan, 100)}",
                {"+": "better", "-": "worse"}.get(b.get("sig_test_ap", ""), "no") if best != DEFAULTS_NAME else "-",
                b.get("wins_test_ap", "") or "-",
            ]
        )
    return {"main": (main_h, main_r), "grad": (grad_h, grad_r), "select": (sel_h, sel_r)}


def plot(agg: pd.DataFrame, path: Path, val_label: str, test_gens: Sequence[str], dpi: int) -> Path:
    """One panel per parameter: test AP and validation-generator AP (mean ± std over seeds) against the value, and
    the fresh probe's accuracy on Znc on a twin axis. Zero is drawn on a symlog axis (linear below the smallest
    positive value)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    defaults = default_values()
    params = [p for p in SWEEPS if (agg["param"] == p).any()]
    ncols = min(3, len(params))
    nrows = math.ceil(len(params) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(params) :]:
        ax.set_visible(False)
    handles = []
    lo = 100 * min((agg[c] - agg[f"{c}_std"].fillna(0)).min() for c in ("test_ap", "heldout_val_ap"))
    hi = 100 * max((agg[c] + agg[f"{c}_std"].fillna(0)).max() for c in ("test_ap", "heldout_val_ap"))
    for ax, param in zip(axes, params, strict=False):
        sub = agg[(agg["param"] == param) | (agg.index == DEFAULTS_NAME)].copy()
        sub.loc[DEFAULTS_NAME, "value"] = defaults[param]
        sub = sub.sort_values("value")
        x = sub["value"].to_numpy(float)
        h1 = ax.errorbar(
            x, 100 * sub["test_ap"], yerr=100 * sub["test_ap_std"], marker="o", capsize=3, color="C0", label="test AP"
        )
        h2 = ax.errorbar(
            x,
            100 * sub["heldout_val_ap"],
            yerr=100 * sub["heldout_val_ap_std"],
            marker="s",
            capsize=3,
            ls="--",
            color="C2",
            label=f"{val_label} (selection)",
        )
        ax.axvline(defaults[param], color="0.6", lw=0.8, ls=":")
        ax.set_ylabel("AP (%)")
        ax2 = ax.twinx()
        h3 = ax2.errorbar(
            x,
            sub["diag_nc_probe_acc"],
            yerr=sub["diag_nc_probe_acc_std"],
            marker="^",
            capsize=3,
            ls="-.",
            color="C3",
            label="fresh probe acc on Znc",
        )
        ax2.set_ylim(0.45, 1.02)
        ax2.set_ylabel("probe acc on Znc", color="C3")
        ax2.tick_params(axis="y", colors="C3")
        pos = x[x > 0]
        if (x <= 0).any():
            ax.set_xscale("symlog", linthresh=pos.min(), linscale=0.5)
            ax.set_xlim(-0.15 * pos.min(), 1.4 * x.max())
        else:
            ax.set_xscale("log")
            ax.set_xlim(x.min() / 1.4, 1.4 * x.max())
        ax.set_ylim(lo - 0.3, hi + 0.3)  # the same AP range in every panel
        ax.set_xticks(x)
        ax.set_xticklabels([f"{v:g}" for v in x])
        ax.minorticks_off()
        ax.set_title(f"{param} (default {defaults[param]:g})")
        handles = [h1, h2, h3]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=3,
        frameon=False,
        title=f"test = mean over {', '.join(test_gens)}",
    )
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    return path


# ---------------------------------------------------------------------------------------------------------
# main


def source_digest() -> str:
    """sha256 of every src/causalclip/**/*.py as it is on disk: tells whether the code changed during the study
    (code_revision only says '-dirty')."""
    src = Path(__file__).resolve().parents[1] / "src" / "causalclip"
    h = hashlib.sha256()
    for f in sorted(src.rglob("*.py")):
        h.update(str(f.relative_to(src)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--params", default=",".join(SWEEPS), help=f"parameters to sweep (default: {','.join(SWEEPS)})")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per setting (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="SCM seed and first training seed (default 0)")
    ap.add_argument(
        "--val-generator", type=int, default=3, help="validation generator: scored for selection, never a test (3)"
    )
    size = ap.add_argument_group("SCM and training (defaults: scm_benchmark.py --quick)")
    size.add_argument("--dim", type=int, default=256)
    size.add_argument("--block", type=int, default=16, help="dims per causal / family / specific block (16)")
    size.add_argument("--n-generators", type=int, default=6)
    size.add_argument("--n-train", type=int, default=2000, help="per class (2000)")
    size.add_argument("--n-val", type=int, default=500, help="per class, gen0 and the validation generator (500)")
    size.add_argument("--n-test", type=int, default=500, help="per class and generator (500)")
    size.add_argument(
        "--epochs", type=int, default=None, help="epoch cap (30, as scm_benchmark.py --quick; demo: DEFAULT_TRAIN's)"
    )
    size.add_argument("--lr", type=float, default=None, help="(1e-3; demo: DEFAULT_TRAIN's)")
    size.add_argument("--batch-size", type=int, default=None, help="(256; demo: DEFAULT_TRAIN's)")
    demo = ap.add_argument_group("demo benchmark (instead of the SCM)")
    demo.add_argument(
        "--demo-dir", type=Path, default=None, help="output folder of `causalclip demo`: sweep on its family sets"
    )
    demo.add_argument("--train-family", default="tconv-gan", help="family trained on (tconv-gan)")
    demo.add_argument(
        "--val-family", default="vae", help="validation family: its test split selects, never a test (vae)"
    )
    ap.add_argument("--jobs", type=int, default=2, help="parallel training processes, one torch thread each (2)")
    ap.add_argument("--dpi", type=int, default=100, help="figure resolution (100)")
    ap.add_argument("--replot", action="store_true", help="rebuild tables and figure from --out's runs.csv")
    return ap.parse_args(argv)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """run_job's train overrides (keys without "train."): the SCM's --quick settings, or the demo's DEFAULT_TRAIN;
    --epochs / --lr / --batch-size replace them when given."""
    if args.demo_dir is None:
        over: dict[str, Any] = {"epochs": 30, "lr": 1e-3, "batch_size": 256, "nc_probe_every": 0}
    else:
        over = {k.removeprefix("train."): v for k, v in DEFAULT_TRAIN.items()}
    for key in ("epochs", "lr", "batch_size"):
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    return over


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("causalclip").setLevel(logging.WARNING)
    params = [p.strip() for p in args.params.split(",") if p.strip()]
    unknown = sorted(set(params) - set(SWEEPS))
    if unknown:
        raise SystemExit(f"--params: unknown {unknown}; choose from {list(SWEEPS)}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    env_path = out / "environment.json"

    if args.replot:
        env = json.loads(env_path.read_text(encoding="utf-8"))
        df = pd.read_csv(out / "runs.csv")
        with np.load(out / "masks.npz") as z:
            masks = {(k.rsplit("|", 1)[0], int(k.rsplit("|", 1)[1])): z[k] for k in z.files}
        # the run's benchmark and generators, whatever this call's options say
        kind = env.get("benchmark", "scm")
        if kind == "scm":
            spec = SCMSpec(**env["spec"])
            gens = [f"gen{k}" for k in range(spec.n_generators)]
            train_gen = "gen0"
        else:
            gens, train_gen = env["generators"], env["train_generator"]
        val_gen, test_gens = env["val_generator"], env["test_generators"]
    else:
        t_start = time.perf_counter()
        kind = "scm" if args.demo_dir is None else "demo"
        env = {
            **machine_info(),
            "started_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "source_digest_start": source_digest(),
            "argv": list(sys.argv[1:] if argv is None else argv),
            "benchmark": kind,
            "defaults": dataclasses.asdict(CausalCLIPConfig()),
        }
        log.info("code %s (src digest %s); %s", env["code_revision"], env["source_digest_start"], env["cpu"])
        blocks: dict[str, list[int]] = {}
        if kind == "scm":
            spec = SCMSpec(
                seed=args.seed,
                dim=args.dim,
                n_causal=args.block,
                n_family=args.block,
                n_specific=args.block,
                n_generators=args.n_generators,
            )
            spec.validate()
            if not 0 < args.val_generator < spec.n_generators:
                raise SystemExit(f"--val-generator must be in 1..{spec.n_generators - 1}")
            gens = [f"gen{k}" for k in range(spec.n_generators)]
            train_gen, val_gen = "gen0", f"gen{args.val_generator}"
            test_gens = [g for g in gens if g not in (train_gen, val_gen)]
            sets = write_scm_benchmark(
                out / "data",
                spec,
                n_train=args.n_train,
                n_val=args.n_val,
                n_test=args.n_test,
                heldout_val_generators=[args.val_generator],
            )
            sets = {k: str(v) for k, v in sets.items()}
            spec_d: dict[str, Any] | None = dataclasses.asdict(spec)
            dim = spec.dim
            env["spec"] = spec_d
        else:
            train_gen, val_gen = args.train_family, args.val_family
            sets, gens, facts = demo_sets(args.demo_dir, train_gen, val_gen)
            test_gens = [g for g in gens if g not in (train_gen, val_gen)]
            spec_d, dim, blocks = None, facts["dim"], facts["blocks"]
            env.update(facts)
        train_over = train_overrides(args)
        seeds = [args.seed + i for i in range(args.seeds)]
        jobs, meta = [], []
        for name, param, value, over in settings(params):
            for seed in seeds:
                slug = name.replace("=", "_")
                jobs.append(
                    Job(
                        name=name,
                        head="causalclip",
                        seed=seed,
                        run_dir=str(out / "runs" / slug / f"seed{seed}"),
                        sets=sets,
                        train_overrides=train_over,
                        head_overrides=over,
                        spec=spec_d,
                        threads=1 if args.jobs > 1 else 0,
                        group="sensitivity",
                    )
                )
                meta.append({"param": param, "value": value})
        log.info(
            "%d settings x %d seeds = %d runs, %d at a time", len(jobs) // len(seeds), len(seeds), len(jobs), args.jobs
        )
        rows = run_jobs(jobs, args.jobs)
        masks = {}
        full = []
        for job, row, m in zip(jobs, rows, meta, strict=True):
            row, mask = complete_row({**row, **m}, job, dim, blocks)
            full.append(row)
            if mask is not None:
                masks[job.name, job.seed] = mask
        df = pd.DataFrame(full)
        if "error" in df:
            df["error"] = df["error"].fillna("")
        else:
            df["error"] = ""
        ok_rows = df["error"] == ""
        df.loc[ok_rows, "test_ap"] = df.loc[ok_rows, [f"test_{g}_ap" for g in test_gens]].mean(axis=1)
        df.to_csv(out / "runs.csv", index=False)
        np.savez_compressed(out / "masks.npz", **{f"{n}|{s}": m for (n, s), m in masks.items()})
        env.update(
            wall_s=time.perf_counter() - t_start,
            finished_utc=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            source_digest_end=source_digest(),
            code_revision_end=code_revision(),
            generators=gens,
            train_generator=train_gen,
            val_generator=val_gen,
            test_generators=test_gens,
            seeds=seeds,
            train_overrides=train_over,
            sweeps={p: SWEEPS[p] for p in params},
        )
        env_path.write_text(json.dumps(env, indent=2) + "\n", encoding="utf-8")

    df["error"] = df["error"].fillna("") if "error" in df else ""
    failed = df[df["error"] != ""]
    ok = df[df["error"] == ""].copy()
    # id_ap = the training generator's test AP; ood_ap = test_ap
    ok = add_summary_columns(ok, gens, train_gen, exclude=[val_gen])
    names = list(dict.fromkeys(ok["name"]))
    agg = build_summary(ok, masks, names)
    agg.to_csv(out / "summary.csv", index_label="setting")
    # the selection score: the validation generator's validation split (SCM), the validation family's test split (demo)
    val_label = f"{val_gen} val AP" if kind == "scm" else f"{val_gen} AP"
    tabs = tables(agg, val_label, train_gen)
    fig_path = plot(agg, out / "sensitivity.png", val_label, test_gens, args.dpi)

    changed = "" if env["source_digest_start"] == env.get("source_digest_end") else " (CHANGED during the study)"
    if kind == "scm":
        title = "# CausalCLIP sensitivity on the SCM benchmark"
        data = (
            f"SCM: {SCMSpec(**env['spec'])}. Train gen0, early stopping on gen0 val AP; validation generator {val_gen} "
            f"(selection only, never tested); test AP = mean over {', '.join(test_gens)}; seeds {env.get('seeds')}."
        )
        where = "gen0 validation features"
        blocks_text = "(causal / family / own specific / other specific / nuisance)"
    else:
        demo = env["demo"]
        title = "# CausalCLIP sensitivity on the demo benchmark"
        data = (
            f"Demo {demo['dir']} (backbone {demo['backbone']}, {env['dim']}-d; demo recorded code "
            f"{demo['code_revision']}). Train {train_gen} (train split), early stopping on its val split; validation "
            f"family {val_gen} (its test split; selection only, never tested); test AP = mean over the test splits of "
            f"{', '.join(test_gens)}; seeds {env.get('seeds')}; training settings {env.get('train_overrides')}. "
            "No mask-recovery AUC: the demo has no known causal dimensions."
        )
        where = f"{train_gen} validation features"
        blocks_text = "(per feature block of the backbone)"
    report = [
        title,
        "",
        f"Started {env['started_utc']} UTC, finished {env.get('finished_utc', '?')} UTC, wall time "
        f"{env.get('wall_s', float('nan')) / 60:.1f} min. Code {env['code_revision']} (end: "
        f"{env.get('code_revision_end', '?')}), src digest {env['source_digest_start']}{changed}.",
        f"Machine: {env['cpu']}, {env['cpu_count']} CPUs, Python {env['python']}, torch {env['torch']}, numpy "
        f"{env['numpy']}. Command: python benchmarks/sensitivity.py {' '.join(env['argv'])}",
        data,
        "Values: mean ± sample std over seeds. ↑/↓: every seed above/below every seed of the defaults (with 3 seeds "
        f"each, chance probability 0.1 for a setting without effect). Diagnostics on {where} at "
        "the saved epoch; gradient shares from that epoch's metrics.csv row.",
        "",
        markdown_table(*tabs["main"]),
        "",
        f"Gradient shares (each term's norm over the sum of the five), mean mask per block {blocks_text}, "
        "mask distance ratio (mean |M - M_defaults| per dimension between "
        "runs of different seeds, over the defaults' own seed-to-seed distance; 1 = seed noise), saved epoch:",
        "",
        markdown_table(*tabs["grad"]),
        "",
        f"Selection by the validation {'generator' if kind == 'scm' else 'family'} ({val_label}), one parameter at a "
        "time:",
        "",
        markdown_table(*tabs["select"]),
    ]
    if len(failed):
        report += ["", "Failed runs:", ""] + [
            f"- {r['name']} seed {r['seed']}: {r['error']}" for _, r in failed.iterrows()
        ]
    (out / "report.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    print("\n".join(report[:6]))
    for key in ("main", "grad", "select"):
        print()
        print(text_table(*tabs[key]))
    print(f"\nwrote {out / 'runs.csv'}, {out / 'summary.csv'}, {out / 'report.md'}, {fig_path}")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
