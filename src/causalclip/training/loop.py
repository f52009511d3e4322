"""The training loop: named losses in, optimiser steps out; the lr schedule and early stopping; a self-describing
run folder.

The loop knows nothing about any particular head: each head yields ``(group, loss, logs)`` phases and the loop
steps that group's optimiser (``loss.backward(inputs=group)``, so only that group's parameters get gradients).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.io import atomic_write, save_npy, write_text
from ..core.revision import code_revision
from ..features.featureset import FeatureSet, open_feature_set
from ..heads.base import Head
from ..heads.checkpoint import save_head
from ..heads.predict import FEATURE_KEYS, feature_description, predict
from ..heads.registry import DEFAULT_HEAD, build_head
from ..metrics.binary import binary_metrics
from ..metrics.thresholds import calibration_record, write_threshold
from .config import RunConfig, resolve_run_config
from .optim import build_optimizer, scheduled_lr
from .selection import EpochSelector

__all__ = ["TrainResult", "train"]

log = logging.getLogger("causalclip")


@dataclass
class TrainResult:
    run_dir: Path
    head: Head
    best_epoch: int
    best_score: float
    stop_reason: str
    history: pd.DataFrame


def _as_set(x: FeatureSet | str | os.PathLike[str]) -> FeatureSet:
    return x if isinstance(x, FeatureSet) else open_feature_set(x)


def _check_two_classes(fs: FeatureSet, role: str) -> None:
    counts = np.bincount(fs.labels, minlength=2)
    if counts.min() == 0:
        raise ValueError(
            f"{fs.root}: the {role} set needs real and fake samples, got {counts[0]} real and {counts[1]} fake"
        )


def _check_like(tr: FeatureSet, other: FeatureSet, role: str) -> None:
    """``other`` was made like the training set (same dim and feature description) and holds both classes."""
    if other.dim != tr.dim:
        raise ValueError(f"{tr.root} has dim {tr.dim} but {other.root} has dim {other.dim}")
    for key in FEATURE_KEYS:
        if key in tr.meta and key in other.meta and tr.meta[key] != other.meta[key]:
            raise ValueError(
                f"{tr.root} and {other.root} were made differently ({key}: {tr.meta[key]!r} vs {other.meta[key]!r})"
            )
    _check_two_classes(other, role)


def _subset(n: int, max_samples: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded random subset of range(n) of size max_samples (all when 0 or n is smaller)."""
    if max_samples <= 0 or n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterable[np.ndarray]:
    perm = rng.permutation(n)
    for i in range(0, n, batch_size):
        b = perm[i : i + batch_size]
        if len(b) >= 2:  # HSIC and BCE need at least two samples; a lone leftover sample is skipped this epoch
            yield np.sort(b)  # sorted rows read the memory map sequentially; the batch's content is unchanged


def _set_lr(opts: dict[str, torch.optim.Optimizer], lr: float) -> None:
    """Every group's optimiser continues at ``lr`` (what torch's lr schedulers do to ``param_groups``)."""
    for opt in opts.values():
        for pg in opt.param_groups:
            pg["lr"] = lr


