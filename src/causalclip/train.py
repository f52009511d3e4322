"""The training loop: named losses in, optimiser steps out; early stopping; a self-describing run folder.

The loop knows nothing about any particular head: each head yields ``(group, loss, logs)`` phases and the loop
steps that group's optimiser (``loss.backward(inputs=group)``, so only that group's parameters get gradients).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import platform
import subprocess
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

from .calibration import calibration_record, write_threshold
from .checkpoint import save_head
from .config import ConfigError, TrainConfig, config_from_dict, config_to_dict, load_config_file, parse_override
from .features import FeatureSet, atomic_write, open_feature_set, save_npy
from .heads import ABLATIONS, HEADS, Head, build_head
from .metrics import binary_metrics

__all__ = ["RunConfig", "TrainResult", "code_revision", "predict", "resolve_run_config", "train"]

log = logging.getLogger("causalclip")

# Keys of meta.json that describe how features were made; train and val must agree on them.
FEATURE_KEYS = ("backbone", "preprocessing", "feature", "perturbation")


@dataclass(frozen=True)
class RunConfig:
    """The fully resolved configuration of one training run."""

    head: str
    train: TrainConfig
    head_config: Any

    def to_dict(self) -> dict[str, Any]:
        return {"head": self.head, "train": config_to_dict(self.train), self.head: config_to_dict(self.head_config)}


def resolve_run_config(
    head: str,
    *,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | dict[str, Any] = (),
    ablation: str | None = None,
) -> RunConfig:
    """Layer defaults <- config file <- ablation preset <- overrides into a :class:`RunConfig`.

    A config file (JSON or TOML) has a ``train`` section (TrainConfig keys) and one section per head name
    (``causalclip``, ``univfd``, ``vib``); sections of other heads are ignored, so one file can serve all heads.
    Overrides are ``key=value`` strings (or a dict): ``train.epochs=3``, ``causalclip.tau=0.5``, or a bare key
    that names a field of TrainConfig or of the selected head's config.
    """
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; available: {sorted(HEADS)}")
    head_cls = HEADS[head]
    train_d: dict[str, Any] = {}
    head_d: dict[str, Any] = {}
    if config_file is not None:
        data = load_config_file(config_file)
        unknown = sorted(set(data) - {"train", *HEADS})
        if unknown:
            raise ConfigError(f"{config_file}: unknown section(s) {unknown}; expected 'train' and/or {sorted(HEADS)}")
        train_d.update(data.get("train", {}))
        head_d.update(data.get(head, {}))
        where = f"{config_file}: "
        config_from_dict(TrainConfig, train_d, where=where + "[train] ")  # validate the file on its own first
        config_from_dict(head_cls.config_cls, head_d, where=f"{where}[{head}] ")
    if ablation is not None:
        if head != "causalclip":
            raise ConfigError(f"--ablation applies to the causalclip head, not {head!r}")
        if ablation not in ABLATIONS:
            raise ConfigError(f"unknown ablation {ablation!r}; available: {sorted(ABLATIONS)}")
        head_d.update(ABLATIONS[ablation])
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    head_fields = {f.name for f in dataclasses.fields(head_cls.config_cls)}
    for key, value in items:
        parts = key.split(".") if isinstance(key, str) else list(key)
        if len(parts) == 2 and parts[0] == "train":
            train_d[parts[1]] = value
        elif len(parts) == 2 and parts[0] == head:
            head_d[parts[1]] = value
        elif len(parts) == 1 and parts[0] in train_fields:
            train_d[parts[0]] = value
        elif len(parts) == 1 and parts[0] in head_fields:
            head_d[parts[0]] = value
        else:
            raise ConfigError(
                f"override {'.'.join(parts)!r}: not a field of the train config or of the {head!r} head; "
                f"train: {sorted(train_fields)}; {head}: {sorted(head_fields)}"
            )
    return RunConfig(
        head=head,
        train=config_from_dict(TrainConfig, train_d, where="train config: "),
        head_config=config_from_dict(head_cls.config_cls, head_d, where=f"{head} config: "),
    )


@dataclass
class TrainResult:
    run_dir: Path
    head: Head
    best_epoch: int
    best_score: float
    stop_reason: str
    history: pd.DataFrame


def code_revision() -> str:
    """The git commit of the causalclip source (with ``-dirty`` for uncommitted changes), if it is a checkout."""
    src = Path(__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10
        )
        if top.returncode == 0 and (Path(top.stdout.strip()) / "src" / "causalclip").is_dir():
            rev = subprocess.run(
                ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            )
            dirty = subprocess.run(
                ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if rev.returncode == 0:
                return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from . import __version__

    return f"causalclip {__version__} (not a git checkout)"


def feature_description(fs: FeatureSet) -> dict[str, Any]:
    """The parts of meta.json that say how the vectors were made (backbone, preprocessing, ...)."""
    return {k: fs.meta[k] for k in FEATURE_KEYS if k in fs.meta}


@torch.no_grad()
def predict(
    head: Head, fs: FeatureSet, *, indices: np.ndarray | None = None, batch_size: int = 8192, device: str = "cpu"
) -> np.ndarray:
    """Probabilities of fake, (n,) float64, for the rows ``indices`` of ``fs`` (all rows by default)."""
    was_training = head.training
    head.eval()
    idx = np.arange(len(fs)) if indices is None else np.asarray(indices)
    out = np.empty(len(idx), dtype=np.float64)
    for i in range(0, len(idx), batch_size):
        x = torch.from_numpy(fs.take(idx[i : i + batch_size]).astype(np.float32, copy=False)).to(device)
        out[i : i + batch_size] = torch.sigmoid(head(x).float()).cpu().numpy()
    head.train(was_training)
    return out


def _write_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _as_set(x: FeatureSet | str | os.PathLike[str]) -> FeatureSet:
    return x if isinstance(x, FeatureSet) else open_feature_set(x)


def _check_two_classes(fs: FeatureSet, role: str) -> None:
    counts = np.bincount(fs.labels, minlength=2)
    if counts.min() == 0:
        raise ValueError(
            f"{fs.root}: the {role} set needs real and fake samples, got {counts[0]} real and {counts[1]} fake"
        )


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


def train(
    *,
    train_set: FeatureSet | str | os.PathLike[str],
    val_set: FeatureSet | str | os.PathLike[str],
    out: str | os.PathLike[str],
    run_config: RunConfig | None = None,
    head: str = "causalclip",
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Train a head on a cached feature set with early stopping on the validation set; write the run folder.

    The run folder holds ``config.json`` + ``model.safetensors`` (the best epoch's head, loadable with
    :func:`causalclip.load_head`), ``run.json`` (resolved config, code revision, data, versions),
    ``metrics.csv`` (one row per epoch), ``summary.json``, and for CausalCLIP ``mask_selection.csv`` and
    ``mask_frequency.npy`` (per-epoch, per-dimension selection frequency on the validation set).
    """
    rc = run_config or resolve_run_config(head)
    cfg = rc.train
    out = Path(out)
    if (out / "config.json").exists() and not overwrite:
        raise FileExistsError(
            f"{out}: already holds a trained run (config.json); choose another --out or pass --overwrite"
        )
    tr, va = _as_set(train_set), _as_set(val_set)
    if tr.dim != va.dim:
        raise ValueError(f"{tr.root} has dim {tr.dim} but {va.root} has dim {va.dim}")
    for key in FEATURE_KEYS:
        if key in tr.meta and key in va.meta and tr.meta[key] != va.meta[key]:
            raise ValueError(
                f"{tr.root} and {va.root} were made differently ({key}: {tr.meta[key]!r} vs {va.meta[key]!r})"
            )
    _check_two_classes(tr, "training")
    _check_two_classes(va, "validation")
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_head(rc.head, dim=tr.dim, config=rc.head_config).to(device)
    groups = model.param_groups()
    opt_cls = torch.optim.AdamW if model.optimizer_name() == "adamw" else torch.optim.Adam
    opts = {g: opt_cls(ps, lr=cfg.lr, weight_decay=cfg.weight_decay) for g, ps in groups.items()}
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    run_info = {
        **rc.to_dict(),
        "code_revision": code_revision(),
        "started": started,
        "data": {
            "train": {"path": str(tr.root), "n": len(tr), "n_fake": int(tr.labels.sum())},
            "val": {"path": str(va.root), "n": len(va), "n_fake": int(va.labels.sum())},
            "features": feature_description(tr),
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    _write_atomic(out / "run.json", json.dumps(run_info, indent=2) + "\n")

    val_idx = _subset(len(va), cfg.val_max_samples, cfg.seed)
    val_labels = va.labels[val_idx]
    diag_idx = val_idx[_subset(len(val_idx), 4096, cfg.seed + 1)]
    diag_x = torch.from_numpy(va.take(diag_idx).astype(np.float32)).to(device)
    diag_y = torch.from_numpy(va.labels[diag_idx]).to(device)

    history: list[dict[str, Any]] = []
    freq_history: list[np.ndarray] = []
    best_score, best_epoch, best_state, bad_epochs = -math.inf, 0, None, 0
    lr, n_decays = cfg.lr, 0
    stop_reason = f"reached {cfg.epochs} epochs"
    y_all = torch.from_numpy(tr.labels.copy())
    for epoch in range(1, cfg.epochs + 1):
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
            "epoch %d: val AP %.4f ACC %.4f%s (%.0f samples/s)",
            epoch,
            val["ap"],
            val["acc"],
            "".join(f", {k} {v:.4g}" for k, v in diag.items() if isinstance(v, float)),
            row["samples_per_s"],
        )

        score = -val["loss"] if cfg.early_stop_metric == "loss" else val[cfg.early_stop_metric]
        if score > best_score:
            best_score, best_epoch, bad_epochs = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        if bad_epochs >= cfg.patience:
            if not cfg.lr_decay_on_plateau:
                stop_reason = f"no val {cfg.early_stop_metric} improvement for {cfg.patience} epochs"
                break
            n_decays += 1
            lr = cfg.lr / 10**n_decays  # not lr /= 10: repeated division drifts (1e-4/10/10 > 1e-6)
            if lr < cfg.min_lr * (1 - 1e-9):
                stop_reason = f"plateau with lr {lr:.1e} < min_lr {cfg.min_lr:.1e}"
                break
            for opt in opts.values():
                for pg in opt.param_groups:
                    pg["lr"] = lr
            bad_epochs = 0
            log.info("val %s plateaued: lr -> %.1e", cfg.early_stop_metric, lr)

    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    final_diag = model.diagnostics(diag_x, diag_y, probe=True)
    freq = final_diag.pop("mask_dim_frequency", None)
    if freq is not None:
        pd.DataFrame({"dimension": np.arange(len(freq)), "frequency": freq}).to_csv(
            out / "mask_selection.csv", index=False
        )
    best_row = history[best_epoch - 1]
    summary = {
        "best_epoch": best_epoch,
        "early_stop_metric": cfg.early_stop_metric,
        "best_score": best_score,
        "stop_reason": stop_reason,
        "epochs_run": len(history),
        "val": {k[4:]: v for k, v in best_row.items() if k.startswith("val_")},
        "diagnostics": final_diag,
    }
    _write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
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
