"""Synthetic structural-causal-model benchmark (the paper's Eq. 1-3): train on one generator, test on the others.

    python benchmarks/scm_benchmark.py --out runs/scm            # full table (~30-60 min on 2 CPU cores)
    python benchmarks/scm_benchmark.py --out runs/scm --quick    # smoke run, ~1-2 min
    python benchmarks/scm_benchmark.py --out runs/scm --search   # + validation-based search for CausalCLIP

Writes the SCM feature sets with ``causalclip.features.synthetic.write_scm_benchmark``, trains every head with
``causalclip.train`` on generator 0 (early stopping on generator 0's validation split), evaluates it with
``causalclip.evaluate`` on every generator, and reports in-distribution (gen0) and out-of-distribution (mean over
the other generators) AP/ACC; for CausalCLIP heads also how well the mask recovers the known causal dimensions
and the run's final diagnostics. The search selects CausalCLIP hyperparameters on validation data only (the
training generator's, or additionally a held-out generator's); test numbers of the selected configurations are
reported next to, never used for, the selection. docs/reports/scm-benchmark.md describes the design and the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from causalclip import evaluate, load_head, open_feature_set, resolve_run_config, train, write_feature_set
from causalclip.core.machine import cpu_model
from causalclip.core.revision import code_revision
from causalclip.features.synthetic import SCMSpec, write_scm_benchmark
from causalclip.heads.causalclip import ABLATIONS, CausalCLIPConfig

log = logging.getLogger("scm_benchmark")

HEAD_LABELS = {"univfd": "UnivFD", "vib": "VIB-Net", "causalclip": "CausalCLIP"}

# CausalCLIP's open hyperparameters and the values the search draws from. Fixed before any search result was
# seen; the ranges bracket the package defaults by about an order of magnitude either side.
SEARCH_SPACE: dict[str, list[Any]] = {
    "tau": [0.2, 0.5, 1.0, 2.0],
    "lambda1": [0.0, 0.01, 0.1, 1.0],
    "lambda2": [0.0, 0.1, 1.0, 10.0],
    "alpha": [0.0, 0.1, 0.5, 1.0],
    "beta": [0.0, 0.1, 1.0, 10.0],
    "p": [0.1, 0.3, 0.5],
    "adv_loss": ["paper", "uniform"],
    "mask_hidden": [0, 128, 512],
    "classifier_hidden": [0, 128],
}


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: head (+ ablation / overrides) on one data set, with one training seed."""

    name: str  # the row label in the tables
    head: str
    seed: int
    run_dir: str
    sets: dict[str, str]  # split name -> feature-set folder (train, val, test, optional val_heldout)
    train_overrides: dict[str, Any]
    head_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    ablation: str | None = None
    spec: dict[str, Any] | None = None  # SCMSpec fields, for mask recovery (None: do not measure)
    threads: int = 0
    group: str = "main"  # main | oracle | search
    # select the saved epoch (and stop) on sets["val_heldout"] (train's heldout_sets) instead of sets["val"]
    select_on_heldout: bool = False


# ---------------------------------------------------------------------------------------------------------
# one run


def mask_recovery(run_dir: Path, val_dir: str, spec: SCMSpec, train_generator: int) -> dict[str, float]:
    """How well the trained mask recovers the known causal dimensions, from the mean inference mask per dimension
    on the validation features (and the selection frequency M > 0.5 that training wrote to mask_selection.csv)."""
    head = load_head(run_dir).head
    if not getattr(head, "uses_mask", False):
        return {}
    fs = open_feature_set(val_dir)
    e = torch.from_numpy(fs.take(np.arange(len(fs))).astype(np.float32))
    with torch.no_grad():
        m = head.mask(e, stochastic=False).mean(0).numpy()  # (dim,) mean mask value per dimension
    causal, family = spec.causal_dims, spec.family_dims
    own = spec.specific_dims(train_generator)
    other = np.setdiff1d(np.concatenate([spec.specific_dims(k) for k in range(spec.n_generators)]), own)
    nuisance = spec.nuisance_dims
    is_causal = np.zeros(spec.dim, dtype=bool)
    is_causal[causal] = True
    spurious = np.concatenate([causal, family, own])  # the dims that predict y on the training generator
    out = {
        "mask_auc_causal_vs_rest": float(roc_auc_score(is_causal, m)),
        "mask_auc_causal_vs_spurious": float(roc_auc_score(is_causal[spurious], m[spurious])),
        "mask_causal": float(m[causal].mean()),
        "mask_family": float(m[family].mean()),
        "mask_own_specific": float(m[own].mean()),
        "mask_other_specific": float(m[other].mean()) if len(other) else float("nan"),
        "mask_nuisance": float(m[nuisance].mean()) if len(nuisance) else float("nan"),
    }
    sel_path = run_dir / "mask_selection.csv"
    if sel_path.is_file():
        freq = pd.read_csv(sel_path)["frequency"].to_numpy()
        out["freq_auc_causal_vs_rest"] = float(roc_auc_score(is_causal, freq))
        out["selected_causal"] = int((freq[causal] > 0.5).sum())
        out["selected_family"] = int((freq[family] > 0.5).sum())
        out["selected_own_specific"] = int((freq[own] > 0.5).sum())
        out["selected_other"] = int((freq[np.concatenate([other, nuisance])] > 0.5).sum())
    return out


