"""Feature extraction on a Ray cluster: ``extract(..., engine="ray")`` and ``causalclip extract --engine ray``.

The job is the local engine's (``causalclip.features.extract``): the same job.json, plan.parquet, shard files and markers,
errors.csv and feature set, so either engine resumes the other's work and the two give the same rows. What
changes is who does the work:

* Ray Data reads the plan rows of the shards still to do, and decodes them in parallel CPU tasks, to uint8
  crops (a quarter of the bytes float pixels would move through the object store).
* A fixed pool of actors (one per GPU, or CPU actors) holds the frozen backbone; each normalises its batch with
  the preprocessing's own lookup table (bit-identical to ``Preprocessing``) and embeds it.
* The driver receives (plan row, vector or error) and writes each shard, then its marker, once every row of the
  shard is in: for a local folder with the local engine's own writer, for a URI (s3://, gs://, file://) through
  a pyarrow filesystem, each file written whole (atomic rename on local disks; one PUT on object stores).

Fault tolerance: Ray restarts a dead actor and retries its batch (Ray Data's defaults); a row that arrives twice
is dropped by plan row; the driver writes a shard only when each of its rows is in exactly once. What dies with
the driver is redone by the next run, from the markers.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..backbones.base import Backbone, resolve_precision
from ..backbones.registry import load_backbone
from ..images.decode import ImageDecodeError, load_rgb, read_image_bytes
from ..images.transforms import Augmentation, Perturbation, Preprocessing, normalise_lut
from .featureset import FeatureSetError
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

__all__ = ["RayOptions", "actor_precision", "extract_ray"]

log = logging.getLogger("causalclip")

_SHORT_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RayOptions:
    """How the Ray engine uses the cluster. Batch and shard sizes, storage dtype and max_pixels: ExtractConfig."""

    # ray.init(address=...) when Ray is not initialised yet: "auto" joins the cluster this machine belongs to
    # (`ray start`), "ray://head:10001" a remote one; None: $RAY_ADDRESS if set, else a new single-machine Ray.
    address: str | None = None
    # Backbone actors; None: one per GPU with GPU actors, half the cluster's CPUs (over cpus_per_actor) otherwise.
    actors: int | None = None
    # GPUs per actor (0: CPU actors; 0.5: two actors share a GPU); None: 1 if the device is cuda, else 0.
    gpus_per_actor: float | None = None
    # CPUs reserved per actor; CPU actors also run this many torch threads.
    cpus_per_actor: float = 1.0
    decode_rows: int = 256  # images per decode task (one Ray Data block: 256 x 224 x 224 x 3 bytes = 38 MB)
    # load_backbone keyword arguments (model, kind, feature, ...) each actor loads its backbone with, on its own
    # device, in the driver's backbone's precision. None: the driver's backbone object itself is sent to the actors
    # through the object store and moved to their device as it is (any Backbone, even one not made by
    # load_backbone).
    backbone_args: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.actors is not None and (
            isinstance(self.actors, bool) or int(self.actors) != self.actors or self.actors <= 0
        ):
            raise ExtractError(f"RayOptions.actors must be a positive integer or None, got {self.actors!r}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ExtractError(f"RayOptions.gpus_per_actor must be >= 0, got {self.gpus_per_actor!r}")
        if self.cpus_per_actor <= 0 or self.decode_rows <= 0:
            raise ExtractError("RayOptions.cpus_per_actor and decode_rows must be positive")


def actor_precision(precision: str, device: str | torch.device) -> str:
    """Resolve ``precision`` ("auto", ...) for the actors' device on a driver that may not have that device.

    "auto" for cuda actors is bf16 when the driver has no GPU to ask (Ampere or newer; pass fp16 for V100/T4).
    """
    device = torch.device(device)
    if precision == "auto" and device.type == "cuda" and not torch.cuda.is_available():
        return "bf16"
    return _SHORT_PRECISION[str(resolve_precision(precision, device)).removeprefix("torch.")]


# ----------------------------------------------------------------------------------------- paths and files


def _is_uri(path: str) -> bool:
    return "://" in path


def _filesystem(uri: str):
    """(pyarrow FileSystem, path inside it) for a URI: pyarrow's own (file, s3, gs, hdfs, ...), else fsspec's."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except pa.ArrowInvalid as exc:
        if "nrecognized filesystem" not in str(exc):  # a malformed URI, not an unknown scheme
            raise ExtractError(f"{uri}: {exc}") from exc
    except OSError as exc:  # e.g. no credentials or region for a bucket
        raise ExtractError(f"{uri}: cannot open its filesystem: {exc}") from exc
    try:  # a scheme pyarrow does not know: fsspec's (memory://, and whatever fsspec plug-ins are installed)
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ExtractError(f"{uri}: no filesystem for this URI scheme ({exc})") from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


