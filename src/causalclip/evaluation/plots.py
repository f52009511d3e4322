"""Figures: robustness curves (the paper's Fig. 4), the mask report of a CausalCLIP run, and UMAP maps of raw,
VIB-Net and CausalCLIP features (the paper's Fig. 3).

Every figure is drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas (pyplot is never imported, so
no window opens and a notebook's backend is left alone) and saved as PNG and SVG. Saving is deterministic
(no date in the SVG, fixed SVG ids): the same input gives the same bytes. matplotlib (extra ``plots``) and
umap-learn (extra ``umap``) are imported only when a figure is drawn.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from ..core.io import atomic_write, read_json
from ..features.featureset import FeatureSet, open_feature_set

__all__ = [
    "MASK_COLUMNS",
    "PlotError",
    "embed_2d",
    "mask_report",
    "plot_robustness",
    "umap_figure",
]

PathLike = str | os.PathLike[str]

# Per-epoch diagnostics of CausalCLIPHead.diagnostics, in the order the report shows them.
MASK_COLUMNS = (
    "mask_mean",
    "mask_frac_above_half",
    "mask_dims_selected",
    "hsic",
    "nhsic",
    "adv_acc",
    "nc_probe_acc",
    "c_probe_acc",
    # the norm of the gradient each weighted term of L_total sends to the mask network (CausalCLIPHead)
    "grad_cls",
    "grad_adv",
    "grad_inv",
    "grad_l1",
    "grad_indep",
)
GRAD_COLUMNS = tuple(c for c in MASK_COLUMNS if c.startswith("grad_"))
_IMAGE_SUFFIXES = {".png", ".svg", ".pdf"}
_REAL, _FAKE = "#1f77b4", "#d62728"


class PlotError(ValueError):
    """Bad input for a figure (or a missing plotting extra); the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------------------
# drawing and saving


def _matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.backends.backend_agg
        import matplotlib.figure
    except ImportError as exc:
        raise PlotError(
            "plots need matplotlib: pip install 'causalclip[plots]' (or bash scripts/install.sh plots)"
        ) from exc
    return matplotlib


def _figure(figsize: tuple[float, float]) -> Any:
    """A Figure on the Agg canvas (no pyplot, no window)."""
    mpl = _matplotlib()
    fig = mpl.figure.Figure(figsize=figsize, layout="constrained")
    mpl.backends.backend_agg.FigureCanvasAgg(fig)
    return fig


@contextmanager
def _style() -> Iterator[None]:
    """Settings that make the files reproducible and the SVG text searchable."""
    with _matplotlib().rc_context({"svg.hashsalt": "causalclip", "svg.fonttype": "none", "font.size": 9}):
        yield


def _stem(out_stem: PathLike) -> Path:
    """``figs/x`` or ``figs/x.png`` -> ``figs/x`` (only image suffixes are dropped: ``fig.v2`` stays)."""
    stem = Path(out_stem)
    if stem.suffix.lower() in _IMAGE_SUFFIXES:
        stem = stem.with_suffix("")
    if not stem.name:
        raise PlotError(f"{out_stem!s}: not a file name stem (expected e.g. figs/robustness)")
    return stem


def _with_ext(stem: Path, ext: str) -> Path:
    return stem.with_name(f"{stem.name}.{ext}")