def run_job(job: Job) -> dict[str, Any]:
    """Train, evaluate on every test generator (and the held-out validation generators), measure the mask."""
    if job.threads > 0:
        torch.set_num_threads(job.threads)
    t0 = time.perf_counter()
    row: dict[str, Any] = {"name": job.name, "group": job.group, "head": job.head, "seed": job.seed}
    row.update({f"hp_{k}": v for k, v in job.head_overrides.items()})
    try:
        overrides = {**{f"train.{k}": v for k, v in job.train_overrides.items()}, "train.seed": job.seed}
        overrides.update({f"{job.head}.{k}": v for k, v in job.head_overrides.items()})
        rc = resolve_run_config(job.head, overrides=overrides, ablation=job.ablation)
        run_dir = Path(job.run_dir)
        res = train(
            train_set=job.sets["train"],
            val_set=job.sets["val"],
            out=run_dir,
            run_config=rc,
            progress=False,
            overwrite=True,
            heldout_sets=[job.sets["val_heldout"]] if job.select_on_heldout else (),
        )
        row.update(best_epoch=res.best_epoch, epochs_run=len(res.history), stop_reason=res.stop_reason)
        best = res.history.iloc[res.best_epoch - 1]
        row.update(val_ap=float(best["val_ap"]), val_acc=float(best["val_acc"]))
        metrics = evaluate(run_dir, [job.sets["test"]], out=run_dir / "eval").metrics
        for _, r in metrics.iterrows():
            if r["generator"] != "mean":
                row[f"test_{r['generator']}_ap"] = float(r["ap"])
                row[f"test_{r['generator']}_acc"] = float(r["acc"])
        if "val_heldout" in job.sets:
            held = evaluate(run_dir, [job.sets["val_heldout"]], out=run_dir / "eval_val_heldout").metrics
            mean = held[held["generator"] == "mean"].iloc[0]
            row.update(heldout_val_ap=float(mean["ap"]), heldout_val_acc=float(mean["acc"]))
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        diag = summary.get("diagnostics", {})
        for key in ("hsic", "adv_acc", "nc_probe_acc", "c_probe_acc", "mask_mean", "mask_dims_selected"):
            if key in diag:
                row[f"diag_{key}"] = diag[key]
        if job.spec is not None:
            spec = SCMSpec(**job.spec)
            if spec.mixing == "identity":
                row.update(mask_recovery(run_dir, job.sets["val"], spec, train_generator=0))
    except (FloatingPointError, ValueError, RuntimeError) as exc:  # a diverged run is a result, not a crash
        row["error"] = f"{type(exc).__name__}: {exc}"
        log.warning("%s (seed %d) failed: %s", job.name, job.seed, row["error"])
    row["seconds"] = time.perf_counter() - t0
    return row


def run_jobs(jobs: Sequence[Job], n_workers: int) -> list[dict[str, Any]]:
    """Run jobs in order (n_workers <= 1) or in a spawn process pool; rows come back in job order."""
    rows: list[dict[str, Any]] = []
    if n_workers <= 1:
        for i, job in enumerate(jobs, 1):
            rows.append(run_job(job))
            _log_row(i, len(jobs), rows[-1])
        return rows
    import multiprocessing

    with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for i, row in enumerate(pool.map(run_job, jobs), 1):
            rows.append(row)
            _log_row(i, len(jobs), row)
    return rows


