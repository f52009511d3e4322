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

import copy
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..backbones.base import Backbone, uncompiled
from ..images.decode import ImageDecodeError, load_rgb
from ..images.transforms import Augmentation, Perturbation, Preprocessing
from .cpu_pool import PoolError, cpu_pool_batches, forward_fixed
from .job import (
    ExtractConfig,
    ExtractError,
    ExtractResult,
    LocalFolder,
    assemble,
    check_request,
    job_identity,
    prepare_plan,
    shard_done,
    write_shard,
)

__all__ = ["extract"]

log = logging.getLogger("causalclip")


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

    ``engine="ray"`` runs the same job on a Ray cluster (``causalclip.features.ray_engine``, options in ``ray_options``, a
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
    check_request(samples, cfg)
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
    identity = job_identity(backbone, pert, augmentation, augment_seed, cfg, str(root))
    folder = LocalFolder(out)
    plan = prepare_plan(folder, samples, identity)
    n = len(plan)
    n_shards = (n + cfg.shard_size - 1) // cfg.shard_size
    ranges = [(k, k * cfg.shard_size, min((k + 1) * cfg.shard_size, n)) for k in range(n_shards)]
    todo = [(k, a, b) for k, a, b in ranges if not shard_done(folder, k, a, b)]
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
    processes, compile_ = cfg.resolved(n_todo, len(batches), device)
    plain, was_compiled = uncompiled(backbone)
    compile_ = compile_ and "model" in plain._modules  # weight-free forensic backbones have no network to compile
    if compile_ and not was_compiled and processes == 1:  # a compiled copy; the caller's backbone is left as it is
        backbone = copy.copy(plain)
        backbone._modules = {**plain._modules, "model": torch.compile(plain.model)}
    compiled = compile_ or was_compiled
    storage = np.dtype(cfg.storage_dtype)
    done, ready = [0], {}

    def on_ready() -> None:
        ready.update(t=time.perf_counter(), n=done[0])

    if processes > 1 and batches:  # data-parallel CPU processes (causalclip.features.cpu_pool)
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
            compile=compiled,
        )
    else:
        fixed = cfg.batch_size if compiled else None
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
                write_shard(folder, k, a, b, plan, acc["rows"], acc["feats"], acc["errors"])
                del pending[k]
    except PoolError as exc:
        raise ExtractError(f"{out}: {exc}\nCompleted shards are kept: run the same command again to resume.") from exc
    finally:  # on any error here (a shard that cannot be written, Ctrl-C): stop the worker processes now
        source.close()
    bar.close()
    seconds = time.perf_counter() - t0
    if dim is None:  # nothing computed in this call: read the dim from a completed shard
        dim = backbone.dim
    n_ok, err = assemble(folder, n_shards, identity, dim, ignored)
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
        processes=processes,
        compiled=compiled and bool(batches),
    )