def _save(fig: Any, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` atomically."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
        path = _with_ext(stem, ext)
        atomic_write(path, lambda p, ext=ext, meta=meta: fig.savefig(p, format=ext, dpi=150, metadata=meta))
        out.append(path)
    return out


def _write_csv(path: Path, df: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: df.to_csv(p, index=False))
    return path


# ---------------------------------------------------------------------------------------------------------
# robustness (Fig. 4)

_KINDS = {"jpeg": "JPEG quality", "blur": "Gaussian blur sigma"}


def _check_robustness_table(table: pd.DataFrame) -> pd.DataFrame:
    need = ["method", "perturbation", "level", "ap", "acc"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise PlotError(f"robustness table: missing column(s) {missing}; expected {need}")
    if len(table) == 0:
        raise PlotError("robustness table: no rows")
    t = table[need].copy()
    bad = sorted(set(t["perturbation"].astype(str)) - set(_KINDS))
    if bad:
        raise PlotError(f"robustness table: unknown perturbation(s) {bad}; expected 'jpeg' or 'blur'")
    t["perturbation"] = t["perturbation"].astype(str)
    t["method"] = t["method"].astype(str)
    for col in ("level", "ap", "acc"):
        values = pd.to_numeric(t[col], errors="coerce")
        if values.isna().any():
            row = t[values.isna()].iloc[0]
            raise PlotError(
                f"robustness table: column {col!r} is missing or not a number for method {row['method']!r}, "
                f"{row['perturbation']} level {row['level']!r}"
            )
        t[col] = values.astype(float)
    for col in ("ap", "acc"):
        out = ~t[col].between(0.0, 1.0)
        if out.any():
            row = t[out].iloc[0]
            raise PlotError(
                f"robustness table: {col} = {row[col]} for method {row['method']!r} ({row['perturbation']} "
                f"{row['level']:g}) is outside [0, 1] (give fractions, not percentages)"
            )
    dup = t.duplicated(["method", "perturbation", "level"], keep=False)
    if dup.any():
        row = t[dup].iloc[0]
        raise PlotError(
            f"robustness table: several rows for method {row['method']!r}, {row['perturbation']} level "
            f"{row['level']:g}; average over test sets before plotting"
        )
    return t


def _marker(method: str, i: int) -> str:
    # The paper draws its own method with stars.
    return "*" if "causalclip" in method.lower() else "osD^vP<>Xh"[i % 10]


def plot_robustness(table: pd.DataFrame, out_stem: Path | str, *, title: str | None = None) -> list[Path]:
    """Robustness curves as in the paper's Fig. 4: rows AP and ACC (in %), columns JPEG quality (axis from 100
    down to 30) and Gaussian blur sigma (0 to 4), one line per method. ``table`` has columns ``method,
    perturbation ('jpeg'|'blur'), level, ap, acc`` (ap/acc in [0, 1], one row per method and level, test sets
    already averaged). Writes ``out_stem.png`` and ``out_stem.svg``; each line has the SVG id
    ``line-<metric>-<perturbation>-<method>``."""
    t = _check_robustness_table(table)
    stem = _stem(out_stem)
    kinds = [k for k in _KINDS if (t["perturbation"] == k).any()]
    methods = list(dict.fromkeys(t["method"]))  # first-appearance order: the caller's order
    with _style():
        fig = _figure((4.2 * len(kinds) + 0.6, 6.0))
        axes = fig.subplots(2, len(kinds), squeeze=False)
        for r, (metric, label) in enumerate((("ap", "AP (%)"), ("acc", "ACC (%)"))):
            for c, kind in enumerate(kinds):
                ax = axes[r, c]
                sub = t[t["perturbation"] == kind]
                for i, method in enumerate(methods):
                    m = sub[sub["method"] == method].sort_values("level")
                    if len(m) == 0:
                        continue
                    (line,) = ax.plot(
                        m["level"],
                        100 * m[metric],
                        marker=_marker(method, i),
                        markersize=6,
                        linewidth=1.4,
                        label=method,
                    )
                    line.set_gid(f"line-{metric}-{kind}-{method}")
                levels = np.sort(sub["level"].unique())
                ax.set_xticks(levels)
                ax.set_xticklabels([f"{v:g}" for v in levels])
                pad = 0.04 * max(levels[-1] - levels[0], 1.0)
                if kind == "jpeg":  # quality decreases left to right, as in Fig. 4
                    ax.set_xlim(levels[-1] + pad, levels[0] - pad)
                else:
                    ax.set_xlim(levels[0] - pad, levels[-1] + pad)
                ax.set_xlabel(_KINDS[kind])
                ax.set_ylabel(label)
                ax.grid(alpha=0.3)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        for ax in axes.flat[1:]:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), frameon=False)
        if title:
            fig.suptitle(title)
        return _save(fig, stem)


# ---------------------------------------------------------------------------------------------------------
# mask report (a CausalCLIP run's disentanglement diagnostics)


def _read_run_config(run: Path) -> dict[str, Any]:
    cfg = run / "config.json"
    if not run.is_dir():
        raise PlotError(f"{run}: not a directory (expected a training run folder)")
    if not cfg.is_file():
        raise PlotError(f"{cfg}: missing (expected a training run folder written by causalclip train)")
    info = read_json(cfg, PlotError)
    if not isinstance(info, dict) or "head" not in info:
        raise PlotError(f"{cfg}: no 'head' key (not a causalclip run folder)")
    return info


def _require_causalclip(run: Path, info: dict[str, Any], what: str) -> None:
    if info["head"] != "causalclip":
        raise PlotError(f"{run}: a {info['head']!r} run; {what} needs a CausalCLIP run (--head causalclip)")


def _fmt(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return ""
        return str(int(v)) if float(v).is_integer() and abs(v) >= 1 else f"{v:.4g}"
    return str(v)


def _markdown_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines)


def mask_report(run_dir: PathLike, out_dir: PathLike, *, top_k: int = 20) -> list[Path]:
    """Plots and tables of how a CausalCLIP run's mask evolved (read from its run folder, nothing recomputed).

    Writes into ``out_dir``: ``mask_report.csv`` (per epoch: validation AP/ACC and the mask diagnostics
    ``MASK_COLUMNS`` exactly as in metrics.csv, plus ``is_best``), ``mask_top_dimensions.csv`` (every dimension by
    selection frequency of the saved head, from mask_selection.csv), ``mask_report.md`` (both, readable),
    ``mask_training.{png,svg}`` (sparsity, selected-dimension count, HSIC, adversary and probe accuracy per
    epoch) and ``mask_frequency.{png,svg}`` (per-dimension frequency, its histogram, and its evolution).
    """
    run, out = Path(run_dir), Path(out_dir)
    info = _read_run_config(run)
    _require_causalclip(run, info, "the mask report")
    hc = info.get("head_config", {})
    if not hc.get("factorization", True) and not hc.get("adversarial_masking", True):
        raise PlotError(f"{run}: trained with ablation 'none' (no mask network); there is no mask to report")
    dim = int(info["dim"])
    metrics_path = run / "metrics.csv"
    if not metrics_path.is_file():
        raise PlotError(f"{metrics_path}: missing")
    metrics = pd.read_csv(metrics_path)
    if "epoch" not in metrics.columns or len(metrics) == 0:
        raise PlotError(f"{metrics_path}: no 'epoch' column or no rows")
    cols = [c for c in MASK_COLUMNS if c in metrics.columns]
    if "mask_mean" not in cols:
        raise PlotError(f"{metrics_path}: no mask statistics (column 'mask_mean'); was it written by causalclip?")
    freq_path = run / "mask_frequency.npy"
    if not freq_path.is_file():
        raise PlotError(f"{freq_path}: missing")
    try:
        freq = np.load(freq_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PlotError(f"{freq_path}: cannot read: {exc}") from exc
    if freq.shape != (len(metrics), dim):
        raise PlotError(
            f"{freq_path}: shape {freq.shape}, expected ({len(metrics)}, {dim}) (epochs in metrics.csv, head dim)"
        )
    sel_path = run / "mask_selection.csv"
    if not sel_path.is_file():
        raise PlotError(f"{sel_path}: missing (it is written when training finishes)")
    sel = pd.read_csv(sel_path)
    if list(sel.columns[:2]) != ["dimension", "frequency"] or len(sel) != dim:
        raise PlotError(f"{sel_path}: expected columns dimension,frequency and {dim} rows, got {list(sel.columns)}")
    best_epoch = None
    summary_path = run / "summary.json"
    if summary_path.is_file():
        best_epoch = json.loads(summary_path.read_text(encoding="utf-8")).get("best_epoch")

    table = metrics[["epoch", *[c for c in ("val_ap", "val_acc") if c in metrics.columns], *cols]].copy()
    table["is_best"] = table["epoch"] == best_epoch
    top = sel.sort_values(["frequency", "dimension"], ascending=[False, True], kind="stable").reset_index(drop=True)
    top.insert(0, "rank", np.arange(1, len(top) + 1))
    out.mkdir(parents=True, exist_ok=True)
    written = [_write_csv(out / "mask_report.csv", table), _write_csv(out / "mask_top_dimensions.csv", top)]

    n_sel = int((sel["frequency"] > 0.5).sum())
    keys = ("tau", "noise", "lambda1", "lambda2", "alpha", "beta", "p", "adv_loss", "factorization")
    md = [
        f"# Mask report: {run}",
        "",
        f"Head config: {', '.join(f'{k}={hc[k]}' for k in keys + ('adversarial_masking',) if k in hc)}.",
        f"Feature dimension d = {dim}; {len(metrics)} epoch(s); best epoch (the saved head): {best_epoch}.",
        f"The saved head selects {n_sel} of {dim} dimensions for most validation samples (mask > 0.5).",
        "",
        "How to read it: `mask_mean` / `mask_frac_above_half` are the mean mask and the fraction of mask values"
        " above 0.5; `mask_dims_selected` counts dimensions selected for most samples; `hsic` is HSIC(Zc, Znc);"
        " `adv_acc` is the adversary's accuracy on Znc; `nc_probe_acc` / `c_probe_acc` are the held-out accuracy"
        " of a fresh logistic regression on Znc / Zc (`nc_probe_acc` near 0.5: no linearly recoverable label"
        " information left in Znc). Empty cells: not measured that epoch.",
        "",
        "## Per epoch",
        "",
        _markdown_table(table),
        "",
        f"## Top {min(top_k, dim)} selected dimensions (saved head)",
        "",
        _markdown_table(top.head(top_k)),
        "",
    ]
    md_path = out / "mask_report.md"
    atomic_write(md_path, lambda p: p.write_text("\n".join(md), encoding="utf-8"))
    written.append(md_path)

    epochs = metrics["epoch"].to_numpy()
    with _style():
        from matplotlib.ticker import MaxNLocator

        fig = _figure((9.0, 9.2))
        axes = fig.subplots(3, 2)
        panels = [
            (axes[0, 0], "mask sparsity", ["mask_mean", "mask_frac_above_half"], (0, 1)),
            (axes[0, 1], f"selected dimensions (of d = {dim})", ["mask_dims_selected"], (0, dim)),
            (axes[1, 0], "HSIC(Zc, Znc) (the paper's, biased)", ["hsic"], None),
            (axes[1, 1], "label information (accuracy)", ["adv_acc", "nc_probe_acc", "c_probe_acc"], (0, 1.02)),
            (axes[2, 0], "gradient norm on the mask, per term", list(GRAD_COLUMNS), "log"),
            (axes[2, 1], "normalised HSIC(Zc, Znc)", ["nhsic"], (0, 1)),
        ]
        for ax, ptitle, series, ylim in panels:
            drawn = 0
            for col in series:
                if col not in metrics.columns or metrics[col].isna().all():
                    continue
                ok = metrics[col].notna().to_numpy()
                (line,) = ax.plot(epochs[ok], metrics[col].to_numpy()[ok], marker="o", markersize=3, label=col)
                line.set_gid(f"series-{col}")
                drawn += 1
            if not drawn:
                ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes)
            elif len(series) > 1:
                ax.legend(fontsize=7)
            if "accuracy" in ptitle:
                ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
            if best_epoch is not None:
                ax.axvline(best_epoch, color="black", linestyle=":", linewidth=0.8)
            if ylim == "log":
                if drawn:
                    ax.set_yscale("log")
            elif ylim is not None:
                ax.set_ylim(*ylim)
            ax.set_title(ptitle)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        fig.suptitle(f"{run.name}: mask diagnostics on validation data (dotted: best epoch)")
        written += _save(fig, out / "mask_training")

        fig = _figure((10.0, 7.0))
        grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.1])
        ax = fig.add_subplot(grid[0, :])
        # one filled step path rather than d bars: as readable, and cheap to draw and store for d = 768
        ax.stairs(
            sel["frequency"].to_numpy(), np.arange(dim + 1) - 0.5, fill=True, color="#4c72b0", gid="steps-frequency"
        )
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlim(-0.5, dim - 0.5)
        ax.set_ylim(0, 1)
        ax.set_xlabel("feature dimension")
        ax.set_ylabel("selection frequency")
        ax.set_title(f"saved head: fraction of validation samples with mask > 0.5 ({n_sel} of {dim} dims > 0.5)")
        ax = fig.add_subplot(grid[1, 0])
        ax.hist(sel["frequency"], bins=np.linspace(0, 1, 21), color="#4c72b0")
        ax.set_xlabel("selection frequency")
        ax.set_ylabel("dimensions")
        ax.set_title("histogram over dimensions")
        ax = fig.add_subplot(grid[1, 1])
        im = ax.imshow(
            freq,
            aspect="auto",
            interpolation="nearest",
            vmin=0,
            vmax=1,
            cmap="viridis",
            extent=(-0.5, dim - 0.5, epochs[-1] + 0.5, epochs[0] - 0.5),
        )
        fig.colorbar(im, ax=ax, label="frequency")
        ax.set_xlabel("feature dimension")
        ax.set_ylabel("epoch")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("per epoch")
        written += _save(fig, out / "mask_frequency")
    return written


# ---------------------------------------------------------------------------------------------------------
# UMAP (Fig. 3)


def embed_2d(
    x: np.ndarray,
    *,
    method: Literal["umap", "pca"] = "umap",
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
) -> np.ndarray:
    """(n, 2) coordinates of ``x``; deterministic given ``seed``. "pca" is the fast linear alternative."""
    x = np.asarray(x, dtype=np.float32)
    if len(x) < 4:
        raise PlotError(f"a 2-D map needs at least 4 points, got {len(x)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, svd_solver="full").fit_transform(x.astype(np.float64))
    if method != "umap":
        raise PlotError(f"unknown embedding method {method!r}; expected 'umap' or 'pca'")
    try:
        import umap
    except ImportError as exc:
        raise PlotError(
            "UMAP needs umap-learn: pip install 'causalclip[umap]' (or bash scripts/install.sh umap)"
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": the price of determinism
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(n_neighbors, len(x) - 1),
            min_dist=min_dist,
            metric=metric,
            random_state=seed,
            init="spectral" if len(x) > n_neighbors + 2 else "random",
        )
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def _check_features(info: dict[str, Any], fs: FeatureSet, run: Path) -> None:
    from ..heads.predict import FEATURE_KEYS

    if int(info["dim"]) != fs.dim:
        raise PlotError(f"{fs.root}: features have dim {fs.dim}, but the head in {run} expects {info['dim']}")
    trained = info.get("features", {})
    for key in FEATURE_KEYS:
        if key != "perturbation" and key in trained and key in fs.meta and trained[key] != fs.meta[key]:
            raise PlotError(
                f"{fs.root}: features were made with {key} {fs.meta[key]!r}, but the head in {run} was trained "
                f"on {trained[key]!r}"
            )


def _load_head_of(run: PathLike, expected: str, flag: str) -> tuple[Any, dict[str, Any], Path]:
    from ..heads.checkpoint import load_head

    run = Path(run)
    info = _read_run_config(run)
    if info["head"] != expected:
        raise PlotError(f"{run}: a {info['head']!r} run, but {flag} needs a {expected!r} run")
    loaded = load_head(run)
    return loaded.head, loaded.info, run


@torch.no_grad()
def _head_features(head: Any, x: np.ndarray, kind: str, batch_size: int = 1024) -> np.ndarray:
    parts = []
    for i in range(0, len(x), batch_size):
        e = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32))
        if kind == "vib":
            z = head.encode(e)[0]  # the bottleneck mean mu (what VIB-Net predicts from)
        else:
            z = head.split(e, stochastic=False)[1]  # Zc = M * E with the deterministic inference mask
        parts.append(z.float().cpu().numpy())
    return np.concatenate(parts)


def _sample_groups(sets: list[FeatureSet], max_per_group: int, seed: int) -> list[tuple[FeatureSet, np.ndarray]]:
    """Per feature set, sorted row indices: at most ``max_per_group`` per (generator, label), seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for fs in sets:
        keys = pd.DataFrame({"g": fs.generators.astype(str), "y": fs.labels})
        chosen = []
        for _, rows in sorted(keys.groupby(["g", "y"]).indices.items()):
            rows = np.sort(rows)
            if max_per_group > 0 and len(rows) > max_per_group:
                rows = np.sort(rng.choice(rows, max_per_group, replace=False))
            chosen.append(rows)
        out.append((fs, np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)))
    return out


def _knn_agreement(xy: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    """Fraction of points whose k nearest other points (in the 2-D map) have the same majority label."""
    from sklearn.neighbors import NearestNeighbors

    if len(xy) <= k:
        return float("nan")
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy)
    votes = y[idx[:, 1:]].mean(1)
    return float(((votes > 0.5).astype(int) == y).mean())


def umap_figure(
    feature_sets: PathLike | FeatureSet | Sequence[PathLike | FeatureSet],
    out_stem: PathLike,
    *,
    vib_run: PathLike | None = None,
    causalclip_run: PathLike | None = None,
    seen_generators: Sequence[str],
    max_per_group: int = 500,
    seed: int = 0,
    method: Literal["umap", "pca"] = "umap",
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
) -> list[Path]:
    """The paper's Fig. 3: 2-D maps of raw features E, VIB-Net's bottleneck mean (``vib_run``) and CausalCLIP's
    causal part Zc (``causalclip_run``), each fitted separately on the same seeded subsample (at most
    ``max_per_group`` per generator and class); real/fake by colour, seen/unseen generators by row and marker.

    Writes ``out_stem.png``, ``out_stem.svg``, ``out_stem.csv`` (per panel and sample: the 2-D coordinates, set,
    row, path, generator, label, seen) and ``out_stem_separation.csv`` (per panel and seen/unseen/all: the
    5-nearest-neighbour real/fake agreement in the map, 0.5 = mixed, 1 = separated). A run of another head
    than the flag names is an error. Deterministic given ``seed``.
    """
    stem = _stem(out_stem)
    if isinstance(feature_sets, (str, os.PathLike, FeatureSet)):
        feature_sets = [feature_sets]
    if not feature_sets:
        raise PlotError("umap: give at least one feature set")
    if max_per_group < 0:
        raise PlotError(f"max_per_group must be >= 0 (0 = all), got {max_per_group}")
    sets = [fs if isinstance(fs, FeatureSet) else open_feature_set(fs) for fs in feature_sets]
    owner: dict[str, Path] = {}
    for fs in sets:
        if fs.dim != sets[0].dim:
            raise PlotError(f"{fs.root} has dim {fs.dim} but {sets[0].root} has dim {sets[0].dim}")
        for g in pd.unique(fs.generators.astype(str)):
            if g in owner and owner[g] != fs.root:
                raise PlotError(f"generator {g!r} appears in both {owner[g]} and {fs.root}; rename one of them")
            owner[g] = fs.root
    seen = {str(g) for g in seen_generators}
    unknown = sorted(seen - set(owner))
    if unknown:
        raise PlotError(f"seen generator(s) {unknown} are not in the feature sets; available: {sorted(owner)}")

    heads = []
    if vib_run is not None:
        heads.append(("vib", "VIB-Net bottleneck (mu)", *_load_head_of(vib_run, "vib", "--vib")))
    if causalclip_run is not None:
        heads.append(
            ("causalclip", "CausalCLIP causal part (Zc)", *_load_head_of(causalclip_run, "causalclip", "--causalclip"))
        )
    for _, _, _, info, run in heads:
        for fs in sets:
            _check_features(info, fs, run)

    picked = _sample_groups(sets, max_per_group, seed)
    x = np.concatenate([fs.take(idx).astype(np.float32) for fs, idx in picked])
    meta = pd.concat(
        [
            pd.DataFrame(
                {
                    "set": str(fs.root),
                    "row": idx,
                    "path": fs.paths[idx],
                    "generator": fs.generators[idx].astype(str),
                    "label": fs.labels[idx],
                }
            )
            for fs, idx in picked
        ],
        ignore_index=True,
    )
    meta["seen"] = meta["generator"].isin(seen)
    panels: list[tuple[str, str, np.ndarray]] = [("raw", "CLIP features (E)", x)]
    for key, title, head, _info, _run in heads:
        if key == "causalclip" and not getattr(head, "uses_mask", True):
            title += " - no mask (ablation 'none')"
        panels.append((key, title, _head_features(head, x, key)))

    frames, sep_rows = [], []
    y = meta["label"].to_numpy()
    for key, _title, z in panels:
        xy = embed_2d(z, method=method, seed=seed, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric)
        frames.append(meta.assign(representation=key, x=xy[:, 0], y=xy[:, 1]))
        for subset, mask in (
            ("seen", meta["seen"]),
            ("unseen", ~meta["seen"]),
            ("all", pd.Series(True, index=meta.index)),
        ):
            m = mask.to_numpy()
            if m.any():
                sep_rows.append(
                    {
                        "representation": key,
                        "subset": subset,
                        "n": int(m.sum()),
                        "knn_agreement": _knn_agreement(xy[m], y[m]),
                    }
                )
    coords = pd.concat(frames, ignore_index=True)
    coords = coords[["representation", "set", "row", "path", "generator", "label", "seen", "x", "y"]]
    written_csv = [
        _write_csv(_with_ext(stem, "csv"), coords),
        _write_csv(stem.with_name(f"{stem.name}_separation.csv"), pd.DataFrame(sep_rows)),
    ]

    rows = [(s, lab) for s, lab in ((True, "seen"), (False, "unseen")) if (meta["seen"] == s).any()]
    with _style():
        fig = _figure((3.6 * len(panels) + 0.4, 3.4 * len(rows) + 0.6))
        axes = fig.subplots(len(rows), len(panels), squeeze=False)
        for c, (key, title, _) in enumerate(panels):
            pc = coords[coords["representation"] == key]
            for r, (is_seen, row_label) in enumerate(rows):
                ax = axes[r, c]
                sub = pc[pc["seen"] == is_seen]
                for label, color, name in ((0, _REAL, "real"), (1, _FAKE, "fake")):
                    s = sub[sub["label"] == label]
                    ax.scatter(
                        s["x"],
                        s["y"],
                        s=6,
                        c=color,
                        marker="o" if is_seen else "^",
                        alpha=0.6,
                        linewidths=0,
                        label=name,
                        gid=f"points-{key}-{row_label}-{name}",
                    )
                ax.set_xticks([])
                ax.set_yticks([])
                # the same map in both rows: equal limits show where unseen points fall relative to seen ones
                pad_x = 0.05 * (pc["x"].max() - pc["x"].min() + 1e-9)
                pad_y = 0.05 * (pc["y"].max() - pc["y"].min() + 1e-9)
                ax.set_xlim(pc["x"].min() - pad_x, pc["x"].max() + pad_x)
                ax.set_ylim(pc["y"].min() - pad_y, pc["y"].max() + pad_y)
                gens = sorted(sub["generator"].unique())
                names = ", ".join(gens[:4]) + (f" +{len(gens) - 4}" if len(gens) > 4 else "")
                if r == 0:
                    ax.set_title(f"({'abc'[c]}) {title}")
                if c == 0:
                    ax.set_ylabel(f"{row_label}: {names}")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False, markerscale=3)
        fig.suptitle(f"{method.upper()} of real and fake features (seed {seed})")
        return _save(fig, stem) + written_csv