def _log_row(i: int, n: int, row: dict[str, Any]) -> None:
    if "error" in row:
        log.info("[%d/%d] %s seed %d: FAILED %s", i, n, row["name"], row["seed"], row["error"])
        return
    log.info(
        "[%d/%d] %s seed %d: val AP %.4f, best epoch %d/%d, %.0f s",
        i,
        n,
        row["name"],
        row["seed"],
        row["val_ap"],
        row["best_epoch"],
        row["epochs_run"],
        row["seconds"],
    )


# ---------------------------------------------------------------------------------------------------------
# data


def write_oracle_sets(sets: dict[str, Path], spec: SCMSpec, root: Path) -> dict[str, str]:
    """Copies of train/val/test with every non-causal dimension zeroed: a linear probe on them is the reference
    for what a head that used only the causal factor would reach (identity mixing only)."""
    out = {}
    for split in ("train", "val", "test"):
        fs = open_feature_set(sets[split])
        x = fs.take(np.arange(len(fs)))
        keep = np.zeros(spec.dim, dtype=bool)
        keep[spec.causal_dims] = True
        x[:, ~keep] = 0
        meta = {"backbone": fs.meta["backbone"], "feature": {"name": "scm-causal-dims-only"}}
        out[split] = str(write_feature_set(root / split, x, fs.samples, meta=meta))
    return out


def ood_generators(names: Sequence[str], exclude: Sequence[str]) -> list[str]:
    return [g for g in names if g not in exclude]


def add_summary_columns(df: pd.DataFrame, gens: Sequence[str], train_gen: str, exclude: Sequence[str]) -> pd.DataFrame:
    """id_ap/id_acc (training generator) and ood_ap/ood_acc (mean over gens minus exclude) per row."""
    df = df.copy()
    ood = ood_generators(gens, [train_gen, *exclude])
    df["id_ap"], df["id_acc"] = df[f"test_{train_gen}_ap"], df[f"test_{train_gen}_acc"]
    df["ood_ap"] = df[[f"test_{g}_ap" for g in ood]].mean(axis=1)
    df["ood_acc"] = df[[f"test_{g}_acc" for g in ood]].mean(axis=1)
    return df


