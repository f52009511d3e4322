"""Training a network on images: one loop for every method (its recipe is data), resumable, and DDP under torchrun.

::

    causalclip train --head npr --train ROOT --val ROOT --layout folders --out RUN       # one process
    torchrun --nproc_per_node 2 -m causalclip train --head npr ...                       # DDP (gloo on CPU)

Each global batch (``recipe.batch_size`` images, an order drawn from (seed, epoch)) is cut into
``grad_accum x world_size`` chunks; rank r takes chunks r, r + world, ... So two processes under torchrun compute
exactly the gradients of one process with ``grad_accum=2`` and the same global batch (BatchNorm statistics are per
chunk in both; on CUDA, ``SyncBatchNorm`` makes them per global batch instead).

Resume: a checkpoint (weights, optimiser, selection state, history, RNG, data position) is written atomically to
``RUN/checkpoint/state.pt`` after every epoch (and every ``checkpoint_every`` steps). Running the same command
again continues from it, and ends with the same weights as an uninterrupted run (tests/test_pixel.py kills one with
SIGKILL). It is read back with ``torch.load(weights_only=True)`` and removed when the run completes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..core.io import atomic_write, write_json
from ..core.revision import code_revision
from ..images.transforms import Augmentation, Preprocessing
from ..metrics.binary import balanced_indices, binary_metrics
from ..metrics.thresholds import calibration_record, write_threshold
from ..networks.registry import Recipe, build_network, get_network_method
from ..training.selection import EpochSelector
from .config import PixelRunConfig, resolve_pixel_config
from .data import ImageSet, TrainTransform, batch_order, iterate_batches
from .folder import save_network
from .predict import predict_images

__all__ = ["PixelTrainResult", "test_preprocessing", "train_network", "train_transform"]

log = logging.getLogger("causalclip")

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_NAME = "state.pt"


@dataclass
class PixelTrainResult:
    run_dir: Path
    network: nn.Module
    best_epoch: int
    best_score: float
    stop_reason: str
    history: pd.DataFrame
    errors: pd.DataFrame  # path, reason: every training/validation image that could not be used


# ---------------------------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


def _init_dist(device: str) -> _Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; join its process group (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _broadcast(obj: Any, d: _Dist) -> Any:
    if not d.on:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_min(value: int, d: _Dist) -> int:
    if not d.on:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _barrier(d: _Dist) -> None:
    if d.on:
        dist.barrier()


# ---------------------------------------------------------------------------------------------- pieces


def _amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "bf16" or (setting == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _optimizer(rc: PixelRunConfig, params) -> torch.optim.Optimizer:
    r = rc.recipe
    if r.optimizer == "sgd":
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    return torch.optim.Adam(params, lr=r.lr, betas=tuple(r.betas), weight_decay=r.weight_decay)


def _epoch_lr(rc: PixelRunConfig, epoch: int, selector: EpochSelector) -> float:
    """The recipe's step decay (every ``lr_step_every`` epochs by ``lr_step_gamma``) times the plateau decays."""
    r = rc.recipe
    steps = (epoch - 1) // r.lr_step_every if r.lr_step_every > 0 else 0
    return selector.current_lr(r.lr * r.lr_step_gamma**steps)


def train_transform(r: Recipe) -> TrainTransform:
    """A recipe's training transform: resize, blur/JPEG, crop, flip, normalise (pixel.data.TrainTransform)."""
    aug = None
    if r.blur_prob > 0 or r.jpeg_prob > 0:
        aug = Augmentation(
            blur_prob=r.blur_prob,
            blur_sigma=tuple(r.blur_sigma),
            jpeg_prob=r.jpeg_prob,
            jpeg_quality=tuple(r.jpeg_quality),
        )
    return TrainTransform(
        crop=r.train_crop,
        mean=tuple(r.mean),
        std=tuple(r.std),
        flip=r.flip,
        resize=r.train_resize,
        resize_mode=r.train_resize_mode,
        crop_mode=r.train_crop_mode,
        augmentation=aug,
    )


def test_preprocessing(rc: PixelRunConfig) -> Preprocessing:
    """The paper's test-time preprocessing for these methods: a centre crop without resize, the recipe's mean/std."""
    r = rc.recipe
    return Preprocessing(mode="crop", size=r.test_crop, mean=tuple(r.mean), std=tuple(r.std))


