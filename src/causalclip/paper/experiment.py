"""The paper's experiments end to end: extract -> train -> evaluate -> tables, resumable and cached.

Three entry points share one feature cache and one way of training and evaluating runs:

- :func:`run_experiment`: every head x seed under a preset, then Tables 1-4 (AP and ACC per test set and their
  mean) with the paper's rows beside ours; with ``protocol="leave-one-out"`` also every head x seed trained on the
  training set without each of its generators (or classes) in turn, tables of both protocols side by side;
- :func:`run_ablation`: the four module configurations of Table 5 (``heads.ABLATIONS``), reported as OP (mean
  over all test sets) and GP (mean over the eight CNNDetection sets, ``paper_tables.GP_TEST_SETS``);
- :func:`run_robustness`: Fig. 4's sweeps, every run evaluated on JPEG-compressed and blurred test images.

**Feature cache.** One feature-set folder per (set, backbone + preprocessing, perturbation)::

    CACHE/<backbone name>-<hash of backbone, feature, normalize, preprocessing, precision, dtype>/
      clean/ | jpeg90/ | blur2/ ...                     the perturbation applied to every image
        genimage-val-SD1.4[-max1000s0]/                 one set: dataset, split, name, held-out part, cap
          (causalclip.features.extract's folder) + cache.json    cache.json: what was listed when it completed

A folder is reused without loading the backbone when its ``cache.json`` matches the current listing (the same
images, labels and generators) and options. Otherwise ``causalclip.features.extract.extract`` runs into it: it resumes
an interrupted job and refuses a folder made with another backbone, preprocessing or perturbation.

**Runs** live in ``OUT/runs/<name>/`` (``causalclip.train``'s run folder). A run whose ``run.json`` records the
same resolved configuration and the same training/validation sets is reused; a run with a different
configuration is an error unless ``retrain`` is set (nothing is overwritten silently). Evaluation is redone on
every call (it is cheap on cached features) into ``OUT/runs/<name>/eval/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..backbones.base import Backbone
from ..backbones.clip import DEFAULT_CLIP
from ..backbones.registry import load_backbone
from ..core.io import atomic_write, write_json, write_text
from ..evaluation.evaluate import evaluate
from ..features.extract import extract
from ..features.featureset import open_feature_set, write_feature_set
from ..features.job import ExtractConfig, ExtractError
from ..heads.causalclip import ABLATIONS
from ..heads.registry import HEADS
from ..images.layouts import LayoutResult
from ..images.transforms import Perturbation
from ..training.config import recorded_sections, resolve_run_config
from ..training.loop import train
from .presets import DataSet, ResolvedPreset
from .report import ResultsTable, latex_escape, results_table
from .tables import ABLATION_CONFIGS, GP_TEST_SETS, SETTINGS, TEST_SETS, column_order, paper_table, table_number

__all__ = [
    "HEAD_METHODS",
    "PROTOCOLS",
    "AblationResult",
    "CachedSet",
    "ExperimentResult",
    "ExtractOptions",
    "FeatureCache",
    "LeaveOneOutResult",
    "RobustnessResult",
    "RunOutcome",
    "RunSpec",
    "TrainingGroups",
    "ablation_table",
    "read_experiment",
    "run_ablation",
    "run_experiment",
    "run_robustness",
    "runs_from_experiment",
    "seed_spread",
    "summary_lines",
    "train_or_reuse",
    "training_groups",
]

log = logging.getLogger("causalclip")

# Our heads -> the paper's method names (their rows in Tables 1-4).
HEAD_METHODS: dict[str, str] = {
    "causalclip": "CausalCLIP",
    "univfd": "UnivFD",
    "vib": "VIB-Net",
    "clipping": "CLIPping",
    "clipping-lp": "CLIPping (linear probe)",
    # networks trained on images (causalclip.pixel): their rows in the paper's tables
    "npr": "NPR",
    "cnnspot": "CNNSpot",
    "fredect": "FreDect",
    "fredect-simple": "FreDect (simple)",
    "lgrad": "LGrad",
    "fusing": "Fusing",
}
EXPERIMENT_FILE = "experiment.json"
CACHE_FILE = "cache.json"
# meta.json keys that describe a folder's files, not its features: a subset writes its own.
_STRUCTURAL_META = ("dim", "dtype", "count", "shards", "n_errors")
# Training-config keys that do not change what is learned: a run is reused across them.
_NOT_IDENTITY = ("device", "num_threads")


# ---------------------------------------------------------------------------------------------------------
# Feature cache


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExtractOptions:
    """How features are made (the first six fields decide them) and how much to extract."""

    backbone: str = DEFAULT_CLIP  # hub id or local CLIP folder
    feature: Literal["image_embeds", "pooled"] = "image_embeds"
    normalize: bool = False
    preprocess: Literal["crop", "clip"] = "crop"
    precision: str = "auto"
    dtype: Literal["float16", "float32"] = ExtractConfig.storage_dtype
    max_per_class: int | None = None  # cap per set and class (seeded balanced sampling); None = every image
    data_seed: int = 0  # seed of that sampling
    # how the extraction runs (not part of the features' identity); defaults are ExtractConfig's
    batch_size: int = ExtractConfig.batch_size
    shard_size: int = ExtractConfig.shard_size
    workers: int = ExtractConfig.workers
    processes: int | Literal["auto"] = ExtractConfig.processes
    device: str = "cpu"
    compile: bool | Literal["auto"] = ExtractConfig.compile

    def __post_init__(self) -> None:
        if os.path.isdir(os.path.expanduser(self.backbone)):  # one spelling per local folder, wherever we run
            object.__setattr__(self, "backbone", os.path.abspath(os.path.expanduser(self.backbone)))
        if self.max_per_class is not None and self.max_per_class <= 0:
            raise ValueError(f"max_per_class must be a positive integer, got {self.max_per_class}")

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("backbone", "feature", "normalize", "preprocess", "precision", "dtype")}

    def slug(self) -> str:
        """The cache sub-folder of these features: readable name plus a hash of :meth:`identity`."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", self.backbone.rstrip("/").split("/")[-1]) or "backbone"
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{name}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CachedSet:
    """One feature set of the cache, after :meth:`FeatureCache.get`."""

    dataset: DataSet
    perturbation: Perturbation
    path: Path
    n_images: int
    errors: pd.DataFrame  # path, stage, reason: inputs not used (errors.csv of the folder)
    reused: bool  # True when nothing had to be extracted or checked by loading the backbone
    n_extracted: int = 0

    @property
    def label(self) -> str:
        return f"{self.dataset.name} {self.dataset.role} ({_pert_dir(self.perturbation)})"


def _pert_dir(p: Perturbation) -> str:
    return "clean" if p.is_identity else p.name


def _fingerprint(samples: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for path, label, gen in zip(samples["path"], samples["label"], samples["generator"], strict=True):
        h.update(f"{path}\t{int(label)}\t{gen}\n".encode("utf-8", "backslashreplace"))
    return h.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_errors(folder: Path) -> pd.DataFrame:
    path = folder / "errors.csv"
    empty = pd.DataFrame(columns=["path", "stage", "reason"])
    if not path.is_file():
        return empty
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.EmptyDataError):
        return empty