def aggregate(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Mean and std over seeds of ``columns`` per name (in first-appearance order), plus the number of seeds."""
    order = list(dict.fromkeys(df["name"]))
    cols = [c for c in columns if c in df.columns]
    g = df.groupby("name", sort=False)[cols]
    mean, std = g.mean().reindex(order), g.std(ddof=1).reindex(order)
    out = pd.DataFrame(index=order)
    out["seeds"] = df.groupby("name", sort=False).size().reindex(order)
    for c in cols:
        out[c] = mean[c]
        out[f"{c}_std"] = std[c]
    return out


def _pct(mean: float, std: float | None = None) -> str:
    if mean is None or not np.isfinite(mean):
        return "-"
    if std is None or not np.isfinite(std):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _num(x: Any, fmt: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def results_tables(agg: pd.DataFrame, gens: Sequence[str]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The headline table, per-generator AP, and CausalCLIP's mask / diagnostics table, as (header, rows)."""
    main_h = ["head", "seeds", "ID AP", "ID ACC", "OOD AP", "OOD ACC"]
    main_r = [
        [
            name,
            str(int(r["seeds"])),
            _pct(r["id_ap"], r["id_ap_std"]),
            _pct(r["id_acc"], r["id_acc_std"]),
            _pct(r["ood_ap"], r["ood_ap_std"]),
            _pct(r["ood_acc"], r["ood_acc_std"]),
        ]
        for name, r in agg.iterrows()
    ]
    gen_h = ["head", *[f"{g} AP" for g in gens]]
    gen_r = [[name, *[_pct(r[f"test_{g}_ap"]) for g in gens]] for name, r in agg.iterrows()]
    mask_h = [
        "head",
        "AUC causal/rest",
        "AUC causal/spurious",
        "M causal",
        "M family",
        "M own-spec",
        "M other-spec",
        "M nuisance",
        "sel c/f/s/other",
        "HSIC",
        "adv acc",
        "probe Znc",
        "probe Zc",
    ]
    mask_r = []
    for name, r in agg.iterrows():
        if not np.isfinite(r.get("mask_causal", np.nan)) and not np.isfinite(r.get("diag_adv_acc", np.nan)):
            continue
        sel = "/".join(
            _num(r.get(k), ".0f")
            for k in ("selected_causal", "selected_family", "selected_own_specific", "selected_other")
        )
        mask_r.append(
            [
                name,
                _num(r.get("mask_auc_causal_vs_rest")),
                _num(r.get("mask_auc_causal_vs_spurious")),
                _num(r.get("mask_causal")),
                _num(r.get("mask_family")),
                _num(r.get("mask_own_specific")),
                _num(r.get("mask_other_specific")),
                _num(r.get("mask_nuisance")),
                sel,
                _num(r.get("diag_hsic"), ".4f"),
                _num(r.get("diag_adv_acc")),
                _num(r.get("diag_nc_probe_acc")),
                _num(r.get("diag_c_probe_acc")),
            ]
        )
    return {"main": (main_h, main_r), "per_generator": (gen_h, gen_r), "mask": (mask_h, mask_r)}


# ---------------------------------------------------------------------------------------------------------
# search


def sample_configs(n: int, seed: int) -> list[dict[str, Any]]:
    """The package defaults first, then n - 1 distinct configurations drawn uniformly from SEARCH_SPACE."""
    default = dataclasses.asdict(CausalCLIPConfig())
    configs = [{k: default[k] for k in SEARCH_SPACE}]
    keys = list(SEARCH_SPACE)
    rng = np.random.default_rng([seed, 4242])
    seen = {tuple(configs[0].values())}
    total = int(np.prod([len(v) for v in SEARCH_SPACE.values()]))
    while len(configs) < min(n, total):
        cfg = {k: SEARCH_SPACE[k][rng.integers(len(SEARCH_SPACE[k]))] for k in keys}
        if tuple(cfg.values()) not in seen:
            seen.add(tuple(cfg.values()))
            configs.append(cfg)
    return configs


def config_label(cfg: dict[str, Any]) -> str:
    """A short, unique label such as ``t=1.0 l1=0.01 ...`` (unknown keys keep their name)."""
    short = {
        "tau": "t",
        "lambda1": "l1",
        "lambda2": "l2",
        "alpha": "a",
        "beta": "b",
        "p": "p",
        "adv_loss": "adv",
        "mask_hidden": "mh",
        "classifier_hidden": "ch",
    }
    return " ".join(f"{short.get(k, k)}={v}" for k, v in cfg.items())


def parse_variant(text: str) -> dict[str, Any]:
    """``alpha=0.5,tau=0.2`` -> {"alpha": 0.5, "tau": 0.2}; values are read as JSON when they parse."""
    out: dict[str, Any] = {}
    fields = {f.name for f in dataclasses.fields(CausalCLIPConfig)}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--variant {text!r}: {item!r} is not K=V with K a CausalCLIPConfig field")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def select(df: pd.DataFrame, score: str, tie: str) -> str:
    """Name of the configuration with the highest mean ``score`` over its seeds (ties broken by ``tie``)."""
    g = df.groupby("name", sort=False)[[score, tie]].mean()
    return str(g.sort_values([score, tie], ascending=False, kind="stable").index[0])


# ---------------------------------------------------------------------------------------------------------
# main


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "code_revision": code_revision(),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder (data/, runs/, tables)")
    ap.add_argument("--seed", type=int, default=0, help="SCM seed and first training seed (default 0)")
    ap.add_argument("--repeats", type=int, default=None, help="training seeds per head (default 3; quick: 1)")
    ap.add_argument("--epochs", type=int, default=None, help="epoch cap; early stopping usually ends first (100)")
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate of every head (default 1e-3, see docs)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="small SCM, one seed, no ablations: about 1-2 minutes")
    size = ap.add_argument_group("SCM size (defaults: SCMSpec's; --quick: dim 256, blocks of 16)")
    size.add_argument("--dim", type=int)
    size.add_argument("--n-causal", type=int)
    size.add_argument("--n-family", type=int)
    size.add_argument("--n-specific", type=int)
    size.add_argument("--n-generators", type=int)
    size.add_argument("--mixing", choices=["identity", "orthogonal"])
    size.add_argument(
        "--scm", action="append", default=[], metavar="FIELD=VALUE", help="any other SCMSpec field (repeatable)"
    )
    size.add_argument("--n-train", type=int, help="per class (default 5000; quick 2000)")
    size.add_argument("--n-val", type=int, help="per class (default 1000; quick 500)")
    size.add_argument("--n-test", type=int, help="per class and generator (default 1000; quick 500)")
    ap.add_argument(
        "--heads", default="univfd,vib,causalclip", help="comma-separated heads for the main table (default: all three)"
    )
    ap.add_argument("--no-ablations", action="store_true", help="skip the Table-5 ablation rows of CausalCLIP")
    ap.add_argument("--no-oracle", action="store_true", help="skip the causal-dims-only reference row")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="K=V[,K=V...]",
        help="an extra CausalCLIP row with these config overrides, e.g. alpha=0.5,tau=0.2 (repeatable)",
    )
    ap.add_argument("--search", action="store_true", help="also run the validation-based CausalCLIP search")
    ap.add_argument("--search-configs", type=int, default=None, help="configurations tried (default 24; quick 4)")
    ap.add_argument("--search-top", type=int, default=3, help="configurations re-run with all seeds (default 3)")
    ap.add_argument(
        "--heldout-generator",
        type=int,
        default=3,
        help="generator whose validation split the leave-one-generator-out selection may use (default 3)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="parallel training processes, each with one torch thread (default: 2, or 1 on a 1-CPU machine)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run when --jobs is 1 (default 1: several threads per run on a busy 2-core machine "
        "oversubscribe it and run many times slower; 0: torch's default)",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    return ap.parse_args(argv)


def build_spec(args: argparse.Namespace) -> SCMSpec:
    fields = {
        "dim": args.dim,
        "n_causal": args.n_causal,
        "n_family": args.n_family,
        "n_specific": args.n_specific,
        "n_generators": args.n_generators,
        "mixing": args.mixing,
    }
    if args.quick:
        fields = {"dim": 256, "n_causal": 16, "n_family": 16, "n_specific": 16} | {
            k: v for k, v in fields.items() if v is not None
        }
    for item in args.scm:
        key, sep, value = item.partition("=")
        if not sep or key not in {f.name for f in dataclasses.fields(SCMSpec)}:
            raise SystemExit(f"--scm {item!r}: expected FIELD=VALUE with FIELD one of SCMSpec's fields")
        try:
            fields[key] = json.loads(value)
        except ValueError:
            fields[key] = value
    return SCMSpec(seed=args.seed, **{k: v for k, v in fields.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("causalclip").setLevel(logging.INFO if args.verbose else logging.WARNING)
    q = args.quick
    repeats = args.repeats or (1 if q else 3)
    epochs = args.epochs or (30 if q else 100)
    n_train, n_val, n_test = args.n_train or (2000 if q else 5000), args.n_val or (500 if q else 1000), args.n_test
    n_test = n_test or (500 if q else 1000)
    n_configs = args.search_configs or (4 if q else 24)
    spec = build_spec(args)
    spec.validate()
    if args.search and not 0 < args.heldout_generator < spec.n_generators:
        raise SystemExit(f"--heldout-generator must be in 1..{spec.n_generators - 1}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    gens = [f"gen{k}" for k in range(spec.n_generators)]
    heldout = f"gen{args.heldout_generator}"

    log.info("writing SCM feature sets to %s (%s)", out / "data", spec)
    sets = write_scm_benchmark(
        out / "data",
        spec,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        heldout_val_generators=[args.heldout_generator] if args.search else (),
    )
    sets = {k: str(v) for k, v in sets.items()}
    main_sets = {k: v for k, v in sets.items() if k != "val_heldout"}
    train_over = {"epochs": epochs, "lr": args.lr, "batch_size": args.batch_size, "nc_probe_every": 0}
    threads = 1 if args.jobs > 1 else args.threads
    spec_d = dataclasses.asdict(spec)
    seeds = [args.seed + i for i in range(repeats)]

    def job(name: str, head: str, seed: int, **kw: Any) -> Job:
        slug = name.replace(" ", "_").replace("/", "-").replace("=", "").replace("(", "").replace(")", "")
        return Job(
            name=name,
            head=head,
            seed=seed,
            run_dir=str(out / "runs" / slug / f"seed{seed}"),
            sets=kw.pop("sets", main_sets),
            train_overrides=train_over,
            spec=spec_d,
            threads=threads,
            **kw,
        )

    variants = [parse_variant(v) for v in args.variant]
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    unknown = sorted(set(heads) - set(HEAD_LABELS))
    if unknown:
        raise SystemExit(f"--heads: unknown {unknown}; choose from {sorted(HEAD_LABELS)}")
    jobs = []
    for seed in seeds:
        jobs += [job(HEAD_LABELS[h], h, seed) for h in heads]
        if not args.no_ablations and not q:
            for abl in ABLATIONS:
                if abl != "full":  # "full" is the CausalCLIP row itself
                    jobs.append(job(f"CausalCLIP ablation={abl}", "causalclip", seed, ablation=abl))
        for v in variants:
            jobs.append(job(f"CausalCLIP {config_label(v)}", "causalclip", seed, head_overrides=v))
    if spec.mixing == "identity" and not args.no_oracle:
        oracle_sets = write_oracle_sets({k: Path(v) for k, v in main_sets.items()}, spec, out / "data" / "oracle")
        for seed in seeds:
            jobs.append(job("oracle: UnivFD on causal dims", "univfd", seed, sets=oracle_sets, group="oracle"))
    rows = run_jobs(jobs, args.jobs)
    df = pd.DataFrame(rows)
    failed = df[df["error"].notna()] if "error" in df else df.iloc[:0]
    ok = df.drop(failed.index)
    ok = add_summary_columns(ok, gens, "gen0", exclude=())
    ok.to_csv(out / "results.csv", index=False)
    cols = ["id_ap", "id_acc", "ood_ap", "ood_acc", "val_ap", "val_acc", "best_epoch", "seconds"]
    cols += [f"test_{g}_ap" for g in gens] + [f"test_{g}_acc" for g in gens]
    cols += [c for c in ok.columns if c.startswith(("mask_", "freq_", "selected_", "diag_"))]
    agg = aggregate(ok, cols)
    agg.to_csv(out / "summary.csv", index_label="head")
    tables = results_tables(agg, gens)
    info = machine_info()
    report = [
        f"# SCM benchmark ({'quick' if q else 'full'})",
        "",
        f"Command: `python benchmarks/scm_benchmark.py {' '.join(sys.argv[1:] if argv is None else argv)}`; "
        f"started {started} UTC.",
        f"SCM: {spec}",
        f"train gen0 ({n_train}+{n_train}), val gen0 ({n_val}+{n_val}), test every generator ({n_test}+{n_test}); "
        f"lr {args.lr}, batch {args.batch_size}, epoch cap {epochs}, early stopping on val AP; seeds {seeds}.",
        f"Machine: {info['cpu']}, {info['cpu_count']} CPUs; torch {info['torch']}; code {info['code_revision']}.",
        "ID = generator 0 (the training generator's test split); OOD = mean over "
        + ", ".join(ood_generators(gens, ["gen0"]))
        + ". Values: mean ± std over seeds, in percent.",
        "",
        markdown_table(*tables["main"]),
        "",
        "AP per test generator (mean over seeds):",
        "",
        markdown_table(*tables["per_generator"]),
        "",
        "CausalCLIP mask recovery (mean inference mask per dimension on gen0 validation features; AUC: causal "
        "dims vs all others / vs the other dims that predict y on gen0 (family + own-specific); sel: dims with "
        "selection frequency > 0.5, causal/family/own-specific/other) and final diagnostics (HSIC, adversary "
        "accuracy, fresh logistic probe on Znc and Zc):",
        "",
        markdown_table(*tables["mask"]),
    ]
    if len(failed):
        report += ["", "Failed runs:", ""] + [
            f"- {r['name']} seed {r['seed']}: {r['error']}" for _, r in failed.iterrows()
        ]
    print()
    print(text_table(*tables["main"]))
    print()
    print(text_table(*tables["per_generator"]))
    if tables["mask"][1]:
        print()
        print(text_table(*tables["mask"]))

    n_failed = len(failed)
    if args.search:
        lines, n_search_failed = run_search(
            args, spec, sets, gens, heldout, train_over, threads, seeds, n_configs, out, reference=ok
        )
        report += lines
        n_failed += n_search_failed

    elapsed = time.perf_counter() - t_start
    finished = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    report += ["", f"Total wall time: {elapsed / 60:.1f} min (finished {finished} UTC)."]
    (out / "report.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    (out / "environment.json").write_text(
        json.dumps(
            {**info, "argv": list(sys.argv if argv is None else argv), "spec": spec_d, "wall_s": elapsed}, indent=2
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"\nwrote {out / 'report.md'}, {out / 'summary.csv'}, {out / 'results.csv'} ({elapsed / 60:.1f} min)")
    return 1 if n_failed else 0


def run_search(
    args: argparse.Namespace,
    spec: SCMSpec,
    sets: dict[str, str],
    gens: list[str],
    heldout: str,
    train_over: dict[str, Any],
    threads: int,
    seeds: list[int],
    n_configs: int,
    out: Path,
    reference: pd.DataFrame | None = None,
) -> tuple[list[str], int]:
    """Stage 1: every sampled configuration with the first seed. Stage 2: the top configurations under each
    selection rule (and the defaults) with the remaining seeds. ``reference``: the main table's runs, scored on
    the search's test generators for comparison. Returns the report's lines and the number of failed runs."""
    configs = sample_configs(n_configs, args.seed)
    labels = {config_label(c): c for c in configs}
    spec_d = dataclasses.asdict(spec)

    def job(label: str, seed: int) -> Job:
        return Job(
            name=label,
            head="causalclip",
            seed=seed,
            run_dir=str(out / "search" / f"cfg{list(labels).index(label):02d}" / f"seed{seed}"),
            sets=sets,
            train_overrides=train_over,
            head_overrides=labels[label],
            spec=spec_d,
            threads=threads,
            group="search",
        )

    log.info("search stage 1: %d configurations, seed %d", len(configs), seeds[0])
    rows = run_jobs([job(label, seeds[0]) for label in labels], args.jobs)
    stage1 = pd.DataFrame(rows)
    ok1 = stage1[stage1["error"].isna()] if "error" in stage1 else stage1
    top_val = list(ok1.sort_values(["val_ap", "val_acc"], ascending=False, kind="stable")["name"][: args.search_top])
    top_held = list(
        ok1.sort_values(["heldout_val_ap", "heldout_val_acc"], ascending=False, kind="stable")["name"][
            : args.search_top
        ]
    )
    default_label = config_label(configs[0])
    finalists = list(dict.fromkeys([default_label, *top_val, *top_held]))
    if len(seeds) > 1:
        log.info("search stage 2: %d finalists x %d more seeds", len(finalists), len(seeds) - 1)
        rows += run_jobs([job(label, s) for label in finalists for s in seeds[1:]], args.jobs)
    df = pd.DataFrame(rows)
    failed = df[df["error"].notna()] if "error" in df else df.iloc[:0]
    ok = df.drop(failed.index)
    # OOD for the search: every generator except the training one and the held-out one, so both selection rules
    # are scored on the same test generators; "ood_all" keeps the held-out generator in.
    ok = add_summary_columns(ok, gens, "gen0", exclude=[heldout])
    ood_all = ood_generators(gens, ["gen0"])
    ok["ood_all_ap"] = ok[[f"test_{g}_ap" for g in ood_all]].mean(axis=1)
    ok["ood_all_acc"] = ok[[f"test_{g}_acc" for g in ood_all]].mean(axis=1)
    ok.to_csv(out / "search_results.csv", index=False)
    fin = ok[ok["name"].isin(finalists)]
    # Each rule picks among the defaults and its own stage-1 finalists, so the VAL pick never depends on the
    # held-out generator, not even through which configurations reached stage 2.
    sel_val = select(fin[fin["name"].isin([default_label, *top_val])], "val_ap", "val_acc")
    sel_held = select(fin[fin["name"].isin([default_label, *top_held])], "heldout_val_ap", "heldout_val_acc")
    cols = ["val_ap", "val_acc", "heldout_val_ap", "heldout_val_acc", "ood_ap", "ood_acc", "ood_all_ap", "id_ap"]
    cols += ["ood_all_acc", "id_acc", "mask_auc_causal_vs_spurious", "diag_adv_acc", "diag_nc_probe_acc"]
    agg1 = aggregate(ok[ok["seed"] == seeds[0]], cols)
    aggf = aggregate(fin, cols).reindex(finalists)
    agg1.to_csv(out / "search_stage1.csv", index_label="config")
    aggf.to_csv(out / "search_finalists.csv", index_label="config")
    ood_names = ", ".join(ood_generators(gens, ["gen0", heldout]))

    def rank_corr(a: str, b: str) -> float:
        return float(agg1[a].rank().corr(agg1[b].rank())) if len(agg1) > 2 else float("nan")

    stage_h = ["#", "config", "val AP", "val ACC", f"{heldout} val AP", "test: OOD AP", "OOD ACC", "ID ACC"]
    stage_r = [
        [
            str(list(labels).index(name)),
            name,
            _pct(r["val_ap"]),
            _pct(r["val_acc"]),
            _pct(r["heldout_val_ap"]),
            _pct(r["ood_ap"]),
            _pct(r["ood_acc"]),
            _pct(r["id_acc"]),
        ]
        for name, r in agg1.sort_values(["val_ap", "val_acc"], ascending=False).iterrows()
    ]
    fin_h = ["config", "seeds", "val AP", f"{heldout} val AP", "test: OOD AP", "OOD ACC", "mask AUC c/spur."]
    fin_r = []
    for name, r in aggf.iterrows():
        tags = [
            t
            for t, s in (("defaults", default_label), ("VAL-selected", sel_val), ("LOGO-selected", sel_held))
            if name == s
        ]
        fin_r.append(
            [
                f"{name}{' [' + ', '.join(tags) + ']' if tags else ''}",
                str(int(r["seeds"])),
                _pct(r["val_ap"], r["val_ap_std"]),
                _pct(r["heldout_val_ap"], r["heldout_val_ap_std"]),
                _pct(r["ood_ap"], r["ood_ap_std"]),
                _pct(r["ood_acc"], r["ood_acc_std"]),
                _num(r["mask_auc_causal_vs_spurious"]),
            ]
        )
    ref_lines: list[str] = []
    if reference is not None and len(reference):
        ref = aggregate(add_summary_columns(reference, gens, "gen0", exclude=[heldout]), ["ood_ap", "ood_acc"])
        ref_lines = [
            f"Main-table heads on the same test generators ({ood_names}), mean ± std over seeds:",
            "",
            markdown_table(
                ["head", "seeds", "test: OOD AP", "OOD ACC"],
                [
                    [
                        name,
                        str(int(r["seeds"])),
                        _pct(r["ood_ap"], r["ood_ap_std"]),
                        _pct(r["ood_acc"], r["ood_acc_std"]),
                    ]
                    for name, r in ref.iterrows()
                ],
            ),
            "",
        ]
    lines = [
        "",
        "## CausalCLIP hyperparameter search",
        "",
        f"Space: {json.dumps(SEARCH_SPACE)}; {len(configs)} configurations (package defaults + random draws), "
        f"seed {seeds[0]}; the top {args.search_top} under each selection rule and the defaults re-run with seeds "
        f"{seeds[1:]}.",
        f"VAL rule (the paper's protocol): highest gen0 validation AP (ties: val ACC). LOGO rule: highest validation "
        f"AP on the held-out generator {heldout}. Columns marked test: are NOT used for selection; OOD here is "
        f"the mean over {ood_names} ({heldout} excluded so both rules are scored on the same generators).",
        f"Spearman rank correlation over stage-1 configurations: gen0 val AP vs test OOD AP "
        f"{rank_corr('val_ap', 'ood_ap'):.2f}; {heldout} val AP vs test OOD AP {rank_corr('heldout_val_ap', 'ood_ap'):.2f}.",
        "",
        *ref_lines,
        "Stage 1 (one seed), sorted by gen0 validation AP:",
        "",
        markdown_table(stage_h, stage_r),
        "",
        "Finalists (mean ± std over seeds):",
        "",
        markdown_table(fin_h, fin_r),
        "",
        f"VAL-selected: {sel_val}",
        f"LOGO-selected: {sel_held}",
    ]
    if len(failed):
        lines += ["", "Failed search runs:", ""]
        lines += [f"- {r['name']} seed {r['seed']}: {r['error']}" for _, r in failed.iterrows()]
    print("\n".join(lines))
    return lines, len(failed)


if __name__ == "__main__":
    sys.exit(main())
