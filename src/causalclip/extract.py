"""Images -> cached features: sharded, resumable, streaming, and honest about every input it could not use.

An extraction job writes into one folder::

    OUT/
      job.json                    what the features are (backbone, preprocessing, perturbation, precision)
      plan.parquet                every image to extract, in a fixed order (row i = plan row i)
      parts/shard-00000.json      written LAST for each shard: the marker that the shard is complete
      parts/samples-00000.parquet the shard's images that decoded, with their plan row
      parts/errors-00000.parquet  the shard's images that did not, with the reason
      features-00000.npy          the shard's vectors, row-aligned with parts/samples-00000.parquet
      ...
      samples.parquet, meta.json  the feature set (written when every shard is complete)
      errors.csv                  every input not used: path, stage, reason

Shard k holds plan rows [k * shard_size, (k+1) * shard_size). Each file is written atomically and the marker
last, so a job killed at any moment loses at most the shards in flight; running the same command again
redoes exactly those. Running it with a different backbone, preprocessing, perturbation or precision is
refused. New images found on a later run are appended to the plan (and to the set).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .backbones import Backbone, uncompiled
from .cpu_pool import PoolError, cpu_pool_batches, default_processes, forward_fixed
from .features import FeatureSetError, atomic_write, open_feature_set
from .imageio import DEFAULT_MAX_PIXELS, Augmentation, ImageDecodeError, Perturbation, Preprocessing, load_rgb

__all__ = ["ExtractConfig", "ExtractError", "ExtractResult", "extract"]

log = logging.getLogger("causalclip")

# Keys of job.json that must match for rows to be added to an existing set.
IDENTITY_KEYS = (
    "backbone",
    "preprocessing",
    "perturbation",
    "augmentation",
    "precision",
    "storage_dtype",
    "shard_size",
)


class ExtractError(RuntimeError):
    """An extraction job cannot run (e.g. its output folder holds features made differently)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    batch_size: int = 8  # best for ViT-L/14 in bf16 on the 2-core CPU (docs/benchmarks.md); use 256 on a GPU
    shard_size: int = 4096
    # DataLoader worker processes that decode and preprocess while the backbone computes (0 = in-process).
    workers: int = 1
    # CPU only: processes that each hold a copy of the backbone and take the next batch when free, decoding it
    # themselves (``workers`` is then unused); threads per process = usable cores // processes. "auto": one per
    # core up to 4 (causalclip.cpu_pool; 1.3-1.8x faster than one 2-thread process on the development VM).
    processes: int | Literal["auto"] = 1
    storage_dtype: Literal["float16", "float32"] = "float16"
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class ExtractResult:
    out: Path
    n_planned: int
    n_ok: int
    errors: pd.DataFrame  # path, stage, reason: every input not used (decode errors and ignored files)
    n_extracted_now: int  # images processed by this call (0 when everything was already done)
    seconds: float  # wall time of the extraction, start-up of worker processes included
    # worker processes (processes > 1): seconds until every one had loaded (and compiled) its backbone, and the
    # images that were processed after that moment
    startup_seconds: float = 0.0
    n_after_startup: int | None = None

    @property
    def images_per_s(self) -> float:
        """End to end: every image of this call over the whole wall time."""
        return self.n_extracted_now / self.seconds if self.seconds > 0 else float("nan")

    @property
    def steady_images_per_s(self) -> float:
        """Once every worker process was ready (the same as ``images_per_s`` with one process; NaN when the job
        ended before every worker was ready, e.g. a small job where one worker did all the batches)."""
        n = self.n_extracted_now if self.n_after_startup is None else self.n_after_startup
        dt = self.seconds - self.startup_seconds
        return n / dt if dt > 0 else float("nan")