class FeatureCache:
    """Feature sets of a preset's data sets, extracted once per (set, feature options, perturbation).

    The backbone is loaded on first need only, so a fully cached experiment runs without it (and without
    ``transformers``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        options: ExtractOptions,
        *,
        progress: bool = True,
        backbone_loader: Callable[[ExtractOptions], Backbone] | None = None,
    ) -> None:
        self.root = Path(os.path.abspath(root))  # run.json records set paths: the same wherever we run from
        self.options = options
        self.progress = progress
        self._loader = backbone_loader or _load_backbone
        self._backbone: Backbone | None = None
        self._listings: dict[DataSet, LayoutResult] = {}
        self.sets: list[CachedSet] = []  # every set handed out, in order (for the end-of-run summary)

    def backbone(self) -> Backbone:
        if self._backbone is None:
            log.info("loading backbone %s", self.options.backbone)
            self._backbone = self._loader(self.options)
        return self._backbone

    def folder(self, ds: DataSet, perturbation: Perturbation | None = None) -> Path:
        o = self.options
        name = ds.cache_name(max_per_class=o.max_per_class, seed=o.data_seed)
        return self.root / o.slug() / _pert_dir(perturbation or Perturbation()) / name

    def listing(self, ds: DataSet) -> LayoutResult:
        if ds not in self._listings:
            listing = ds.list(max_per_class=self.options.max_per_class, seed=self.options.data_seed)
            if len(listing.samples) == 0:
                raise ValueError(f"{ds.root}: no images for the {ds.role} set {ds.name}")
            self._listings[ds] = listing
        return self._listings[ds]

    def get(self, ds: DataSet, perturbation: Perturbation | None = None) -> CachedSet:
        """The feature set of ``ds`` under ``perturbation``, extracted (or completed) if needed."""
        pert = perturbation or Perturbation()
        folder = self.folder(ds, pert)
        listing = self.listing(ds)
        key = {
            "features": self.options.identity(),
            "perturbation": pert.to_dict(),
            "n_listed": len(listing.samples),
            "listing_sha256": _fingerprint(listing.samples),
        }
        if (folder / "meta.json").is_file() and _read_json(folder / CACHE_FILE) == key:
            meta = _read_json(folder / "meta.json") or {}
            cached = CachedSet(ds, pert, folder, int(meta.get("count", 0)), _read_errors(folder), reused=True)
            self.sets.append(cached)
            return cached
        (folder / CACHE_FILE).unlink(missing_ok=True)  # an interrupted extraction leaves no stale marker
        log.info(
            "extracting %s %s (%s): %d images -> %s", ds.role, ds.name, _pert_dir(pert), len(listing.samples), folder
        )
        o = self.options
        res = extract(
            listing.samples,
            root=listing.root,
            out=folder,
            backbone=self.backbone(),
            perturbation=pert,
            config=ExtractConfig(
                batch_size=o.batch_size,
                shard_size=o.shard_size,
                workers=o.workers,
                processes=o.processes,
                compile=o.compile,
                storage_dtype=o.dtype,
            ),
            ignored=listing.ignored,
            device=o.device,
            progress=self.progress,
        )
        fs = open_feature_set(folder)
        wanted = set(zip(listing.samples["path"], listing.samples["generator"], strict=True))
        stale = [p for p, g in zip(fs.paths, fs.generators, strict=True) if (p, g) not in wanted]
        if stale:
            raise ExtractError(
                f"{folder}: holds {len(stale)} image(s) that the current listing of {ds.root} does not select (e.g. "
                f"{stale[0]}): the dataset or the sampling changed since it was extracted. Delete that folder to "
                "extract it again."
            )
        write_json(folder / CACHE_FILE, key)
        cached = CachedSet(ds, pert, folder, res.n_ok, res.errors, reused=False, n_extracted=res.n_extracted_now)
        self.sets.append(cached)
        return cached

    def subset(self, parent: CachedSet, name: str, rows: np.ndarray, *, meta: Mapping[str, Any]) -> Path:
        """The feature set of ``rows`` of ``parent``, written once beside it as ``name`` (leave-one-out's folds).

        Reused while its ``cache.json`` records the same parent listing and the same rows; rewritten otherwise.
        The rows are copied (features stay in the parent's dtype): a fold costs the disk of the rows it holds.
        """
        folder = parent.path.parent / name
        rows = np.asarray(rows, dtype=np.int64)
        key = {
            "parent": str(parent.path),
            "parent_cache": _read_json(parent.path / CACHE_FILE),
            "n_rows": len(rows),
            "rows_sha256": hashlib.sha256(rows.tobytes()).hexdigest(),
            "meta": dict(meta),
        }
        if (folder / "meta.json").is_file() and _read_json(folder / CACHE_FILE) == key:
            return folder
        if folder.exists():
            shutil.rmtree(folder)  # a derived folder of other rows: nothing in it is worth keeping
        fs = open_feature_set(parent.path, check_finite=False)  # checked when the parent was extracted
        keep = {k: v for k, v in fs.meta.items() if k not in _STRUCTURAL_META and not k.startswith("_")}
        write_feature_set(
            folder, fs.take(rows), fs.samples.iloc[rows].reset_index(drop=True), meta={**keep, **dict(meta)}
        )
        write_json(folder / CACHE_FILE, key)
        return folder

    def error_summary(self) -> pd.DataFrame:
        """Every input not used by any set handed out so far: set, perturbation, folder, path, stage, reason."""
        parts = []
        seen = set()
        for c in self.sets:
            if c.path in seen or not len(c.errors):
                continue
            seen.add(c.path)
            parts.append(
                c.errors[["path", "stage", "reason"]].assign(
                    set=f"{c.dataset.name} {c.dataset.role}", perturbation=_pert_dir(c.perturbation), folder=str(c.path)
                )
            )
        cols = ["set", "perturbation", "folder", "path", "stage", "reason"]
        return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def _load_backbone(o: ExtractOptions) -> Backbone:
    return load_backbone(
        o.backbone,
        device=o.device,
        precision=o.precision,
        feature=o.feature,
        normalize=o.normalize,
        preprocessing_mode=o.preprocess,
    )


# ---------------------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class RunSpec:
    """One training run: a head (or an ablation of the causalclip head) and a seed."""

    name: str  # folder under OUT/runs/
    head: str
    seed: int
    method: str  # row label in the tables; runs of one method (several seeds) are averaged
    ablation: str | None = None


@dataclass
class RunOutcome:
    spec: RunSpec
    run_dir: Path
    status: Literal["trained", "reused", "retrained"]
    metrics: pd.DataFrame  # evaluate's per-generator metrics (with the "mean" row)


def _comparable(run_info: Mapping[str, Any], head: str) -> dict[str, Any]:
    # a run recorded before the optimiser moved to train.optimizer reads as it would be recorded today
    train_d, head_d = recorded_sections(dict(run_info), head)
    trainc = {k: v for k, v in train_d.items() if k not in _NOT_IDENTITY}
    data = run_info.get("data", {})
    keys = ("path", "n", "n_fake")
    return {
        "head": run_info.get("head"),
        "train": trainc,
        "head_config": head_d or None,
        "data": {r: {k: data.get(r, {}).get(k) for k in keys} for r in ("train", "val")},
        "heldout": [{k: h.get(k) for k in keys} for h in data.get("heldout") or []],  # absent in older runs
    }


def train_or_reuse(
    spec: RunSpec,
    *,
    train_set: CachedSet | Path,
    val_set: CachedSet | Path,
    run_dir: Path,
    heldout_sets: Sequence[CachedSet | Path] = (),
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> Literal["trained", "reused", "retrained"]:
    """Train ``spec`` into ``run_dir`` unless a finished run with the same configuration and data is there.

    ``heldout_sets``: validation sets of generators not in training; they select the saved epoch (``train``'s
    ``heldout_sets``) and are part of the run's identity."""
    extra = [f"train.seed={spec.seed}"] + ([f"train.device={json.dumps(device)}"] if device else [])
    rc = resolve_run_config(spec.head, config_file=config_file, overrides=[*overrides, *extra], ablation=spec.ablation)
    tr, va, *held = (
        open_feature_set(s.path if isinstance(s, CachedSet) else s) for s in (train_set, val_set, *heldout_sets)
    )

    def record(fs):
        return {"path": str(fs.root), "n": len(fs), "n_fake": int(fs.labels.sum())}

    wanted = _comparable(
        {**rc.to_dict(), "data": {"train": record(tr), "val": record(va), "heldout": [record(h) for h in held]}},
        spec.head,
    )
    done = all((run_dir / f).is_file() for f in ("config.json", "summary.json", "run.json"))
    status: Literal["trained", "reused", "retrained"] = "trained"
    if done:
        have = _comparable(_read_json(run_dir / "run.json") or {}, spec.head)
        if have == wanted:
            log.info("run %s: already trained with this configuration; reused", run_dir)
            return "reused"
        diff = _diff(have, wanted)
        if not retrain:
            raise ValueError(
                f"{run_dir}: already holds a run trained with a different configuration or data ({diff}); pass "
                "--retrain to replace it, or use another --out"
            )
        log.info("run %s: configuration changed (%s); training again", run_dir, diff)
        status = "retrained"
    train(train_set=tr, val_set=va, out=run_dir, run_config=rc, progress=progress, overwrite=True, heldout_sets=held)
    return status


def _diff(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        parts = [_diff(a.get(k), b.get(k), f"{prefix}{k}.") for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return "; ".join(p for p in parts if p)
    return f"{prefix.rstrip('.')}: {a!r} -> {b!r}"


@dataclass
class _Common:
    """What every entry point does first: the clean training, validation and test features."""

    train: CachedSet
    val: CachedSet
    test: list[CachedSet]


def _clean_sets(preset: ResolvedPreset, cache: FeatureCache) -> _Common:
    return _Common(cache.get(preset.train), cache.get(preset.val), [cache.get(ds) for ds in preset.test])


def _run_all(
    preset: ResolvedPreset,
    out: Path,
    specs: Sequence[RunSpec],
    cache: FeatureCache,
    *,
    config_file: str | os.PathLike[str] | None,
    overrides: Sequence[str],
    retrain: bool,
    eval_max_per_class: int | None,
    progress: bool,
) -> tuple[list[RunOutcome], pd.DataFrame]:
    sets = _clean_sets(preset, cache)
    outcomes = []
    for spec in specs:
        outcomes.append(
            _train_and_evaluate(
                spec,
                out / "runs" / spec.name,
                train_set=sets.train,
                val_set=sets.val,
                test=sets.test,
                cache=cache,
                config_file=config_file,
                overrides=overrides,
                retrain=retrain,
                eval_max_per_class=eval_max_per_class,
                progress=progress,
            )
        )
    return outcomes, _long_table(outcomes)


def _train_and_evaluate(
    spec: RunSpec,
    run_dir: Path,
    *,
    train_set: CachedSet | Path,
    val_set: CachedSet | Path,
    test: Sequence[CachedSet],
    cache: FeatureCache,
    config_file: str | os.PathLike[str] | None,
    overrides: Sequence[str],
    retrain: bool,
    eval_max_per_class: int | None,
    progress: bool,
    heldout_sets: Sequence[CachedSet | Path] = (),
) -> RunOutcome:
    """One head run of an experiment: trained (or reused) into ``run_dir``, evaluated on ``test`` into its eval/."""
    status = train_or_reuse(
        spec,
        train_set=train_set,
        val_set=val_set,
        heldout_sets=heldout_sets,
        run_dir=run_dir,
        config_file=config_file,
        overrides=overrides,
        device=cache.options.device,
        retrain=retrain,
        progress=progress,
    )
    res = evaluate(
        run_dir,
        [c.path for c in test],
        out=run_dir / "eval",
        max_per_class=eval_max_per_class,
        device=cache.options.device,
    )
    return RunOutcome(spec, run_dir, status, res.metrics)


def _network_identity(info: Mapping[str, Any]) -> dict[str, Any]:
    method = info.get("method")
    free = ("workers", "num_threads", "checkpoint_every")
    train = {k: v for k, v in dict(info.get("train") or {}).items() if k not in free}
    keys = ("root", "n", "n_fake", "split", "layout")
    data = info.get("data") or {}
    return {
        "method": method,
        "network": info.get(str(method)),
        "recipe": info.get("recipe"),
        "train": train,
        "data": {r: {k: (data.get(r) or {}).get(k) for k in keys} for r in ("train", "val")},
    }


def _run_networks(
    preset: ResolvedPreset,
    out: Path,
    networks: Sequence[str],
    seeds: Sequence[int],
    cache: FeatureCache,
    *,
    overrides: Sequence[str],
    retrain: bool,
    eval_max_per_class: int | None,
    progress: bool,
) -> list[RunOutcome]:
    """Train each network x seed on the preset's training images (reused when its run.json matches), select on the
    validation images, evaluate on every test set: the same listings (and so images) as the heads' features."""
    from ..networks.registry import NETWORKS
    from ..pixel.config import resolve_pixel_config
    from ..pixel.data import image_set_from_listing
    from ..pixel.evaluate import evaluate_images
    from ..pixel.loop import train_network

    def images(ds: DataSet):
        return image_set_from_listing(cache.listing(ds), {"layout": ds.layout, "split": ds.split})

    train_set, val_set = images(preset.train), images(preset.val)
    tests = [images(ds) for ds in preset.test]
    outcomes = []
    for net in networks:
        for seed in seeds:
            run_dir = out / "runs" / f"{net}-seed{seed}"
            extra = [f"train.seed={seed}"] + (
                [f"train.device={json.dumps(cache.options.device)}"] if cache.options.device else []
            )
            rc = resolve_pixel_config(net, overrides=[*overrides, *extra], other_methods=True)
            label = HEAD_METHODS.get(net, net)
            if NETWORKS[net].init == "imagenet" and not rc.train.imagenet_weights:
                label += " (scratch)"  # the authors start from ImageNet weights; this row does not
            spec = RunSpec(run_dir.name, net, int(seed), label)
            wanted = _network_identity(
                {**rc.to_dict(), "data": {"train": train_set.description, "val": val_set.description}}
            )
            status: Literal["trained", "reused", "retrained"] = "trained"
            if (run_dir / "config.json").is_file():
                have = _network_identity(_read_json(run_dir / "run.json") or {})
                if have == wanted:
                    status = "reused"
                elif not retrain:
                    raise ValueError(
                        f"{run_dir}: already holds a run trained with a different configuration or data "
                        f"({_diff(have, wanted)}); pass --retrain to replace it, or use another --out"
                    )
                else:
                    status = "retrained"
            if status != "reused":
                train_network(
                    train_set=train_set, val_set=val_set, out=run_dir, run_config=rc, progress=progress, overwrite=True
                )
            res = evaluate_images(run_dir, tests, out=run_dir / "eval", max_per_class=eval_max_per_class)
            outcomes.append(RunOutcome(spec, run_dir, status, res.metrics))
    return outcomes


def _long_table(outcomes: Sequence[RunOutcome]) -> pd.DataFrame:
    """One row per run and test set: the run's identity, then every column of evaluate's metrics."""
    rows = []
    for o in outcomes:
        m = o.metrics[o.metrics["generator"] != "mean"]
        ident = {"method": o.spec.method, "head": o.spec.head, "ablation": o.spec.ablation, "seed": o.spec.seed}
        rows.append(pd.DataFrame({**ident, "run": o.spec.name}, index=m.index).join(m))
    return pd.concat(rows, ignore_index=True).rename(columns={"generator": "test_set"})


_MEAN_COLUMNS = ("ap", "acc", "real_acc", "fake_acc", "acc_oracle", "acc_calibrated")


def _method_means(long: pd.DataFrame, keys: Sequence[str] = ("method",)) -> pd.DataFrame:
    """Per method (and ``keys``) and test set: the mean over runs (seeds) of each metric, order kept."""
    g = long.groupby([*keys, "test_set"], sort=False)
    means = g[[c for c in _MEAN_COLUMNS if c in long.columns]].mean()
    means["n_runs"] = g.size()
    return means.reset_index()


def _write_frame(path: Path, df: pd.DataFrame) -> Path:
    atomic_write(path, lambda p: df.to_csv(p, index=False, float_format="%.6g"))
    return path


def _experiment_record(
    kind: str,
    preset: ResolvedPreset,
    roots: Mapping[str, Any],
    cache: FeatureCache,
    specs: Sequence[RunSpec],
    out: Path,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "kind": kind,
        "preset": preset.name,
        "roots": {k: (None if v is None else os.path.abspath(os.fspath(v))) for k, v in roots.items()},
        "val_fraction": preset.val.holdout.fraction if preset.val.holdout else None,
        "val_seed": preset.val.holdout.seed if preset.val.holdout else None,
        "resolved": preset.describe().splitlines(),
        "missing": list(preset.missing),
        "extract_options": cache.options.to_dict(),
        "cache": str(cache.root.resolve()),
        "runs": [{**dataclasses.asdict(s), "dir": str((out / "runs" / s.name).resolve())} for s in specs],
        **extra,
    }


def read_experiment(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``experiment.json`` that :func:`run_experiment` / :func:`run_ablation` wrote in ``folder``."""
    path = Path(folder) / EXPERIMENT_FILE
    if not path.is_file():
        raise ValueError(f"{path}: missing; is {folder} a folder written by `causalclip experiment` or `ablation`?")
    info = _read_json(path)
    if not isinstance(info, dict) or "runs" not in info:
        raise ValueError(f"{path}: not a valid experiment record (no 'runs')")
    return info


# ---------------------------------------------------------------------------------------------------------
# Tables 1-4


@dataclass
class ExperimentResult:
    preset: ResolvedPreset
    outcomes: list[RunOutcome]
    long: pd.DataFrame  # one row per run and test set: method, head, ablation, seed, run, test_set, n_*, metrics
    tables: dict[str, ResultsTable]  # "ap", "acc": our rows (mean over seeds) beside the paper's
    sets: list[CachedSet]
    errors: pd.DataFrame  # every input not used (FeatureCache.error_summary)
    files: list[Path] = field(default_factory=list)
    loo: LeaveOneOutResult | None = None  # protocol "leave-one-out" only


def run_experiment(
    preset: ResolvedPreset,
    out: str | os.PathLike[str],
    *,
    cache: FeatureCache,
    heads: Sequence[str] = ("causalclip", "univfd", "vib"),
    seeds: Sequence[int] = (0,),
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    retrain: bool = False,
    eval_max_per_class: int | None = None,
    all_paper_rows: bool = False,
    roots: Mapping[str, Any] | None = None,
    progress: bool = True,
    protocol: Literal["standard", "leave-one-out"] = "standard",
    leave_out: Sequence[str] | None = None,
    networks: Sequence[str] = (),
    network_overrides: Sequence[str] = (),
) -> ExperimentResult:
    """Extract (cached) -> train each head x seed (reused when unchanged) -> evaluate -> Tables 1-4.

    Writes into ``out``: ``experiment.json``, ``runs/<head>-seed<s>/`` (run folders, ``eval/metrics.csv``),
    ``metrics_long.csv`` (every run x test set), ``results_seeds.csv`` (per method: mean and std over seeds of
    the Avg), ``results_{ap,acc}.{md,csv,tex}`` and ``input_errors.csv``.
    Our row of a head is the mean over its seeds; the paper's rows are those of its heads (all with
    ``all_paper_rows``).

    ``protocol="leave-one-out"`` (see :func:`training_groups`) also trains each head x seed once per group of the
    training set left out (``leave_out``: those groups only; default all), selects its epoch on the left-out
    group's validation images and tests it on every test set; see :class:`LeaveOneOutResult` for its files.
    The training set's groups are checked before anything is extracted or trained.

    ``networks`` (NPR, CNNSpot, FreDect: causalclip.pixel) are trained on the same images, with their authors'
    recipes changed by ``network_overrides`` (``recipe.epochs=5``, ``train.workers=4``, ...), evaluated on the
    same test images, and get their rows beside the heads' (protocol "standard" only).
    """
    from ..networks.registry import NETWORKS

    out = Path(out)
    unknown = [h for h in heads if h not in HEADS] + [n for n in networks if n not in NETWORKS]
    if unknown or not (heads or networks):
        raise ValueError(f"unknown method(s) {unknown or heads}; heads: {sorted(HEADS)}; networks: {sorted(NETWORKS)}")
    if len(set(heads)) != len(heads) or len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"heads {list(heads)} and seeds {list(seeds)} must be non-empty and without repeats")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; available: {list(PROTOCOLS)}")
    if leave_out is not None and protocol != "leave-one-out":
        raise ValueError("leave_out (--leave-out) applies to protocol leave-one-out only")
    if protocol == "leave-one-out" and not heads:
        raise ValueError("leave-one-out trains the feature heads (--heads); networks are not trained per fold")
    plan = _plan_leave_one_out(preset, cache, leave_out) if protocol == "leave-one-out" else None
    specs = [RunSpec(f"{h}-seed{s}", h, int(s), HEAD_METHODS.get(h, h)) for h in heads for s in seeds]
    out.mkdir(parents=True, exist_ok=True)
    record = _experiment_record(
        "experiment",
        preset,
        roots or {},
        cache,
        specs,
        out,
        {"heads": list(heads), "seeds": list(seeds), "protocol": protocol},
    )
    outcomes, long = (
        _run_all(
            preset,
            out,
            specs,
            cache,
            config_file=config_file,
            overrides=overrides,
            retrain=retrain,
            eval_max_per_class=eval_max_per_class,
            progress=progress,
        )
        if specs
        else ([], None)
    )
    if networks:
        net_outcomes = _run_networks(
            preset,
            out,
            networks,
            seeds,
            cache,
            overrides=network_overrides,
            retrain=retrain,
            eval_max_per_class=eval_max_per_class,
            progress=progress,
        )
        record["runs"] += [
            {**dataclasses.asdict(o.spec), "dir": str(o.run_dir.resolve()), "kind": "network"} for o in net_outcomes
        ]
        record["networks"] = list(networks)
        outcomes = [*outcomes, *net_outcomes]
        long = _long_table(outcomes)
    means = _method_means(long)
    files = [_write_frame(out / "metrics_long.csv", long), _write_frame(out / "results_seeds.csv", seed_spread(long))]
    tables = {}
    reported = set(paper_table(table_number(preset.setting, "ap")).index)  # FreDect: in the ProGAN tables only
    paper = (
        None
        if all_paper_rows
        else [HEAD_METHODS[h] for h in _paper_order([*heads, *networks]) if HEAD_METHODS.get(h) in reported]
    )
    seed_note = (
        f"Rows marked (ours) are the mean over seeds {', '.join(map(str, seeds))} (each run: metrics_long.csv)."
        if len(seeds) > 1
        else f"Rows marked (ours): one run each, seed {seeds[0]}."
    )
    for metric in ("ap", "acc"):
        runs = {
            f"{m} (ours)": grp.rename(columns={"test_set": "generator"})
            for m, grp in means.groupby("method", sort=False)
        }
        table = results_table(runs, metric=metric, setting=preset.setting, paper_methods=paper)
        table = dataclasses.replace(table, notes=(*table.notes, seed_note, *preset.missing))
        tables[metric] = table
        stem = out / f"results_{metric}"
        number = table_number(preset.setting, metric)
        caption = f"Table {number}: {table.label} (%) {SETTINGS[preset.setting]}; best in bold, second underlined."
        files += [
            write_text(stem.with_suffix(".md"), table.to_markdown(caption=caption)),
            write_text(stem.with_suffix(".csv"), table.to_csv()),
            write_text(stem.with_suffix(".tex"), table.to_latex(caption=caption, label=f"tab:{preset.name}-{metric}")),
        ]
    loo = None
    if plan is not None:
        loo = _run_leave_one_out(
            plan,
            preset,
            out,
            cache,
            heads=heads,
            seeds=seeds,
            standard=long[long["head"].isin(heads)],  # the networks have no folds to compare with
            config_file=config_file,
            overrides=overrides,
            retrain=retrain,
            eval_max_per_class=eval_max_per_class,
            progress=progress,
        )
        files += loo.files
        record["leave_one_out"] = {
            "column": plan.groups.column,
            "left_out": list(plan.left_out),
            "shared": list(plan.groups.shared),
            "selection": "held-out: each fold's saved epoch is chosen on its left-out group's validation images",
            "runs": [
                {**dataclasses.asdict(o.spec), "left_out": g, "dir": str(o.run_dir.resolve())}
                for o, g in zip(loo.outcomes, loo.left_out_of, strict=True)
            ],
        }
    errors = cache.error_summary()
    files.append(_write_frame(out / "input_errors.csv", errors))
    write_json(out / EXPERIMENT_FILE, record)  # last: it lists runs that exist and were evaluated
    files.append(out / EXPERIMENT_FILE)
    return ExperimentResult(preset, outcomes, long, tables, list(cache.sets), errors, files, loo)


def _paper_order(heads: Sequence[str]) -> list[str]:
    """Methods in the order of the paper's rows (CNNSpot, FreDect, Fusing, LGrad, UnivFD, NPR, CLIPping, VIB-Net,
    CausalCLIP)."""
    rank = {"cnnspot": 0, "fredect": 1, "fusing": 2, "lgrad": 3, "univfd": 4, "npr": 5, "clipping": 6, "vib": 7}
    rank["causalclip"] = 8
    return sorted(heads, key=lambda h: rank.get(h, 99))


# ---------------------------------------------------------------------------------------------------------
# Leave-one-out: the training set without each of its generators (or classes) in turn


PROTOCOLS = ("standard", "leave-one-out")
LOO_LABELS = {"standard": "all groups", "leave-one-out": "leave-one-out"}


@dataclass(frozen=True)
class TrainingGroups:
    """The environments of a training set that leave-one-out leaves out in turn."""

    column: str  # the samples column they come from: "generator", else "class" (CNNDetection's class folders)
    names: tuple[str, ...]  # groups that hold fakes: each is left out in turn
    shared: tuple[str, ...] = ()  # groups of real images only (a manifest's "real" generator): in every fold


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def training_groups(samples: pd.DataFrame, *, where: str) -> TrainingGroups:
    """The groups of a training listing: its generators when it has two or more that hold fakes, else its
    ``class`` column (CNNDetection's ProGAN training set: 20 LSUN classes, all one generator), else an error
    naming ``where`` (the training folder).

    Real images belong to their row's group (CNNDetection's classes each hold their own reals), so leaving a
    group out removes its reals and fakes; a group of reals only is shared by every fold.
    """
    for column in ("generator", "class"):
        if column not in samples.columns or samples[column].isna().any():
            continue  # class is None for generators without a class level
        values = samples[column].astype(str)
        fakes = sorted(set(values[samples["label"].to_numpy() == 1]), key=_natural)
        if len(fakes) >= 2:
            shared = sorted(set(values) - set(fakes), key=_natural)
            return TrainingGroups(column, tuple(fakes), tuple(shared))
    gens = sorted(set(samples["generator"].astype(str)), key=_natural)
    raise ValueError(
        f"{where}: leave-one-out needs a training set with at least two generators (or class folders, as "
        f"CNNDetection's ProGAN training set has); this one holds generator(s) {gens} and no class folders"
    )


@dataclass(frozen=True)
class _LooPlan:
    groups: TrainingGroups
    left_out: tuple[str, ...]


def _plan_leave_one_out(preset: ResolvedPreset, cache: FeatureCache, leave_out: Sequence[str] | None) -> _LooPlan:
    """Check, from the listings alone (nothing extracted yet), that every fold can be trained and selected."""
    where = f"{preset.train.root} (training set of preset {preset.name})"
    groups = training_groups(cache.listing(preset.train).samples, where=where)
    wanted = tuple(dict.fromkeys(leave_out)) if leave_out else groups.names
    unknown = [g for g in wanted if g not in groups.names]
    if unknown:
        raise ValueError(
            f"{where}: no {groups.column} {unknown} to leave out; its {groups.column}s with fakes are "
            f"{list(groups.names)}"
        )
    val = cache.listing(preset.val).samples
    if groups.column not in val.columns or val[groups.column].isna().any():
        raise ValueError(
            f"{preset.val.root} (validation set of preset {preset.name}): its images have no {groups.column}, so a "
            "fold cannot be validated on the group it leaves out"
        )
    vals = val[groups.column].astype(str).to_numpy()
    for g in wanted:
        counts = np.bincount(val["label"].to_numpy()[vals == g], minlength=2)
        if counts.min() == 0:
            raise ValueError(
                f"{preset.val.root} (validation set of preset {preset.name}): {counts[0]} real and {counts[1]} fake "
                f"image(s) of {groups.column} {g}; the fold that leaves {g} out selects its epoch on them and needs "
                "both classes (give a validation set that has them, or a larger --val-fraction)"
            )
    return _LooPlan(groups, wanted)


@dataclass
class LeaveOneOutResult:
    """Protocol leave-one-out of :func:`run_experiment`. Files in ``out``:

    ``runs/<head>-seed<s>-without-<group>/`` (run folders), ``metrics_long_loo.csv`` (every fold run x test set),
    ``loo_folds.csv`` (per run: the group left out, saved epoch, selection score, Avg AP/ACC over the test sets),
    ``results_loo_{ap,acc}.{md,csv,tex}`` (per head, both protocols: mean over seeds, and over folds for
    leave-one-out, per test set) and ``results_loo_seeds.{csv,md}`` (per head and protocol: mean and sample
    standard deviation over seeds of the Avg; a leave-one-out seed's Avg is its mean over folds).
    """

    groups: TrainingGroups
    left_out: tuple[str, ...]
    outcomes: list[RunOutcome]
    left_out_of: list[str]  # per outcome: the group its run left out
    long: pd.DataFrame  # one row per fold run and test set, with column left_out
    folds: pd.DataFrame
    tables: dict[str, ResultsTable]
    seeds: pd.DataFrame
    files: list[Path] = field(default_factory=list)


def _fold_sets(
    plan: _LooPlan, train: CachedSet, val: CachedSet, cache: FeatureCache
) -> dict[str, tuple[Path, Path, Path]]:
    """Per group left out: (training set without it, validation set without it, its validation images)."""
    column = plan.groups.column
    tr_groups = open_feature_set(train.path, check_finite=False).samples[column].astype(str).to_numpy()
    va_fs = open_feature_set(val.path, check_finite=False)
    va_groups = va_fs.samples[column].astype(str).to_numpy()
    sets = {}
    for g in plan.left_out:
        slug = _safe(g)
        note = {"left_out": {"column": column, "group": g}}
        sets[g] = (
            cache.subset(train, f"{train.path.name}-without-{slug}", np.flatnonzero(tr_groups != g), meta=note),
            cache.subset(val, f"{val.path.name}-without-{slug}", np.flatnonzero(va_groups != g), meta=note),
            cache.subset(val, f"{val.path.name}-only-{slug}", np.flatnonzero(va_groups == g), meta=note),
        )
    return sets


def _run_leave_one_out(
    plan: _LooPlan,
    preset: ResolvedPreset,
    out: Path,
    cache: FeatureCache,
    *,
    heads: Sequence[str],
    seeds: Sequence[int],
    standard: pd.DataFrame,
    config_file: str | os.PathLike[str] | None,
    overrides: Sequence[str],
    retrain: bool,
    eval_max_per_class: int | None,
    progress: bool,
) -> LeaveOneOutResult:
    """Every head x seed x left-out group: train on the rest, select on the group's validation images (a
    generator or class not in training, never a test set: the rule of ``train --val DIR heldout=DIR``, which keeps
    discriminating after in-distribution AP saturates), evaluate on every test set; then the tables."""
    common = _clean_sets(preset, cache)
    sets = _fold_sets(plan, common.train, common.val, cache)
    outcomes, left_out_of, fold_rows = [], [], []
    for h in heads:
        for s in seeds:
            for g in plan.left_out:
                spec = RunSpec(f"{h}-seed{s}-without-{_safe(g)}", h, int(s), HEAD_METHODS.get(h, h))
                run_dir = out / "runs" / spec.name
                tr, va, held = sets[g]
                outcome = _train_and_evaluate(
                    spec,
                    run_dir,
                    train_set=tr,
                    val_set=va,
                    heldout_sets=[held],
                    test=common.test,
                    cache=cache,
                    config_file=config_file,
                    overrides=overrides,
                    retrain=retrain,
                    eval_max_per_class=eval_max_per_class,
                    progress=progress,
                )
                outcomes.append(outcome)
                left_out_of.append(g)
                summary = _read_json(run_dir / "summary.json") or {}
                m = outcome.metrics[outcome.metrics["generator"] != "mean"]
                fold_rows.append(
                    {
                        "method": spec.method,
                        "head": h,
                        "seed": int(s),
                        "left_out": g,
                        "run": spec.name,
                        "best_epoch": summary.get("best_epoch"),
                        "selected_on": summary.get("selected_on"),
                        "selection_metric": summary.get("early_stop_metric"),
                        "selection_score": summary.get("best_score"),
                        "ap": float(m["ap"].mean()),
                        "acc": float(m["acc"].mean()),
                    }
                )
    long = _long_table(outcomes)
    by_run = {o.spec.name: g for o, g in zip(outcomes, left_out_of, strict=True)}
    long.insert(long.columns.get_loc("run") + 1, "left_out", long["run"].map(by_run))
    folds = pd.DataFrame(fold_rows)
    both = pd.concat(
        [standard.assign(protocol="standard"), long.drop(columns="left_out").assign(protocol="leave-one-out")],
        ignore_index=True,
    )
    both["method"] = both["method"] + " (ours, " + both["protocol"].map(LOO_LABELS) + ")"
    means = _method_means(both)
    n_folds = len(plan.left_out)
    files = [_write_frame(out / "metrics_long_loo.csv", long), _write_frame(out / "loo_folds.csv", folds)]
    notes = (
        f"Leave-one-out: each head is trained {n_folds} times per seed, each time without one {plan.groups.column} "
        f"of the training set ({', '.join(plan.left_out)}), its epoch selected on that {plan.groups.column}'s "
        "validation images; its row is the mean over folds and seeds. All groups: the standard runs (mean over "
        "seeds).",
        f"Seeds {', '.join(map(str, seeds))}; mean and spread over seeds: results_loo_seeds.md.",
    )
    tables = {}
    for metric in ("ap", "acc"):
        runs = {m: grp.rename(columns={"test_set": "generator"}) for m, grp in means.groupby("method", sort=False)}
        table = results_table(runs, metric=metric, test_sets=column_order(preset.setting))  # no paper rows
        table = dataclasses.replace(table, notes=(*table.notes, *notes, *preset.missing))
        tables[metric] = table
        stem = out / f"results_loo_{metric}"
        caption = f"{table.label} (%), training set with all groups vs leave-one-out, {SETTINGS[preset.setting]}."
        files += [
            write_text(stem.with_suffix(".md"), table.to_markdown(caption=caption)),
            write_text(stem.with_suffix(".csv"), table.to_csv()),
            write_text(
                stem.with_suffix(".tex"), table.to_latex(caption=caption, label=f"tab:{preset.name}-loo-{metric}")
            ),
        ]
    spread = seed_spread(both)
    spread.insert(1, "n_folds", [n_folds if m.endswith("(ours, leave-one-out)") else 1 for m in spread["method"]])
    files += [
        _write_frame(out / "results_loo_seeds.csv", spread),
        write_text(out / "results_loo_seeds.md", _spread_markdown(spread)),
    ]
    return LeaveOneOutResult(plan.groups, plan.left_out, outcomes, left_out_of, long, folds, tables, spread, files)


def _spread_markdown(spread: pd.DataFrame) -> str:
    """Mean +- sample standard deviation over seeds of the Avg (percent), one row per method and protocol."""
    lines = [
        "Avg over the test sets (%), mean +- standard deviation over seeds (a leave-one-out seed: mean over folds).",
        "",
        "| method | folds | seeds | AP | ACC |",
        "|:---|---:|---:|---:|---:|",
    ]
    for _, r in spread.iterrows():
        cells = []
        for metric in ("ap", "acc"):
            std = r[f"{metric}_std"]
            sd = "" if pd.isna(std) else f" +- {100 * std:.2f}"
            cells.append(f"{100 * r[f'{metric}_mean']:.2f}{sd}")
        lines.append(f"| {r['method']} | {r['n_folds']} | {r['n_seeds']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Table 5


ABLATION_NOTE = (
    "OP = mean over every test set shown; GP = mean over the eight CNNDetection test sets (ProGAN, CycleGAN, "
    "BigGAN, StyleGAN, StarGAN, GauGAN, Deepfake, SAN). The paper's text calls GP the mean over 'GAN-based "
    "datasets', but its printed GP values are the mean over these eight, Deepfake and SAN included "
    "(docs/paper_tables.md), so that is the definition used here."
)


def _ablation_row(name: str) -> str:
    flags = (ABLATIONS[name]["factorization"], ABLATIONS[name]["adversarial_masking"])
    return next(row for row, f in ABLATION_CONFIGS.items() if f == flags)


def ablation_table(long: pd.DataFrame, *, with_paper: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Table 5 from a long metrics table (method, test_set, ap, acc, ...; several seeds are averaged first):
    factorization, masking, ACC OP, ACC GP, AP OP, AP GP in percent (2 decimals), the paper's rows first, and
    notes (coverage, GP's definition)."""
    means = _method_means(long)
    rows, notes = {}, [ABLATION_NOTE]
    for method, grp in means.groupby("method", sort=False):
        base = method.removesuffix(" (ours)")
        flags = ABLATION_CONFIGS.get(base, (None, None))
        vals = grp.set_index("test_set")
        op = [t for t in TEST_SETS if t in vals.index]
        gp = [t for t in GP_TEST_SETS if t in vals.index]
        row = {"factorization": flags[0], "masking": flags[1]}
        for metric in ("acc", "ap"):
            row[f"{metric.upper()} OP"] = round(100 * vals.loc[op, metric].mean(), 2) if op else math.nan
            row[f"{metric.upper()} GP"] = round(100 * vals.loc[gp, metric].mean(), 2) if gp else math.nan
        rows[method] = row
        if len(op) < len(TEST_SETS) or len(gp) < len(GP_TEST_SETS):
            notes.append(
                f"{method}: OP over {len(op)} of {len(TEST_SETS)} test sets, GP over {len(gp)} of "
                f"{len(GP_TEST_SETS)}; not comparable with the paper's values."
            )
    ours = pd.DataFrame.from_dict(rows, orient="index")
    cols = ["factorization", "masking", "ACC OP", "ACC GP", "AP OP", "AP GP"]
    if with_paper:
        paper = paper_table(5).rename(index=lambda m: f"{m} (paper)")
        notes.insert(0, "Rows marked (paper) are the paper's Table 5 (trained on GenImage SD v1.4), as printed.")
        ours = pd.concat([paper[cols], ours[cols]])
    ours.index.name = "method"
    return ours[cols], notes


def _ablation_markdown(table: pd.DataFrame, notes: Sequence[str], caption: str) -> str:
    mark = {True: "✓", False: "×"}
    lines = [
        caption,
        "",
        "| Method | Factorization | Masking | ACC OP | ACC GP | AP OP | AP GP |",
        "|:---|:-:|:-:|" + "---:|" * 4,
    ]
    for method, r in table.iterrows():
        vals = ["–" if pd.isna(r[c]) else f"{r[c]:.2f}" for c in ("ACC OP", "ACC GP", "AP OP", "AP GP")]
        lines.append(
            f"| {method} | {mark.get(r['factorization'], '?')} | {mark.get(r['masking'], '?')} | "
            + " | ".join(vals)
            + " |"
        )
    return "\n".join([*lines, "", *[f"- {n}" for n in notes]]) + "\n"


def _ablation_latex(table: pd.DataFrame, notes: Sequence[str], caption: str) -> str:
    mark = {True: r"\checkmark", False: r"$\times$"}
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}", r"\begin{tabular}{lccrrrr}"]
    lines += [r"\toprule", r"Method & Factorization & Masking & ACC OP & ACC GP & AP OP & AP GP \\", r"\midrule"]
    for method, r in table.iterrows():
        vals = ["--" if pd.isna(r[c]) else f"{r[c]:.2f}" for c in ("ACC OP", "ACC GP", "AP OP", "AP GP")]
        flags = [mark.get(r["factorization"], "?"), mark.get(r["masking"], "?")]
        lines.append(" & ".join([latex_escape(str(method)), *flags, *vals]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip"]
    lines.append(r"{\footnotesize " + r"\par ".join(latex_escape(n) for n in notes) + r"\par}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


@dataclass
class AblationResult:
    preset: ResolvedPreset
    outcomes: list[RunOutcome]
    long: pd.DataFrame
    table: pd.DataFrame  # factorization, masking, ACC OP, ACC GP, AP OP, AP GP (percent); paper rows first
    notes: list[str]
    markdown: str
    sets: list[CachedSet]
    errors: pd.DataFrame
    files: list[Path] = field(default_factory=list)


def run_ablation(
    preset: ResolvedPreset,
    out: str | os.PathLike[str],
    *,
    cache: FeatureCache,
    ablations: Sequence[str] = tuple(ABLATIONS),
    seeds: Sequence[int] = (0,),
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    retrain: bool = False,
    eval_max_per_class: int | None = None,
    roots: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> AblationResult:
    """Table 5: the causalclip head in each module configuration x seed, reported as OP and GP.

    Writes ``experiment.json``, ``runs/ablation-<name>-seed<s>/``, ``metrics_long.csv``, ``ablation.{md,csv,tex}``
    and ``input_errors.csv`` into ``out``. The paper's Table 5 rows are shown for the ``sd14`` preset only (the
    paper's ablation trains on SD v1.4).
    """
    out = Path(out)
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown or not ablations:
        raise ValueError(f"unknown ablation(s) {unknown or ablations}; available: {list(ABLATIONS)}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {list(seeds)} must be non-empty and without repeats")
    specs = [
        RunSpec(f"ablation-{a}-seed{s}", "causalclip", int(s), f"{_ablation_row(a)} (ours)", a)
        for a in ablations
        for s in seeds
    ]
    out.mkdir(parents=True, exist_ok=True)
    record = _experiment_record(
        "ablation", preset, roots or {}, cache, specs, out, {"ablations": list(ablations), "seeds": list(seeds)}
    )
    outcomes, long = _run_all(
        preset,
        out,
        specs,
        cache,
        config_file=config_file,
        overrides=overrides,
        retrain=retrain,
        eval_max_per_class=eval_max_per_class,
        progress=progress,
    )
    with_paper = preset.setting == "sd14"
    table, notes = ablation_table(long, with_paper=with_paper)
    if not with_paper:
        notes.append(f"The paper's Table 5 trains on GenImage SD v1.4; preset {preset.name} has no paper rows.")
    if len(seeds) > 1:
        notes.append(f"Rows marked (ours) are the mean over seeds {', '.join(map(str, seeds))}.")
    notes += list(preset.missing)
    caption = f"Table 5: ablation of the two modules, {SETTINGS.get(preset.setting, preset.name)} (%)."
    markdown = _ablation_markdown(table, notes, caption)
    files = [
        _write_frame(out / "metrics_long.csv", long),
        write_text(out / "ablation.md", markdown),
        write_text(out / "ablation.csv", table.to_csv(float_format="%.2f", lineterminator="\n")),
        write_text(out / "ablation.tex", _ablation_latex(table, notes, caption)),
    ]
    errors = cache.error_summary()
    files.append(_write_frame(out / "input_errors.csv", errors))
    write_json(out / EXPERIMENT_FILE, record)  # last: it lists runs that exist and were evaluated
    files.append(out / EXPERIMENT_FILE)
    return AblationResult(preset, outcomes, long, table, notes, markdown, list(cache.sets), errors, files)


# ---------------------------------------------------------------------------------------------------------
# Fig. 4: robustness


JPEG_LEVELS: tuple[int, ...] = (100, 90, 80, 70, 60, 50, 40, 30)
BLUR_LEVELS: tuple[float, ...] = (0, 1, 2, 3, 4)


@dataclass
class RobustnessResult:
    runs: pd.DataFrame  # method, run, perturbation, level, test_set, n_real, n_fake, ap, acc
    long: pd.DataFrame  # method, perturbation, level, test_set, ap, acc (mean over a method's runs)
    mean: pd.DataFrame  # method, perturbation, level, ap, acc (mean over test sets)
    sets: list[CachedSet]
    errors: pd.DataFrame
    files: list[Path] = field(default_factory=list)


def run_robustness(
    preset: ResolvedPreset,
    runs: Mapping[str, Sequence[str | os.PathLike[str]]],
    out: str | os.PathLike[str],
    *,
    cache: FeatureCache,
    jpeg: Sequence[int] = JPEG_LEVELS,
    blur: Sequence[float] = BLUR_LEVELS,
    eval_max_per_class: int | None = None,
    plot: bool = True,
    title: str | None = None,
) -> RobustnessResult:
    """Evaluate every run (``runs``: method -> run folders, averaged per method) on the preset's test sets
    with each JPEG quality and each blur sigma applied to every test image (one perturbation at a time, as in
    Fig. 4; blur 0 is the clean test set). Perturbed features are cached like clean ones.

    Writes ``robustness_runs.csv`` (every run), ``robustness_long.csv`` (method, perturbation, level, test_set,
    ap, acc), ``robustness_mean.csv`` (mean over test sets), ``input_errors.csv`` and, with ``plot``,
    ``robustness.png``/``.svg`` through ``causalclip.evaluation.plots.plot_robustness``.
    """
    out = Path(out)
    if not runs or not all(runs.values()):
        raise ValueError("robustness needs at least one run per method")
    for method, dirs in runs.items():
        for d in dirs:
            if not (Path(d) / "config.json").is_file():
                raise ValueError(f"{d}: not a trained run (no config.json) for method {method!r}")
    levels = [("jpeg", float(q), Perturbation(jpeg_quality=int(q))) for q in jpeg]
    levels += [("blur", float(s), Perturbation(blur_sigma=float(s))) for s in blur]
    if not levels:
        raise ValueError("no perturbation levels: give --jpeg and/or --blur levels")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind, level, pert in levels:
        sets = [cache.get(ds, pert) for ds in preset.test]
        for method, dirs in runs.items():
            for d in dirs:
                res = evaluate(
                    d,
                    [c.path for c in sets],
                    out=out / "evals" / _pert_dir(pert) / _safe(method) / Path(d).name,
                    max_per_class=eval_max_per_class,
                    device=cache.options.device,
                )
                m = res.metrics[res.metrics["generator"] != "mean"]
                rows.append(
                    m.rename(columns={"generator": "test_set"}).assign(
                        method=method, run=str(d), perturbation=kind, level=level
                    )
                )
    cols = ["method", "run", "perturbation", "level", "test_set", "n_real", "n_fake", "ap", "acc"]
    per_run = pd.concat(rows, ignore_index=True)[cols]
    long = (
        per_run.groupby(["method", "perturbation", "level", "test_set"], sort=False)[["ap", "acc"]].mean().reset_index()
    )
    mean = long.groupby(["method", "perturbation", "level"], sort=False)[["ap", "acc"]].mean().reset_index()
    mean["n_test_sets"] = long.groupby(["method", "perturbation", "level"], sort=False).size().to_numpy()
    files = [
        _write_frame(out / "robustness_runs.csv", per_run),
        _write_frame(out / "robustness_long.csv", long),
        _write_frame(out / "robustness_mean.csv", mean),
    ]
    errors = cache.error_summary()
    files.append(_write_frame(out / "input_errors.csv", errors))
    if plot:
        from ..evaluation.plots import plot_robustness

        title = title or f"Robustness, {SETTINGS.get(preset.setting, preset.name)} ({len(preset.test)} test sets)"
        written = plot_robustness(mean, out / "robustness", title=title)
        if isinstance(written, (list, tuple)):
            files += [Path(p) for p in written]
        elif written is not None:
            files.append(Path(written))
    return RobustnessResult(per_run, long, mean, list(cache.sets), errors, files)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "method"


def runs_from_experiment(info: Mapping[str, Any]) -> dict[str, list[str]]:
    """method -> run folders of an experiment record (``read_experiment``), in its order."""
    runs: dict[str, list[str]] = {}
    for r in info["runs"]:
        runs.setdefault(r["method"], []).append(r["dir"])
    return runs


def summary_lines(sets: Sequence[CachedSet], errors: pd.DataFrame, preset: ResolvedPreset) -> list[str]:
    """The end-of-run report: what was extracted or reused, every input not used, missing and unused folders."""
    reused = sum(c.reused for c in sets)
    n_new = sum(c.n_extracted for c in sets)
    lines = [f"features: {len(sets)} set(s), {reused} reused from the cache, {n_new} image(s) extracted now"]
    if len(errors):
        lines.append(f"inputs not used: {len(errors)} (all listed in input_errors.csv)")
        for (name, pert, folder), grp in errors.groupby(["set", "perturbation", "folder"], sort=False):
            reasons = "; ".join(f"{n} x {r}" for r, n in grp["reason"].value_counts().items())
            lines.append(f"  {name} ({pert}): {len(grp)} -> {folder}/errors.csv: {reasons}")
    else:
        lines.append("inputs not used: none")
    lines += [f"missing test set: {m}" for m in preset.missing]
    lines += [f"folder not part of preset {preset.name} (not used): {u}" for u in preset.unused]
    return lines


def seed_spread(long: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean and standard deviation over seeds of the Avg (mean over test sets) of AP and ACC."""
    per_run = long.groupby(["method", "seed"], sort=False)[["ap", "acc"]].mean().reset_index()
    g = per_run.groupby("method", sort=False)
    res = g[["ap", "acc"]].mean().add_suffix("_mean").join(g[["ap", "acc"]].std(ddof=1).add_suffix("_std"))
    res["n_seeds"] = g.size()
    return res.reset_index()
