"""The extraction job folder that every engine (in-process, CPU processes, Ray) writes and resumes: job.json (the
job's identity), plan.parquet (every input in order), shard files with their markers, and the assembled feature set.
The engines differ only in how they compute shards; a folder started by one is finished by another."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from ..backbones.base import Backbone
from ..core.io import atomic_write
from ..images.decode import DEFAULT_MAX_PIXELS
from ..images.transforms import Augmentation, Perturbation
from .cpu_pool import default_processes
from .featureset import FeatureSetError, open_feature_set

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


# ``compile="auto"`` compiles the backbone (torch.compile) for CPU jobs of at least this many images. Compiling costs
# a start-up of 24-54 s and made the bf16 ViT-L/14 forward about 1.4x faster on the 2-core development VM (steady
# 4.26-5.29 images/s compiled against 2.78-3.88 eager with two processes; docs/reports/extraction-speed.md), so it
# pays back after roughly 40 s / (1/3.3 - 1/4.8) s per image ~ 420 images; a GPU job compiles only when asked.
AUTO_COMPILE_MIN_IMAGES = 500
# ``processes="auto"`` starts several backbone processes only for jobs of at least this many images: each worker
# first imports torch and receives its copy of the backbone (a few seconds), which a job of a few batches never
# earns back.
AUTO_PROCESSES_MIN_IMAGES = 64


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    """How an extraction job runs; none of it changes the features (job.json records what does)."""

    # best for ViT-L/14 in bf16 on the 2-core CPU (docs/reports/extraction-speed.md); use 256 on a GPU
    batch_size: int = 8
    shard_size: int = 4096
    # DataLoader worker processes that decode and preprocess while the backbone computes (0 = in-process).
    workers: int = 1
    # CPU only: processes that each hold a copy of the backbone and take the next batch when free, decoding it
    # themselves (``workers`` is then unused); threads per process = usable cores // processes. "auto": one per
    # core up to 4, never more than there are batches, and one for jobs under AUTO_PROCESSES_MIN_IMAGES images
    # (causalclip.features.cpu_pool; 1.3-1.8x faster than one 2-thread process on the development VM); 1 on a GPU.
    processes: int | Literal["auto"] = "auto"
    # torch.compile the backbone for this job: "auto" compiles CPU jobs of at least AUTO_COMPILE_MIN_IMAGES images
    # still to extract. A backbone that was compiled when loaded stays compiled.
    compile: bool | Literal["auto"] = "auto"
    storage_dtype: Literal["float16", "float32"] = "float16"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def resolved(self, n_images: int, n_batches: int, device: torch.device) -> tuple[int, bool]:
        """(processes, compile) for a job of ``n_images`` still to extract in ``n_batches`` batches."""
        if device.type != "cpu":
            processes = 1
        elif self.processes == "auto":
            processes = 1 if n_images < AUTO_PROCESSES_MIN_IMAGES else max(1, min(default_processes(device), n_batches))
        else:
            processes = self.processes
        if self.compile == "auto":
            compile_ = device.type == "cpu" and n_images >= AUTO_COMPILE_MIN_IMAGES
        else:
            compile_ = bool(self.compile)
        return processes, compile_


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
    processes: int = 1  # backbone processes this call used
    compiled: bool = False  # whether the backbone ran compiled in this call

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


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def shard_name(k: int) -> str:
    return f"{k:05d}"


class LocalFolder:
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


def prepare_plan(f, samples: pd.DataFrame, identity: dict[str, Any]) -> pd.DataFrame:
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
            f.write("plan.parquet", parquet_bytes(plan))
    else:
        f.makedirs()
        plan = samples[cols].reset_index(drop=True)
        f.write("plan.parquet", parquet_bytes(plan))
    f.write("job.json", json_bytes(identity))
    f.makedirs("parts")
    return plan


def shard_done(f, k: int, start: int, stop: int) -> bool:
    name = shard_name(k)
    if not f.exists(f"parts/shard-{name}.json"):
        return False
    try:
        info = json.loads(f.read(f"parts/shard-{name}.json").decode("utf-8"))
    except (OSError, ValueError):
        return False
    if (info.get("start"), info.get("stop")) != (start, stop):
        return False  # the plan grew since this shard was written: redo it with its new range
    return info["n_ok"] == 0 or f.exists(f"features-{name}.npy")


def write_shard(f, k: int, start: int, stop: int, plan: pd.DataFrame, rows, feats, errors) -> None:
    name = shard_name(k)
    errors = sorted(errors)  # batches may complete in any order (several processes): keep plan order
    order = np.argsort(rows)
    rows = np.asarray(rows, dtype=np.int64)[order]
    samples = plan.iloc[rows].assign(plan_row=rows)
    err = pd.DataFrame(
        {"path": [plan["path"].iloc[r] for r, _ in errors], "stage": "decode", "reason": [e for _, e in errors]}
    )
    f.write(f"parts/samples-{name}.parquet", parquet_bytes(samples))
    f.write(f"parts/errors-{name}.parquet", parquet_bytes(err))
    if len(rows):
        arr = np.concatenate(feats)[order]
        bad = ~np.isfinite(arr).all(axis=1)
        if not f.local and bad.any():  # a local folder is validated whole by assemble; a remote one here
            first = int(rows[np.argmax(bad)])
            raise FeatureSetError(
                f"{f.uri}/features-{name}.npy: {int(bad.sum())} vector(s) contain NaN or inf, first at plan row "
                f"{first} ({plan['path'].iloc[first]})"
            )
        f.write(f"features-{name}.npy", npy_bytes(arr))
    info = {"start": start, "stop": stop, "n_ok": len(rows), "n_failed": len(errors)}
    f.write(f"parts/shard-{name}.json", json_bytes(info))


def assemble(
    f, n_shards: int, identity: dict[str, Any], dim: int, ignored: pd.DataFrame | None, *, check_header=None
) -> tuple[int, pd.DataFrame]:
    """Write samples.parquet, meta.json and errors.csv from the completed shards; validate the result (a local
    folder fully; elsewhere each shard's .npy header through ``check_header(f, name, rows, dim, dtype)``)."""
    samples, errors, shards = [], [], []
    for k in range(n_shards):
        name = shard_name(k)
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
    f.write("samples.parquet", parquet_bytes(table))
    meta = {
        **{k: identity[k] for k in ("backbone", "preprocessing", "perturbation", "augmentation", "precision", "root")},
        "dim": dim,
        "dtype": identity["storage_dtype"],
        "shards": shards,
        "count": len(table),
        "n_errors": len(err),
    }
    f.write("meta.json", json_bytes(meta))
    if f.local:
        open_feature_set(f.base, check_finite=True)
    return len(table), err


def check_request(samples: pd.DataFrame, cfg: ExtractConfig) -> None:
    for col in ("path", "label", "generator"):
        if col not in samples.columns:
            raise ExtractError(f"the sample list lacks column {col!r}")
    if cfg.batch_size <= 0 or cfg.shard_size <= 0:
        raise ExtractError("batch_size and shard_size must be positive")
    if cfg.processes != "auto" and (not isinstance(cfg.processes, int) or cfg.processes < 1):
        raise ExtractError(f"processes must be a positive integer or 'auto', got {cfg.processes!r}")
    if cfg.compile not in ("auto", True, False):
        raise ExtractError(f"compile must be True, False or 'auto', got {cfg.compile!r}")


def job_identity(
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