class _Images(Dataset):
    """Plan rows -> (row, pixels (3, S, S) float32 | None, error reason | None); never raises for a bad file."""

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        prep: Preprocessing,
        pert: Perturbation,
        max_pixels: int,
        augmentation: tuple[Augmentation, int] | None = None,
    ):
        self.root, self.paths, self.prep, self.pert, self.max_pixels = root, paths, prep, pert, max_pixels
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        return self.decode(row, self.paths[row])

    def decode(self, row: int, path: str):
        try:
            rgb = load_rgb(self.root / path, max_pixels=self.max_pixels)
            if not self.pert.is_identity:
                rgb = self.pert.apply(rgb)
            if self.augmentation is not None:  # one fixed draw per plan row: resumes reproduce it
                aug, seed = self.augmentation
                rgb = aug.apply(rgb, seed=seed, index=row)
            return row, torch.from_numpy(self.prep(rgb)), None
        except ImageDecodeError as exc:
            return row, None, exc.reason


def _collate(items):
    rows = [r for r, x, _ in items if x is not None]
    pixels = torch.stack([x for _, x, _ in items if x is not None]) if rows else None
    errors = [(r, e) for r, x, e in items if x is None]
    return rows, pixels, errors


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _shard_name(k: int) -> str:
    return f"{k:05d}"