def _chunks(batch: np.ndarray, parts: int) -> list[np.ndarray]:
    return [c for c in np.array_split(batch, parts)]


def _init_weights(rc: PixelRunConfig, network: nn.Module, d: _Dist) -> dict[str, Any]:
    """Initialise as the authors do where the user gave what it takes; the record says what happened."""
    spec = get_network_method(rc.method)
    path = rc.train.imagenet_weights
    if path:
        from ..networks.importer import load_imagenet_weights

        report = load_imagenet_weights(network, path)
        return {"method": "imagenet", "weights": str(Path(path).resolve()), "report": report}
    if spec.init == "imagenet":
        note = "from scratch: the authors start from ImageNet weights; none were given (train.imagenet_weights)"
        if d.main:
            log.info("%s: %s", rc.method, note)
        return {"method": "scratch", "authors": "imagenet", "note": note}
    return {"method": "scratch", "authors": spec.init}


def _fit_input_statistics(network: nn.Module, train: ImageSet, rc: PixelRunConfig, workers: int) -> dict[str, Any]:
    """Methods that normalise a transformed input with training statistics (FreDect's DCT) fit them first, on the
    centre crops of (up to 2,000 of) the training images, the same for every rank and on resume."""
    n = min(len(train), 2000)
    idx = np.sort(np.random.default_rng([rc.train.seed, 7]).permutation(len(train))[:n])
    prep = Preprocessing(mode="crop", size=rc.recipe.train_crop, mean=tuple(rc.recipe.mean), std=tuple(rc.recipe.std))
    chunks = [idx[i : i + 64] for i in range(0, len(idx), 64)]
    seen = [0]

    def batches():  # counted as read: a method whose fit() loads frozen parts (LGrad's transform) reads none
        for b in iterate_batches(train, chunks, prep, workers=workers):
            if len(b.index):
                seen[0] += len(b.index)
                yield b.x

    network.fit(batches())
    return {"images": seen[0], "crop": rc.recipe.train_crop}


def _check_out(out: Path, info: dict[str, Any], overwrite: bool, d: _Dist) -> dict[str, Any] | None:
    """A new run, or the checkpoint to resume from (only when it was started by the same command)."""
    state_path = out / CHECKPOINT_DIR / CHECKPOINT_NAME
    if overwrite:
        if d.main and out.exists():
            for name in ("config.json", "model.safetensors", "summary.json", "metrics.csv", CHECKPOINT_DIR):
                p = out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        _barrier(d)
        return None
    if (out / "config.json").exists():
        raise FileExistsError(
            f"{out}: already holds a trained run (config.json); choose another --out or pass --overwrite"
        )
    if not state_path.exists():
        return None
    started = json.loads((out / "run.json").read_text(encoding="utf-8")) if (out / "run.json").exists() else {}
    diff = [k for k in _identity(info) if _canon(_identity(started).get(k)) != _canon(_identity(info)[k])]
    if diff:
        raise ValueError(
            f"{state_path}: a checkpoint of a run started differently (not as in run.json: {', '.join(diff)}); "
            "resume with the same command, or pass --overwrite to start again"
        )
    try:
        return torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint: say which file, never start silently
        raise ValueError(f"{state_path}: cannot read the checkpoint ({exc}); remove it to start again") from exc


# Settings that do not change the result: a resumed run may use other values.
_FREE = ("workers", "num_threads", "checkpoint_every")