_FS_CACHE: dict[str, tuple[Any, str]] = {}


def _open_uri(uri: str):
    """(filesystem, path) for a URI, with one filesystem client per scheme and bucket in each worker process."""
    scheme, _, rest = uri.partition("://")
    host, slash, key = rest.partition("/")
    prefix = f"{scheme}://{host}"
    if "%" in key or "?" in key or "#" in key:  # percent-encoded or with a query: let the URI parser decode it
        return _filesystem(uri)
    if prefix in _FS_CACHE:
        fs, path_prefix = _FS_CACHE[prefix]
        return fs, path_prefix + slash + key
    fs, path = _filesystem(uri)
    tail = slash + key
    if tail and path.endswith(tail):  # e.g. s3: "bucket" + "/a.png"; file: "" + "/tmp/a.png"
        _FS_CACHE[prefix] = (fs, path[: len(path) - len(tail)])
    return fs, path


def _read_uri(uri: str) -> bytes:
    """The bytes of an image by URI, with the local engine's reasons for I/O failures."""

    def read() -> bytes:
        try:
            fs, path = _open_uri(uri)
        except ExtractError as exc:  # e.g. an unknown scheme: reported like an unreadable file
            raise OSError(str(exc)) from exc
        with fs.open_input_stream(path) as f:
            return f.read()

    return read_image_bytes(uri, read)


def _source(root: str, path: str) -> str:
    """Where plan row's image is: a URI as it is, an absolute local path as it is, else under ``root``."""
    if _is_uri(path):
        return path
    if _is_uri(root):
        return root.rstrip("/") + "/" + path.lstrip("/")
    return str(Path(root) / path)