class _LocalFolder:
    """The job folder on a local disk. The job steps below read and write through this small interface (exists,
    read, write whole files, makedirs); the Ray engine passes its URI folder (pyarrow/fsspec) instead, so both
    engines write the same files with the same code."""

    local = True

    def __init__(self, out: Path) -> None:
        self.base = out
        self.uri = str(out)

    def exists(self, name: str) -> bool:
        return (self.base / name).exists()

    def read(self, name: str) -> bytes:
        return (self.base / name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        atomic_write(self.base / name, lambda p: p.write_bytes(data))

    def makedirs(self, name: str = "") -> None:
        (self.base / name).mkdir(parents=True, exist_ok=True)


def _prepare_plan(f, samples: pd.DataFrame, identity: dict[str, Any]) -> pd.DataFrame:
    """Create or extend plan.parquet after checking job.json; returns the plan."""
    if f.exists("job.json"):
        try:
            old = json.loads(f.read("job.json").decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise ExtractError(f"{f.uri}/job.json: unreadable ({exc}); remove the folder to start over") from exc
        for key in IDENTITY_KEYS:
            if old.get(key) != identity.get(key):
                raise ExtractError(
                    f"{f.uri}: already holds features made with a different {key} ({old.get(key)!r}, this run: "
                    f"{identity.get(key)!r}); refusing to mix them. Use another --out."
                )
    cols = list(samples.columns)
    if f.exists("plan.parquet"):
        plan = pd.read_parquet(io.BytesIO(f.read("plan.parquet")))
        key = ["path", "generator", "label"]
        merged = samples.merge(plan[key].drop_duplicates(), on=key, how="left", indicator=True)
        new = samples[(merged["_merge"] == "left_only").to_numpy()]
        if len(new):
            log.info("%d new image(s) appended to the plan of %s", len(new), f.uri)
            plan = pd.concat([plan, new[cols]], ignore_index=True)
            f.write("plan.parquet", _parquet_bytes(plan))
    else:
        f.makedirs()
        plan = samples[cols].reset_index(drop=True)
        f.write("plan.parquet", _parquet_bytes(plan))
    f.write("job.json", _json_bytes(identity))
    f.makedirs("parts")
    return plan


def _shard_done(f, k: int, start: int, stop: int) -> bool:
    name = _shard_name(k)
    if not f.exists(f"parts/shard-{name}.json"):
        return False
    try:
        info = json.loads(f.read(f"parts/shard-{name}.json").decode("utf-8"))
    except (OSError, ValueError):
        return False
    if (info.get("start"), info.get("stop")) != (start, stop):
        return False  # the plan grew since this shard was written: redo it with its new range
    return info["n_ok"] == 0 or f.exists(f"features-{name}.npy")


def _write_shard(f, k: int, start: int, stop: int, plan: pd.DataFrame, rows, feats, errors) -> None:
    name = _shard_name(k)
    errors = sorted(errors)  # batches may complete in any order (several processes): keep plan order
    order = np.argsort(rows)
    rows = np.asarray(rows, dtype=np.int64)[order]
    samples = plan.iloc[rows].assign(plan_row=rows)
    err = pd.DataFrame(
        {"path": [plan["path"].iloc[r] for r, _ in errors], "stage": "decode", "reason": [e for _, e in errors]}
    )
    f.write(f"parts/samples-{name}.parquet", _parquet_bytes(samples))
    f.write(f"parts/errors-{name}.parquet", _parquet_bytes(err))
    if len(rows):
        arr = np.concatenate(feats)[order]
        bad = ~np.isfinite(arr).all(axis=1)
        if not f.local and bad.any():  # a local folder is validated whole by _assemble; a remote one here
            first = int(rows[np.argmax(bad)])
            raise FeatureSetError(
                f"{f.uri}/features-{name}.npy: {int(bad.sum())} vector(s) contain NaN or inf, first at plan row "
                f"{first} ({plan['path'].iloc[first]})"
            )
        f.write(f"features-{name}.npy", _npy_bytes(arr))
    info = {"start": start, "stop": stop, "n_ok": len(rows), "n_failed": len(errors)}
    f.write(f"parts/shard-{name}.json", _json_bytes(info))


def _assemble(
    f, n_shards: int, identity: dict[str, Any], dim: int, ignored: pd.DataFrame | None, *, check_header=None
) -> tuple[int, pd.DataFrame]:
    """Write samples.parquet, meta.json and errors.csv from the completed shards; validate the result (a local
    folder fully; elsewhere each shard's .npy header through ``check_header(f, name, rows, dim, dtype)``)."""
    samples, errors, shards = [], [], []
    for k in range(n_shards):
        name = _shard_name(k)
        info = json.loads(f.read(f"parts/shard-{name}.json").decode("utf-8"))
        errors.append(pd.read_parquet(io.BytesIO(f.read(f"parts/errors-{name}.parquet"))))
        if info["n_ok"]:
            part = pd.read_parquet(io.BytesIO(f.read(f"parts/samples-{name}.parquet")))
            if check_header is not None and not f.local:
                check_header(f, f"features-{name}.npy", len(part), dim, identity["storage_dtype"])
            samples.append(part)
            shards.append(f"features-{name}.npy")
    err = pd.concat(
        [e for e in errors if len(e)] or [pd.DataFrame(columns=["path", "stage", "reason"])], ignore_index=True
    )
    if ignored is not None and len(ignored):
        err = pd.concat([ignored.assign(stage="listing")[["path", "stage", "reason"]], err], ignore_index=True)
    f.write("errors.csv", err.to_csv(index=False).encode("utf-8"))
    if not samples:
        raise ExtractError(f"{f.uri}: no image could be used ({len(err)} errors, see {f.uri}/errors.csv)")
    table = pd.concat(samples, ignore_index=True)
    f.write("samples.parquet", _parquet_bytes(table))
    meta = {
        **{k: identity[k] for k in ("backbone", "preprocessing", "perturbation", "augmentation", "precision", "root")},
        "dim": dim,
        "dtype": identity["storage_dtype"],
        "shards": shards,
        "count": len(table),
        "n_errors": len(err),
    }
    f.write("meta.json", _json_bytes(meta))
    if f.local:
        open_feature_set(f.base, check_finite=True)
    return len(table), err


def _loader(dataset: _Images, batches: list[list[int]], cfg: ExtractConfig, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=cfg.workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if cfg.workers > 0 else None,
    )


def _computed(backbone: Backbone, loader: DataLoader, device: torch.device, storage: np.dtype, fixed: int | None):
    """(rows, features in the storage dtype | None, errors) per batch, computed in this process; batches padded
    to ``fixed`` rows when given (a compiled backbone)."""
    backbone.eval()
    with torch.inference_mode():
        for rows, pixels, errors in loader:
            if not rows:
                yield rows, None, errors
                continue
            feats = forward_fixed(backbone, pixels.to(device, non_blocking=True), fixed)
            yield rows, feats.cpu().numpy().astype(storage), errors


def _check_request(samples: pd.DataFrame, cfg: ExtractConfig) -> None:
    for col in ("path", "label", "generator"):
        if col not in samples.columns:
            raise ExtractError(f"the sample list lacks column {col!r}")
    if cfg.batch_size <= 0 or cfg.shard_size <= 0:
        raise ExtractError("batch_size and shard_size must be positive")
    if cfg.processes != "auto" and (not isinstance(cfg.processes, int) or cfg.processes < 1):
        raise ExtractError(f"processes must be a positive integer or 'auto', got {cfg.processes!r}")


def _job_identity(
    backbone: Backbone,
    pert: Perturbation,
    augmentation: Augmentation | None,
    augment_seed: int,
    cfg: ExtractConfig,
    root: str,
) -> dict[str, Any]:
    """job.json: what the features are; both engines write it the same way."""
    return {
        "backbone": backbone.describe(),
        "preprocessing": backbone.preprocessing.to_dict(),
        "perturbation": pert.to_dict(),
        "augmentation": None if augmentation is None else {**augmentation.to_dict(), "seed": augment_seed},
        "precision": getattr(backbone, "precision", "float32"),
        "storage_dtype": cfg.storage_dtype,
        "shard_size": cfg.shard_size,
        "root": root,
    }


def extract(
    samples: pd.DataFrame,
    *,
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    backbone: Backbone,
    perturbation: Perturbation | None = None,
    augmentation: Augmentation | None = None,
    augment_seed: int = 0,
    config: ExtractConfig | None = None,
    ignored: pd.DataFrame | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    engine: Literal["local", "ray"] = "local",
    ray_options: Any = None,
) -> ExtractResult:
    """Extract features of ``samples`` (columns path, label, generator; paths relative to ``root``) into ``out``.

    ``perturbation`` is applied to every image (robustness sweeps); ``augmentation`` draws one CNNDetection-style
    blur/JPEG augmentation per image from (``augment_seed``, plan row), applied after the perturbation.
    Resumable: completed shards are kept and the rest is done. ``ignored`` (path, reason) lists files the
    listing step did not use; they are reported in errors.csv with the decode errors. Returns the counts and the
    error table; a set with at least one usable image is always written.

    ``engine="ray"`` runs the same job on a Ray cluster (``causalclip.ray_engine``, options in ``ray_options``, a
    ``RayOptions``): same folder, files and rows, and either engine resumes the other's work. It also reads
    images and writes ``out`` by URI (s3://, gs://, file://); the local engine takes local paths only.
    """
    if engine == "ray":
        from .ray_engine import extract_ray

        return extract_ray(
            samples,
            root=root,
            out=out,
            backbone=backbone,
            perturbation=perturbation,
            augmentation=augmentation,
            augment_seed=augment_seed,
            config=config,
            ignored=ignored,
            device=device,
            progress=progress,
            options=ray_options,
        )
    if engine != "local":
        raise ExtractError(f"engine must be 'local' or 'ray', got {engine!r}")
    cfg = config or ExtractConfig()
    pert = perturbation or Perturbation()
    _check_request(samples, cfg)
    for what, value in (("root", root), ("out", out)):
        if "://" in os.fspath(value):
            raise ExtractError(
                f"{what} {os.fspath(value)!r} is a URI; the local engine takes local paths (use engine='ray')"
            )
    if samples["path"].astype(str).str.contains("://", regex=False).any():
        raise ExtractError(
            "the sample list holds URI paths (s3://, ...); the local engine reads local files only (use engine='ray')"
        )
    out, root = Path(out), Path(root)
    identity = _job_identity(backbone, pert, augmentation, augment_seed, cfg, str(root))
    folder = _LocalFolder(out)
    plan = _prepare_plan(folder, samples, identity)
    n = len(plan)
    n_shards = (n + cfg.shard_size - 1) // cfg.shard_size
    ranges = [(k, k * cfg.shard_size, min((k + 1) * cfg.shard_size, n)) for k in range(n_shards)]
    todo = [(k, a, b) for k, a, b in ranges if not _shard_done(folder, k, a, b)]
    batches = [list(range(i, min(i + cfg.batch_size, b))) for _, a, b in todo for i in range(a, b, cfg.batch_size)]
    n_todo = sum(b - a for _, a, b in todo)
    if n_todo < n:
        log.info(
            "%s: %d of %d shards already complete; extracting the remaining %d images",
            out,
            n_shards - len(todo),
            n_shards,
            n_todo,
        )

    device = torch.device(device)
    aug = None if augmentation is None else (augmentation, augment_seed)
    dataset = _Images(root, plan["path"].tolist(), backbone.preprocessing, pert, cfg.max_pixels, aug)
    processes = default_processes(device) if cfg.processes == "auto" else cfg.processes
    if device.type != "cpu":
        processes = 1
    storage = np.dtype(cfg.storage_dtype)
    done, ready = [0], {}

    def on_ready() -> None:
        ready.update(t=time.perf_counter(), n=done[0])

    if processes > 1 and batches:  # data-parallel CPU processes (causalclip.cpu_pool)
        paths = dataset.paths
        source = cpu_pool_batches(
            backbone,
            [(b, [paths[r] for r in b]) for b in batches],
            processes=processes,
            decode=_Images(root, [], backbone.preprocessing, pert, cfg.max_pixels, aug).decode,
            collate=_collate,
            storage=cfg.storage_dtype,
            batch_size=cfg.batch_size,
            on_ready=on_ready,
        )
    else:
        fixed = cfg.batch_size if uncompiled(backbone)[1] else None
        source = _computed(backbone, _loader(dataset, batches, cfg, device), device, storage, fixed)
    pending = {k: {"rows": [], "feats": [], "errors": [], "seen": 0, "start": a, "stop": b} for k, a, b in todo}
    shard_of = {k: (a, b) for k, a, b in todo}
    dim = getattr(backbone, "dim", None)
    t0 = time.perf_counter()
    bar = tqdm(total=n_todo, unit="img", desc=f"extract -> {out.name}", disable=not progress, smoothing=0.1)
    try:
        for rows, feats, errors in source:
            first = rows[0] if rows else errors[0][0]
            k = first // cfg.shard_size
            acc = pending[k]
            if rows:
                dim = feats.shape[1]
                acc["rows"].extend(rows)
                acc["feats"].append(feats)
            acc["errors"].extend(errors)
            acc["seen"] += len(rows) + len(errors)
            for r, reason in errors:
                log.warning("%s: %s", root / plan["path"].iloc[r], reason)
            bar.update(len(rows) + len(errors))
            done[0] += len(rows) + len(errors)
            a, b = shard_of[k]
            if acc["seen"] == b - a:
                _write_shard(folder, k, a, b, plan, acc["rows"], acc["feats"], acc["errors"])
                del pending[k]
    except PoolError as exc:
        raise ExtractError(f"{out}: {exc}\nCompleted shards are kept: run the same command again to resume.") from exc
    finally:  # on any error here (a shard that cannot be written, Ctrl-C): stop the worker processes now
        source.close()
    bar.close()
    seconds = time.perf_counter() - t0
    if dim is None:  # nothing computed in this call: read the dim from a completed shard
        dim = backbone.dim
    n_ok, err = _assemble(folder, n_shards, identity, dim, ignored)
    return ExtractResult(
        out=out,
        n_planned=n,
        n_ok=n_ok,
        errors=err,
        n_extracted_now=n_todo,
        seconds=seconds,
        # several processes, but the job ended before every one was ready: no steady-state figure (NaN)
        startup_seconds=ready["t"] - t0 if ready else (seconds if processes > 1 and batches else 0.0),
        n_after_startup=n_todo - ready["n"] if ready else (0 if processes > 1 and batches else None),
    )