def _identity(info: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must share with the one that wrote the checkpoint (run.json's keys)."""
    method = info.get("method")
    train = {k: v for k, v in (info.get("train") or {}).items() if k not in _FREE}
    return {"method": method, "network": info.get(str(method)), "recipe": info.get("recipe"), "train": train,
            "data": info.get("data"), "world_size": info.get("world_size")}  # fmt: skip


def _canon(x: Any) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda p: frame.to_csv(p, index=False))


def _errors_frame(errors: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame(sorted(errors.items()), columns=["path", "reason"])


# ---------------------------------------------------------------------------------------------- the loop


def train_network(
    *,
    train_set: ImageSet,
    val_set: ImageSet,
    out: str | os.PathLike[str],
    run_config: PixelRunConfig | None = None,
    method: str = "npr",
    heldout_sets: Sequence[ImageSet] = (),
    progress: bool = True,
    overwrite: bool = False,
) -> PixelTrainResult:
    """Train ``run_config.method`` on images, select the epoch on ``val_set`` (or the held-out generators' sets),
    and write a run folder: run.json, metrics.csv, summary.json, errors.csv, threshold.json, and the network as
    config.json + model.safetensors (loadable by evaluate, export, detect and serve)."""
    rc = run_config or resolve_pixel_config(method)
    cfg, r = rc.train, rc.recipe
    d = _init_dist(cfg.device)
    device = torch.device(cfg.device)
    if device.type == "cuda" and d.on:
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    out = Path(out)
    for role, s in (("training", train_set), ("validation", val_set), *(("held-out", h) for h in heldout_sets)):
        counts = np.bincount(s.labels, minlength=2) if len(s) else np.zeros(2, int)
        if counts.min() == 0:
            raise ValueError(
                f"{s.root}: the {role} set needs real and fake images, got {counts[0]} real and {counts[1]} fake"
            )
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    amp = _amp_dtype(cfg.amp, device)
    run_info = {
        **rc.to_dict(),
        "kind": "network",
        "data": {
            "train": train_set.description,
            "val": val_set.description,
            "heldout": [h.description for h in heldout_sets],
        },
        "world_size": d.world,
    }
    state = _check_out(out, run_info, overwrite, d)
    torch.manual_seed(cfg.seed)
    network = build_network(rc.method, rc.network)
    init = _init_weights(rc, network, d) if state is None else state["init"]
    fitted = None
    if getattr(network, "needs_fit", False) and state is None:
        fitted = _fit_input_statistics(network, train_set, rc, cfg.workers)
    network.to(device)
    if d.on and device.type == "cuda":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    model = (
        nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
        if d.on
        else network
    )
    opt = _optimizer(rc, network.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    selector = EpochSelector(
        metric=cfg.early_stop_metric,
        lr=r.lr,
        min_epochs=cfg.min_epochs,
        patience=r.plateau_patience if r.plateau_patience > 0 else cfg.patience,
        max_epochs=r.epochs,
        decay_on_plateau=r.plateau_patience > 0,
        min_lr=r.min_lr,
        which="held-out" if heldout_sets else "val",
    )
    history: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch, start_step, partial = 1, 0, {"loss_sum": 0.0, "seen": 0, "seconds": 0.0}
    stop_reason = f"reached {r.epochs} epochs"
    if state is not None:
        network.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        selector.load_state_dict(state["selector"])
        history, errors, best_state = list(state["history"]), dict(state["errors"]), state["best_model"]
        start_epoch, start_step, partial = int(state["epoch"]), int(state["step"]), dict(state["partial"])
        _set_rng_state(state["rng"])
        fitted = state.get("fitted")
        if d.main:
            log.info("resuming %s at epoch %d, step %d", out, start_epoch, start_step)
    started = state["started"] if state is not None else datetime.now(UTC).isoformat(timespec="seconds")
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CHECKPOINT_DIR).mkdir(exist_ok=True)
        run_info.update(
            started=started,
            code_revision=code_revision(),
            init=init,
            fitted_input_statistics=fitted,
            amp=str(amp).removeprefix("torch.") if amp else None,
            versions={"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        )
        write_json(out / "run.json", run_info)

    transform = train_transform(rc.recipe)
    prep = test_preprocessing(rc)
    val_idx = _val_positions(val_set, cfg)
    held_idx = [_val_positions(h, cfg) for h in heldout_sets]
    parts = cfg.grad_accum * d.world
    loss_fn = nn.BCEWithLogitsLoss()

    def checkpoint(epoch: int, step: int, part: dict[str, Any]) -> None:
        if not d.main:
            return
        blob = {
            "epoch": epoch,
            "step": step,
            "partial": part,
            "model": {k: v.detach().cpu() for k, v in network.state_dict().items()},
            "best_model": best_state,
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict(),
            "selector": selector.state_dict(),
            "history": history,
            "errors": errors,
            "rng": _rng_state(),
            "init": init,
            "fitted": fitted,
            "started": started,
        }
        atomic_write(out / CHECKPOINT_DIR / CHECKPOINT_NAME, lambda p: torch.save(blob, p))

    epoch = start_epoch
    stopped = False
    while epoch <= r.epochs and not stopped:
        lr = _epoch_lr(rc, epoch, selector)
        for pg in opt.param_groups:
            pg["lr"] = lr
        model.train()
        batches = batch_order(len(train_set), batch_size=r.batch_size, seed=cfg.seed, epoch=epoch)
        mine = [c for b in batches[start_step:] for c in _chunks(b, parts)[d.rank :: d.world]]
        stream = iterate_batches(
            train_set,
            mine,
            transform,
            seed=cfg.seed,
            epoch=epoch,
            workers=cfg.workers,
            pin_memory=device.type == "cuda",
        )
        t0 = time.perf_counter() - partial["seconds"]
        loss_sum, seen = partial["loss_sum"], partial["seen"]
        bar = tqdm(total=len(batches), initial=start_step, desc=f"epoch {epoch}/{r.epochs}", unit="batch",
                   disable=not (progress and d.main), leave=False)  # fmt: skip
        for step in range(start_step, len(batches)):
            opt.zero_grad(set_to_none=True)
            for m in range(cfg.grad_accum):
                chunk = next(stream)
                for i, reason in chunk.errors:
                    errors[str(train_set.paths[i])] = reason
                usable = _all_min(len(chunk.index), d)  # every rank steps together, or none does
                if usable < 2:  # BatchNorm needs two images; an all-bad chunk is skipped by every rank
                    continue
                x, y = chunk.x.to(device, non_blocking=True), chunk.y.to(device, non_blocking=True)
                sync = m == cfg.grad_accum - 1 or not d.on
                ctx = model.no_sync() if not sync else contextlib.nullcontext()
                with ctx, torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = loss_fn(model(x).float(), y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"epoch {epoch}, step {step}: the loss became {loss.item()}; lower the lr")
                scaler.scale(loss / cfg.grad_accum).backward()
                loss_sum += float(loss.detach()) * len(y)
                seen += len(y)
            scaler.step(opt)
            scaler.update()
            bar.update(1)
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < len(batches):
                checkpoint(epoch, step + 1, {"loss_sum": loss_sum, "seen": seen, "seconds": time.perf_counter() - t0})
        bar.close()
        train_s = time.perf_counter() - t0
        loss_sum, seen = _reduce_sum(loss_sum, seen, d)

        verdict = None
        if d.main:
            row, verdict = _validate(network, rc, epoch, lr, selector, val_set, val_idx, heldout_sets, held_idx,
                                     prep, device, amp, errors)  # fmt: skip
            row.update(train_loss=loss_sum / max(seen, 1), train_seconds=train_s,
                       images_per_s=seen / train_s if train_s > 0 else float("nan"))  # fmt: skip
            history.append(json.loads(json.dumps(row, default=float)))  # plain floats: weights_only checkpoints
            if verdict.keep:
                best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
            _write_csv(out / "metrics.csv", pd.DataFrame(history))
            _write_csv(out / "errors.csv", _errors_frame(errors))
            log.info(
                "epoch %d: train loss %.4f, val AP %.4f ACC %.4f%s (%.1f images/s)",
                epoch, row["train_loss"], row["val_ap"], row["val_acc"],
                f", held-out AP {row['heldout_ap']:.4f}" if heldout_sets else "", row["images_per_s"],
            )  # fmt: skip
        verdict = _broadcast(verdict, d)
        _broadcast_selector(selector, d)  # every rank needs the plateau decays for the next epoch's lr
        if verdict.stop:
            stop_reason, stopped = verdict.stop, True
        epoch += 1
        start_step, partial = 0, {"loss_sum": 0.0, "seen": 0, "seconds": 0.0}
        if not stopped:
            checkpoint(epoch, 0, partial)
        _barrier(d)

    result = None
    if d.main:
        result = _finish(out, network, rc, best_state, selector, history, errors, stop_reason, started, run_info,
                         val_set, prep, device, amp, init)  # fmt: skip
    _barrier(d)
    if d.on:
        dist.destroy_process_group()
    if result is None:  # other ranks: the run folder is rank 0's
        network.load_state_dict(best_state or network.state_dict())
        return PixelTrainResult(out, network, selector.best_epoch, selector.best_score, stop_reason,
                                pd.DataFrame(history), _errors_frame(errors))  # fmt: skip
    return result


def _reduce_sum(loss_sum: float, seen: int, d: _Dist) -> tuple[float, int]:
    if not d.on:
        return loss_sum, seen
    t = torch.tensor([loss_sum, float(seen)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0]), int(t[1])


def _broadcast_selector(selector: EpochSelector, d: _Dist) -> EpochSelector:
    state = _broadcast(selector.state_dict() if d.main else None, d)
    selector.load_state_dict(state)
    return selector


def _val_positions(s: ImageSet, cfg) -> np.ndarray:
    """All positions, or a seeded class-balanced subset of at most ``val_max_samples``."""
    if cfg.val_max_samples <= 0 or len(s) <= cfg.val_max_samples:
        return np.arange(len(s))
    per_class = max(1, cfg.val_max_samples // 2)
    gens = np.zeros(len(s), dtype=object)
    gens[:] = "all"
    return np.sort(balanced_indices(s.labels, gens, seed=cfg.seed, max_per_class=per_class))


def _scored_metrics(network, s: ImageSet, idx, prep, device, amp, errors, name: str) -> dict[str, float]:
    res = predict_images(network, s, prep, indices=idx, device=device, autocast=amp)
    for i, reason in res.errors:
        errors[str(s.paths[i])] = reason
    return binary_metrics(s.labels[res.positions], res.scores, name=name)


def _validate(network, rc, epoch, lr, selector, val_set, val_idx, held, held_idx, prep, device, amp, errors):
    val = _scored_metrics(network, val_set, val_idx, prep, device, amp, errors, f"validation set {val_set.root}")
    heldout: dict[str, float] = {}
    if held:
        per = [
            _scored_metrics(network, h, i, prep, device, amp, errors, f"held-out validation set {h.root}")
            for h, i in zip(held, held_idx, strict=True)
        ]
        heldout = {k: float(np.mean([m[k] for m in per])) for k in ("loss", "ap", "acc")}
    verdict = selector.update(epoch, heldout or val)
    row = {
        "epoch": epoch,
        "lr": lr,
        **{f"val_{k}": v for k, v in val.items() if k not in ("n_real", "n_fake")},
        **{f"heldout_{k}": v for k, v in heldout.items()},
    }
    return row, verdict


def _finish(out, network, rc, best_state, selector, history, errors, stop_reason, started, run_info, val_set, prep,
            device, amp, init) -> PixelTrainResult:  # fmt: skip
    if best_state is not None:
        network.load_state_dict(best_state)
    network.eval()
    summary = {
        "best_epoch": selector.best_epoch,
        "early_stop_metric": selector.metric,
        "selected_on": "heldout" if selector.which == "held-out" else "val",
        "best_score": selector.best_score,
        "stop_reason": stop_reason,
        "epochs_run": len(history),
        "val": {k[4:]: v for k, v in history[selector.best_epoch - 1].items() if k.startswith("val_")}
        if selector.best_epoch
        else {},
        "unusable_images": len(errors),
        "init": init["method"],
    }
    write_json(out / "summary.json", summary)
    _write_csv(out / "errors.csv", _errors_frame(errors))
    res = predict_images(network, val_set, prep, device=device, autocast=amp)
    record = calibration_record(
        val_set.labels[res.positions], res.scores, source=str(val_set.root), name=f"validation set {val_set.root}"
    )
    write_threshold(out, record)
    save_network(
        out,
        network,
        method=rc.method,
        config=rc.network,
        preprocessing=prep,
        init=init,
        threshold=0.5,
        extra={
            "provenance": {
                "train": run_info["data"]["train"],
                "val": run_info["data"]["val"],
                "trained": started,
                "code_revision": run_info.get("code_revision"),
                "best_epoch": selector.best_epoch,
            }
        },
    )
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)  # complete: config.json now marks the run as done
    return PixelTrainResult(
        out,
        network,
        selector.best_epoch,
        selector.best_score,
        stop_reason,
        pd.DataFrame(history),
        _errors_frame(errors),
    )