class _Folder:
    """The job folder at a URI, through a pyarrow filesystem. Each file is written whole: on a local disk to a
    temporary name renamed over the target (atomic), on an object store as one PUT (an object appears complete or
    not at all)."""

    def __init__(self, uri: str) -> None:
        import pyarrow.fs as pafs

        self.uri = uri.rstrip("/")
        self.fs, base = _filesystem(self.uri)
        self.base = base.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, name: str) -> str:
        return f"{self.base}/{name}"

    def exists(self, name: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def read(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def write(self, name: str, data: bytes) -> None:
        target = self.path(name)
        if not self.local:
            with self.fs.open_output_stream(target) as f:
                f.write(data)
            return
        head, _, tail = target.rpartition("/")
        tmp = f"{head}/.{tail}.tmp-{os.getpid()}"
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def makedirs(self, name: str = "") -> None:
        self.fs.create_dir(self.path(name) if name else self.base, recursive=True)


def _check_npy_header(f: _Folder, name: str, rows: int, dim: int, dtype: str) -> None:
    """Shape and dtype of a shard from its .npy header (a few hundred bytes), without downloading it."""
    with f.fs.open_input_file(f.path(name)) as fh:
        head = io.BytesIO(fh.read(4096))
    try:
        version = np.lib.format.read_magic(head)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dt = read(head)
    except ValueError as exc:
        raise FeatureSetError(f"{f.uri}/{name}: not a readable .npy array: {exc}") from exc
    if tuple(shape) != (rows, dim) or dt != np.dtype(dtype):
        raise FeatureSetError(f"{f.uri}/{name}: expected ({rows}, {dim}) {dtype}, found {tuple(shape)} {dt}")


# --------------------------------------------------------------------------------------- Ray Data stages


def _crop(prep: Preprocessing, rgb: np.ndarray) -> np.ndarray:
    """``Preprocessing.__call__`` up to the normalisation: the (S, S, 3) uint8 crop it normalises."""
    crop = prep._centre_crop(rgb) if prep.mode == "crop" else prep._resize_crop(rgb)
    return np.ascontiguousarray(crop)


def _decode(
    batch: dict[str, np.ndarray],
    *,
    prep: Preprocessing,
    pert: Perturbation,
    augmentation: tuple[Augmentation, int] | None,
    max_pixels: int,
) -> dict[str, np.ndarray]:
    """Plan rows -> uint8 crops, with the local engine's per-image steps; a bad file becomes an error row."""
    rows = np.asarray(batch["row"], dtype=np.int64)
    s = prep.size
    pixels = np.zeros((len(rows), s, s, 3), dtype=np.uint8)
    ok = np.zeros(len(rows), dtype=bool)
    reasons = [""] * len(rows)
    for i, (row, src) in enumerate(zip(rows.tolist(), batch["src"], strict=True)):
        src = str(src)
        try:
            data = _read_uri(src) if _is_uri(src) else None
            rgb = load_rgb(src, max_pixels=max_pixels, data=data)
            if not pert.is_identity:
                rgb = pert.apply(rgb)
            if augmentation is not None:
                aug, seed = augmentation
                rgb = aug.apply(rgb, seed=seed, index=row)
            pixels[i] = _crop(prep, rgb)
            ok[i] = True
        except ImageDecodeError as exc:
            reasons[i] = exc.reason
    return {"row": rows, "pixels": pixels, "ok": ok, "reason": np.array(reasons, dtype=object)}


class _Embedder:
    """One backbone per actor: uint8 crops -> normalised pixels -> features in the storage dtype."""

    def __init__(
        self,
        *,
        backbone: Any,
        backbone_args: dict[str, Any] | None,
        identity: dict[str, Any],
        device: str,
        storage_dtype: str,
        threads: int,
    ) -> None:
        import ray

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.device = torch.device(device)
        if backbone_args is not None:
            precision = _SHORT_PRECISION.get(identity["precision"], identity["precision"])
            args = {k: v for k, v in backbone_args.items() if k not in ("device", "precision")}  # the actor's own
            bb = load_backbone(**args, device=self.device, precision=precision)
        else:
            bb = ray.get(backbone) if isinstance(backbone, ray.ObjectRef) else backbone
            bb = bb.to(self.device)
        mine = {
            "backbone": bb.describe(),
            "preprocessing": bb.preprocessing.to_dict(),
            "precision": getattr(bb, "precision", "float32"),
        }
        for key, value in mine.items():
            if value != identity[key]:  # e.g. a node whose copy of the model folder differs from the driver's
                raise ExtractError(
                    f"the backbone on this Ray worker has a different {key} ({value!r}) than the driver's "
                    f"({identity[key]!r}); every node must see the same model"
                )
        self.backbone = bb.eval()
        self.dim = int(bb.dim)
        self.storage = np.dtype(storage_dtype)
        prep = bb.preprocessing
        self.lut = torch.from_numpy(np.array(normalise_lut(prep.mean, prep.std))).to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["ok"], dtype=bool)
        feats = np.zeros((len(ok), self.dim), dtype=self.storage)
        if ok.any():
            crops = torch.from_numpy(np.ascontiguousarray(np.asarray(batch["pixels"])[ok]))
            index = crops.to(self.device, non_blocking=True).permute(0, 3, 1, 2).long()
            channel = torch.arange(3, device=self.device).view(1, 3, 1, 1)
            pixels = self.lut[channel, index]  # a gather: bit-identical to Preprocessing's np.take per channel
            with torch.inference_mode():
                feats[ok] = self.backbone(pixels).cpu().numpy().astype(self.storage)
        return {"row": batch["row"], "ok": ok, "reason": batch["reason"], "feats": feats}


# ------------------------------------------------------------------------------------------------ driver


def _init_ray(options: RayOptions):
    try:
        import ray
    except ImportError as exc:
        raise ExtractError("the Ray engine needs Ray: pip install 'causalclip[ray]'") from exc
    if not ray.is_initialized():
        ray.init(address=options.address, log_to_driver=True)
    return ray


def _failure(exc: BaseException) -> str:
    """The worker's original error line from a Ray error, whose text holds the remote traceback."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    text = text.split("The above exception was the direct cause", 1)[0]  # Ray Data's wrapper comes after it
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    causes = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b", ln)]
    return (causes or lines or [type(exc).__name__])[-1][:500]


def extract_ray(
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
    options: RayOptions | None = None,
) -> ExtractResult:
    """``extract(..., engine="ray")``: the same job, run by Ray Data on the cluster Ray is connected to.

    ``root`` and ``out`` may be local paths or URIs (file://, s3://, gs://, hdfs://, or any fsspec scheme);
    sample paths may be URIs too. ``backbone`` is the driver's copy: it defines the job's identity (and is what
    the actors run when ``options.backbone_args`` is None). ``device`` cuda means GPU actors unless
    ``options.gpus_per_actor`` says otherwise. ``config.workers`` is not used: Ray schedules the decoding.
    """
    opts = options or RayOptions()
    if not isinstance(opts, RayOptions):
        raise ExtractError(
            f"ray_options must be a causalclip.features.ray_engine.RayOptions, got {type(opts).__name__}"
        )
    cfg = config or ExtractConfig()
    pert = perturbation or Perturbation()
    check_request(samples, cfg)
    root_s, out_s = os.fspath(root), os.fspath(out)
    root_id = root_s.rstrip("/") if _is_uri(root_s) else str(Path(root_s))
    identity = job_identity(backbone, pert, augmentation, augment_seed, cfg, root_id)
    folder = _Folder(out_s) if _is_uri(out_s) else LocalFolder(Path(out_s))
    plan = prepare_plan(folder, samples, identity)
    n = len(plan)
    n_shards = (n + cfg.shard_size - 1) // cfg.shard_size
    ranges = [(k, k * cfg.shard_size, min((k + 1) * cfg.shard_size, n)) for k in range(n_shards)]
    todo = [(k, a, b) for k, a, b in ranges if not shard_done(folder, k, a, b)]
    n_todo = sum(b - a for _, a, b in todo)
    if n_todo < n:
        log.info(
            "%s: %d of %d shards already complete; extracting the remaining %d images",
            folder.uri,
            n_shards - len(todo),
            n_shards,
            n_todo,
        )
    t0 = time.perf_counter()
    if todo:
        _run(
            folder, plan, todo, root_id, backbone, identity, pert, augmentation, augment_seed, cfg, device, opts,
            progress,
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    n_ok, err = assemble(folder, n_shards, identity, int(backbone.dim), ignored, check_header=_check_npy_header)
    out_path = folder.base if isinstance(folder, LocalFolder) else folder.uri
    return ExtractResult(out=out_path, n_planned=n, n_ok=n_ok, errors=err, n_extracted_now=n_todo, seconds=seconds)


def _run(
    folder, plan, todo, root, backbone, identity, pert, augmentation, augment_seed, cfg, device, opts, progress
) -> None:
    ray = _init_ray(opts)
    from ray.data import ActorPoolStrategy, DataContext

    cuda = torch.device(device).type == "cuda"
    gpus = opts.gpus_per_actor if opts.gpus_per_actor is not None else (1.0 if cuda else 0.0)
    resources = ray.cluster_resources()
    if gpus > 0 and resources.get("GPU", 0) < gpus:
        raise ExtractError(
            f"GPU actors asked for ({gpus} GPU each) but the Ray cluster has {resources.get('GPU', 0):g} GPU(s); "
            "use device='cpu' / --device cpu for CPU actors"
        )
    if opts.actors is not None:
        actors = int(opts.actors)
    elif gpus > 0:
        actors = max(1, int(resources.get("GPU", 0) // gpus))
    else:
        actors = max(1, int(resources.get("CPU", 1) // (2 * opts.cpus_per_actor)))
    rows = np.concatenate([np.arange(a, b, dtype=np.int64) for _, a, b in todo])
    paths = plan["path"].astype(str).to_numpy()
    table = pd.DataFrame({"row": rows, "src": [_source(root, paths[r]) for r in rows]})
    blocks = [table.iloc[i : i + opts.decode_rows] for i in range(0, len(table), opts.decode_rows)]
    ctx = DataContext.get_current()
    bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = bars and progress
    shipped = None if opts.backbone_args is not None else ray.put(backbone)
    ds = ray.data.from_pandas(blocks).map_batches(
        _decode,
        batch_size=None,
        num_cpus=1,
        fn_kwargs={
            "prep": backbone.preprocessing,
            "pert": pert,
            "augmentation": None if augmentation is None else (augmentation, augment_seed),
            "max_pixels": cfg.max_pixels,
        },
    )
    ds = ds.map_batches(
        _Embedder,
        batch_size=cfg.batch_size,
        compute=ActorPoolStrategy(size=actors),
        num_cpus=opts.cpus_per_actor,
        num_gpus=gpus if gpus > 0 else None,
        fn_constructor_kwargs={
            "backbone": shipped,
            "backbone_args": opts.backbone_args,
            "identity": identity,
            "device": "cuda" if gpus > 0 else "cpu",
            "storage_dtype": cfg.storage_dtype,
            "threads": int(opts.cpus_per_actor),
        },
    )
    log.info("%s: %d images on %d %s actor(s) with Ray", folder.uri, len(rows), actors, "GPU" if gpus > 0 else "CPU")
    try:
        _collect(folder, plan, todo, root, ds, cfg.shard_size, progress)
    finally:
        ctx.enable_progress_bars = bars


def _collect(folder, plan, todo, root, ds, shard_size: int, progress: bool) -> None:
    """Gather the rows of each shard as they stream in; write a shard when each of its rows is in exactly once."""
    pending: dict[int, dict[str, Any]] = {k: {"ok": {}, "errors": {}, "start": a, "stop": b} for k, a, b in todo}
    paths = plan["path"].astype(str).to_numpy()
    n_todo = sum(b - a for _, a, b in todo)
    bar = tqdm(total=n_todo, unit="img", desc=f"extract -> {Path(folder.uri).name}", disable=not progress)
    write: Callable[..., None] = functools.partial(write_shard, folder)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            rows = np.asarray(batch["row"], dtype=np.int64)
            ok, reasons, feats = np.asarray(batch["ok"], dtype=bool), batch["reason"], np.asarray(batch["feats"])
            for i, row in enumerate(rows.tolist()):
                acc = pending.get(row // shard_size)
                if acc is None or row in acc["ok"] or row in acc["errors"]:
                    continue  # a shard already written, or a row delivered twice (a retried batch)
                if ok[i]:
                    acc["ok"][row] = feats[i]
                else:
                    acc["errors"][row] = str(reasons[i])
                    log.warning("%s: %s", _source(root, paths[row]), reasons[i])
                bar.update(1)
            for k in {int(r) // shard_size for r in rows.tolist()}:
                acc = pending.get(k)
                if acc is not None and len(acc["ok"]) + len(acc["errors"]) == acc["stop"] - acc["start"]:
                    good = sorted(acc["ok"])
                    vectors = [np.stack([acc["ok"][r] for r in good])] if good else []
                    errors = sorted(acc["errors"].items())
                    write(k, acc["start"], acc["stop"], plan, good, vectors, errors)
                    del pending[k]
    except ExtractError:
        raise
    except Exception as exc:
        if not type(exc).__module__.startswith("ray"):
            raise
        raise ExtractError(
            f"{folder.uri}: the Ray job failed ({_failure(exc)}); {len(todo) - len(pending)} shard(s) were completed "
            "and are kept: run the same command again to resume"
        ) from exc
    finally:
        bar.close()
    if pending:  # the stream ended without some rows: never write a shard with holes
        missing = sum(acc["stop"] - acc["start"] - len(acc["ok"]) - len(acc["errors"]) for acc in pending.values())
        raise ExtractError(
            f"{folder.uri}: Ray returned no result for {missing} image(s) in {len(pending)} shard(s); completed shards "
            "are kept: run the same command again to resume"
        )