def train(
    *,
    train_set: FeatureSet | str | os.PathLike[str],
    val_set: FeatureSet | str | os.PathLike[str],
    out: str | os.PathLike[str],
    run_config: RunConfig | None = None,
    head: str = DEFAULT_HEAD,
    progress: bool = True,
    overwrite: bool = False,
    heldout_sets: Sequence[FeatureSet | str | os.PathLike[str]] = (),
) -> TrainResult:
    """Train a head on a cached feature set; write the run folder.

    The lr follows ``train.lr_schedule``: "plateau" (lr / 10 after ``patience`` epochs without improvement, early
    stopping) or a fixed schedule ("cosine", "constant", after ``warmup_epochs`` at ``warmup_lr``) that trains all
    ``epochs``. Either way the saved epoch is the best on the validation metric (from ``min_epochs`` on).

    The run folder holds ``config.json`` + ``model.safetensors`` (the best epoch's head, loadable with
    :func:`causalclip.load_head`), ``run.json`` (resolved config, code revision, data, versions),
    ``metrics.csv`` (one row per epoch), ``summary.json``, and for CausalCLIP ``mask_selection.csv`` and
    ``mask_frequency.npy`` (per-epoch, per-dimension selection frequency on the validation set).

    ``heldout_sets``: validation sets of generators that are not in training. When given, the saved epoch and early
    stopping follow their mean ``early_stop_metric`` (``heldout_ap``, ``heldout_acc`` or ``heldout_loss`` in
    metrics.csv) instead of the in-distribution validation set's, which saturates early; ``val_set`` still gives
    the diagnostics and the calibrated threshold.
    """
    rc = run_config or resolve_run_config(head)
    cfg = rc.train
    out = Path(out)
    if (out / "config.json").exists() and not overwrite:
        raise FileExistsError(
            f"{out}: already holds a trained run (config.json); choose another --out or pass --overwrite"
        )
    tr, va = _as_set(train_set), _as_set(val_set)
    held = [_as_set(h) for h in heldout_sets]
    _check_two_classes(tr, "training")
    _check_like(tr, va, "validation")
    for h in held:
        _check_like(tr, h, "held-out validation")
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_head(rc.head, dim=tr.dim, config=rc.head_config, feature_set=tr).to(device)
    groups = model.param_groups()
    opts = {g: build_optimizer(ps, cfg) for g, ps in groups.items()}  # one optimiser per group, all of one kind
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    run_info = {
        **rc.to_dict(),
        "code_revision": code_revision(),
        "started": started,
        "data": {
            "train": {"path": str(tr.root), "n": len(tr), "n_fake": int(tr.labels.sum())},
            "val": {"path": str(va.root), "n": len(va), "n_fake": int(va.labels.sum())},
            "heldout": [{"path": str(h.root), "n": len(h), "n_fake": int(h.labels.sum())} for h in held],
            "features": feature_description(tr),
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    write_text(out / "run.json", json.dumps(run_info, indent=2) + "\n")

    val_idx = _subset(len(va), cfg.val_max_samples, cfg.seed)
    held_idx = [_subset(len(h), cfg.val_max_samples, cfg.seed) for h in held]
    val_labels = va.labels[val_idx]
    diag_idx = val_idx[_subset(len(val_idx), 4096, cfg.seed + 1)]
    diag_x = torch.from_numpy(va.take(diag_idx).astype(np.float32)).to(device)
    diag_y = torch.from_numpy(va.labels[diag_idx]).to(device)

    history: list[dict[str, Any]] = []
    freq_history: list[np.ndarray] = []
    selector = EpochSelector(
        metric=cfg.early_stop_metric,
        lr=cfg.lr,
        min_epochs=cfg.min_epochs,
        patience=cfg.patience,
        max_epochs=cfg.epochs,
        decay_on_plateau=cfg.lr_decay_on_plateau,
        min_lr=cfg.min_lr,
        which="held-out" if held else "val",
        early_stopping=cfg.early_stopping,  # a fixed schedule (cosine, constant) trains all its epochs
    )
    best_state = None
    lr = cfg.lr
    stop_reason = f"reached {cfg.epochs} epochs"
    y_all = torch.from_numpy(tr.labels.copy())
    for epoch in range(1, cfg.epochs + 1):
        fixed = scheduled_lr(cfg, epoch)  # None: the plateau schedule's lr (set below when the selector drops it)
        if fixed is not None:
            lr = fixed
            _set_lr(opts, lr)
        model.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        seen = 0
        n_batches = math.ceil(len(tr) / cfg.batch_size)
        bar = tqdm(
            _batches(len(tr), cfg.batch_size, rng),
            total=n_batches,
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for b in bar:
            x = torch.from_numpy(tr.take(b).astype(np.float32, copy=False)).to(device)
            y = y_all[b].to(device)
            logs_step: dict[str, torch.Tensor] = {}
            for group, loss, logs in model.training_phases(x, y):
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"epoch {epoch}: the {group!r} loss became {loss.item()}; lower lr or loss weights"
                    )
                opt = opts[group]
                opt.zero_grad(set_to_none=True)
                loss.backward(inputs=groups[group])
                opt.step()
                logs_step.update(logs)
            for k, v in logs_step.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(b)
            seen += len(b)
            if progress and "cls" in logs_step:
                bar.set_postfix(cls=f"{float(logs_step['cls'].detach()):.4f}", refresh=False)
        bar.close()
        train_s = time.perf_counter() - t0

        scores = predict(model, va, indices=val_idx, device=str(device))
        val = binary_metrics(val_labels, scores, name=f"validation set {va.root}")
        heldout = {}
        if held:  # the mean over the held-out generators' sets of each metric
            per_set = []
            for h, idx in zip(held, held_idx, strict=True):
                s = predict(model, h, indices=idx, device=str(device))
                per_set.append(binary_metrics(h.labels[idx], s, name=f"held-out validation set {h.root}"))
            heldout = {k: float(np.mean([m[k] for m in per_set])) for k in ("loss", "ap", "acc")}
        probe = cfg.nc_probe_every > 0 and epoch % cfg.nc_probe_every == 0
        model.eval()
        diag = model.diagnostics(diag_x, diag_y, probe=probe)
        freq = diag.pop("mask_dim_frequency", None)
        if freq is not None:
            freq_history.append(freq)
        row = {
            "epoch": epoch,
            "lr": lr,
            **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()},
            **{f"val_{k}": v for k, v in val.items() if k not in ("n_real", "n_fake")},
            **{f"heldout_{k}": v for k, v in heldout.items()},
            **diag,
            "train_seconds": train_s,
            "samples_per_s": seen / train_s if train_s > 0 else float("nan"),
        }
        history.append(row)
        table = pd.DataFrame(history)
        atomic_write(out / "metrics.csv", lambda p, t=table: t.to_csv(p, index=False))
        if freq_history:
            freqs = np.stack(freq_history).astype(np.float32)
            atomic_write(out / "mask_frequency.npy", lambda p, f=freqs: save_npy(p, f))
        log.info(
            "epoch %d: val AP %.4f ACC %.4f%s%s (%.0f samples/s)",
            epoch,
            val["ap"],
            val["acc"],
            f", held-out AP {heldout['ap']:.4f} ACC {heldout['acc']:.4f}" if heldout else "",
            "".join(f", {k} {v:.4g}" for k, v in diag.items() if isinstance(v, float)),
            row["samples_per_s"],
        )

        verdict = selector.update(epoch, heldout or val)  # held-out generators select when there are any
        if verdict.keep:
            best_state = copy.deepcopy(model.state_dict())
        if verdict.stop:
            stop_reason = verdict.stop
            break
        if verdict.new_lr is not None:
            lr = verdict.new_lr
            _set_lr(opts, lr)
            log.info("%s %s plateaued: lr -> %.1e", selector.which, cfg.early_stop_metric, lr)

    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    final_diag = model.diagnostics(diag_x, diag_y, probe=True)
    freq = final_diag.pop("mask_dim_frequency", None)
    if freq is not None:
        pd.DataFrame({"dimension": np.arange(len(freq)), "frequency": freq}).to_csv(
            out / "mask_selection.csv", index=False
        )
    best_epoch, best_score = selector.best_epoch, selector.best_score
    best_row = history[best_epoch - 1]
    summary = {
        "best_epoch": best_epoch,
        "early_stop_metric": cfg.early_stop_metric,
        "selected_on": "heldout" if held else "val",
        "best_score": best_score,
        "stop_reason": stop_reason,
        "epochs_run": len(history),
        "val": {k[4:]: v for k, v in best_row.items() if k.startswith("val_")},
        "diagnostics": final_diag,
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    save_head(
        out,
        model,
        threshold=0.5,
        extra={
            "features": feature_description(tr),
            "provenance": {
                "train": str(tr.root),
                "val": str(va.root),
                "trained": started,
                "code_revision": run_info["code_revision"],
                "best_epoch": best_epoch,
            },
        },
    )
    # The decision threshold that maximises balanced accuracy on the validation set (evaluate reports ACC at it).
    val_scores = predict(model, va, device=str(device))
    write_threshold(
        out, calibration_record(va.labels, val_scores, source=str(va.root), name=f"validation set {va.root}")
    )
    return TrainResult(
        run_dir=out,
        head=model,
        best_epoch=best_epoch,
        best_score=best_score,
        stop_reason=stop_reason,
        history=pd.DataFrame(history),
    )
