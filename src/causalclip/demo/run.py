"""``causalclip demo``: the paper's protocol in miniature on the offline benchmark, end to end.

Images in, cross-generator results out, with nothing downloaded::

    build (or reuse) the benchmark      real tiles + four generator families' fakes   (demo.build)
    extract features of every tile      causalclip.extract, layout "manifest", a weight-free forensic backbone
    per family: a feature set           that family's fakes + the split's reals (relabelled to the family)
    train on one family                 CausalCLIP, UnivFD, VIB-Net heads (causalclip.train), every family in turn;
                                        NPR, CNNSpot, FreDect, Fusing, LGrad on the tiles' pixels (causalclip.pixel;
                                        LGrad's transform: a GAN family's trained discriminator)
      (or, protocol "leave-one-out":   on the union of all families but one, each family left out in turn)
    test on all families                causalclip.evaluate, balanced reals/fakes per family
    report                              tables in the paper's Table 1-4 format, results.csv, plots, a detector

The output folder::

    OUT/
      demo.json                 parameters, benchmark location, timings, versions
      results.md, results.csv   the tables; one row per (train family, method, seed, test family); train family is
                                the family (protocol "one-family") or "all-but-<family>" ("leave-one-out");
                                train_seconds: the wall time of that training run
      seeds.csv                 with two or more --seeds: mean and std over seeds per head (seed_spread_frame)
      manifests/<split>.csv     the tiles each extraction read (absolute paths into the cache)
      features/all/<split>/     extracted features of every tile of the split
      features/<family>/<split>/  one family's fakes and the split's reals
      features/all-but-<family>/{train,val}/  leave-one-out: the other families' fakes and the split's reals
      runs/<train family>/<head>-seed<k>/  run folders (causalclip.train)
      eval/<train family>/<head>-seed<k>/  metrics.csv, predictions.csv (causalclip.evaluate)
      plots/                    unseen_ap.png, cross_family_ap.png
      detector/                 a detector folder (causalclip.detector) that ``detect`` and ``serve`` load
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from ..core.io import atomic_write, write_json, write_text
from ..core.revision import code_revision
from ..features.featureset import open_feature_set, write_feature_set
from ..paper.report import ResultsTable
from .build import BUILD_SIZES, Benchmark, BuildConfig, build_benchmark
from .generators import FAMILIES
from .photos import SPLITS, DemoError

__all__ = [
    "DEFAULT_TRAIN",
    "PROTOCOLS",
    "TINY_TRAIN",
    "DemoConfig",
    "DemoResult",
    "HEAD_LABELS",
    "run_demo",
    "seed_spread_frame",
    "spread_markdown",
]

log = logging.getLogger("causalclip")

HEAD_LABELS = {
    "causalclip": "CausalCLIP",
    "univfd": "UnivFD",
    "vib": "VIB-Net",
    "npr": "NPR",
    "cnnspot": "CNNSpot (scratch)",
    "fredect": "FreDect",
    "fredect-simple": "FreDect (simple)",
    "fusing": "Fusing (scratch)",
    "lgrad": "LGrad (scratch)",  # method_labels adds its transformation model
}

# Training of the heads in the demo. The paper's defaults (lr 1e-4, batch 256, early stopping on AP) are made
# for ~700k CLIP features; here there are ~1.3k training vectors, so: smaller batches, a larger learning rate,
# early stopping on validation BCE (AP saturates at 1 on the training family's validation split). Chosen
# before looking at any test numbers and kept fixed; validation data only decides the epoch. Every head trains under
# that one protocol (the learning rate divided on plateaus, no warm-up), whatever fixed schedule its recipe names
# (clipping-lp's constant rate); each keeps its recipe's optimiser.
DEFAULT_TRAIN: dict[str, Any] = {
    "train.epochs": 60,
    "train.batch_size": 64,
    "train.lr": 1e-3,
    "train.lr_schedule": "plateau",
    "train.warmup_epochs": 0,
    "train.patience": 5,
    "train.early_stop_metric": "loss",
    "train.nc_probe_every": 0,
    "train.num_threads": 1,
}


# The tiny preset (tests, a first look in seconds): three epochs.
TINY_TRAIN: dict[str, Any] = {**DEFAULT_TRAIN, "train.epochs": 3}

# Networks trained on the tiles' pixels, beside the heads. The authors' architectures at 64-px tiles are far too
# slow for a 2-core demo (docs/reports/image-training-speed.md), so the demo trains narrow versions of the same
# code (one block per stage, a quarter of the width; FreDect's DCT at the tile size) and says so in every table.
# CNNSpot starts from scratch: ImageNet weights cannot be downloaded here. Training as the heads': learning rate
# 1e-3, at most 4 epochs, validation BCE selects the epoch; the networks see the same training, validation and
# test tiles as the heads (network_images_per_class caps the training tiles per class, None = all).
# Every network that runs without downloaded weights is in the default set (issue 15): Fusing with one patch per
# window type resized to half the tile (three trunk passes of 1 + 1/4 + 1/4 the global view's cost, where the
# authors' layout at 64 px made it ~6x slower than narrow CNNSpot), and LGrad with the discriminator of one GAN
# family of the benchmark as its transformation model (DemoConfig.lgrad_transform_family; the authors' is a
# StyleGAN discriminator trained on LSUN, which cannot be downloaded here).
DEMO_NETWORKS = ("npr", "cnnspot", "fredect", "fusing", "lgrad")
LGRAD_TRANSFORM_FAMILY = "tconv-gan"
NETWORK_IMAGES_PER_CLASS: int | None = None
_NARROW_RESNET = {"layers": [1, 1, 1, 1], "widths": [16, 32, 64, 128], "stem_width": 16}


def network_architecture(name: str, tile: int) -> dict[str, Any]:
    """The narrow architecture the demo trains for network ``name`` at ``tile`` px (overrides of its config)."""
    if name == "npr":
        return {"layers": [1, 1], "widths": [16, 32], "stem_width": 16}
    if name == "fredect":
        return {**_NARROW_RESNET, "size": tile}
    if name == "fredect-simple":
        return {"size": tile}
    if name == "fusing":  # the global view at the tile size (a 2 x 2 map at 64 px); one patch per window type, the
        # tile/2 one at its own resolution and the tile/4 one up-sampled x2 (the authors: 3 + 3 patches, all at 224)
        return {**_NARROW_RESNET, "global_size": tile, "score_windows": [max(1, min(2, tile // 32)), 1], "patches_per_window": [1, 1],
                "patch_sizes": [tile // 2, tile // 4], "local_size": tile // 2, "embed_dim": 32, "heads": 2, "depth": 1}  # fmt: skip
    if name == "lgrad":  # the classifier narrow; the transform a GAN family's DCGAN discriminator at the tile size
        # (its file and width are the benchmark's: _train_networks adds them)
        return {**_NARROW_RESNET, "transform_arch": "dcgan", "resolution": tile}
    return dict(_NARROW_RESNET)


DEFAULT_NETWORK_TRAIN: dict[str, Any] = {
    "recipe.epochs": 4,
    "recipe.batch_size": 32,
    "recipe.lr": 1e-3,
    "recipe.train_resize": None,
    "train.early_stop_metric": "loss",
    "train.patience": 2,
    "train.workers": 0,
    "train.num_threads": 0,
    "train.val_max_samples": 200,
}
TINY_NETWORK_TRAIN: dict[str, Any] = {**DEFAULT_NETWORK_TRAIN, "recipe.epochs": 1, "recipe.batch_size": 8}

# "one-family": train on one family, test on all (the paper's protocol). "leave-one-out": train on the union of
# all families but one (several training environments), test on all; the family left out is the unseen one.
PROTOCOLS = ("one-family", "leave-one-out")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    build: BuildConfig = BUILD_SIZES["full"]
    # Backbone spec (causalclip.backbones.forensic); None: f"spectrum:size={tile}+npr:size={tile}" (weight-free)
    backbone: str | None = None
    heads: tuple[str, ...] = ("causalclip", "univfd", "vib")
    # Networks trained on the tiles themselves (causalclip.pixel), narrow versions (network_architecture).
    networks: tuple[str, ...] = DEMO_NETWORKS
    # LGrad's transformation model: the trained discriminator of this GAN family of the benchmark.
    lgrad_transform_family: str = LGRAD_TRANSFORM_FAMILY
    network_overrides: tuple[tuple[str, Any], ...] = tuple(DEFAULT_NETWORK_TRAIN.items())
    network_images_per_class: int | None = NETWORK_IMAGES_PER_CLASS
    protocol: Literal["one-family", "leave-one-out"] = "one-family"
    # None: each family in turn. One-family: the families trained on; leave-one-out: the families left out.
    train_families: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0,)
    train_overrides: tuple[tuple[str, Any], ...] = tuple(DEFAULT_TRAIN.items())
    # The run exported as OUT/detector: its training family (leave-one-out: the family it left out); None: the first
    detector_family: str | None = None
    detector_head: str = "causalclip"
    extract_batch_size: int = 64
    plots: bool = True

    @classmethod
    def preset(cls, name: str, **changes: Any) -> DemoConfig:
        """The "full" or "tiny" demo (benchmark preset and head training), with ``changes`` to its fields."""
        if name not in BUILD_SIZES:
            raise DemoError(f"unknown preset {name!r}; available: {sorted(BUILD_SIZES)}")
        train = TINY_TRAIN if name == "tiny" else DEFAULT_TRAIN
        nets = TINY_NETWORK_TRAIN if name == "tiny" else DEFAULT_NETWORK_TRAIN
        per_class = 16 if name == "tiny" else NETWORK_IMAGES_PER_CLASS
        return cls(
            **{
                "build": BUILD_SIZES[name],
                "train_overrides": tuple(train.items()),
                "network_overrides": tuple(nets.items()),
                "network_images_per_class": per_class,
                **changes,
            }
        )

    def methods(self) -> tuple[str, ...]:
        """Heads on features, then networks on pixels: the rows of every table."""
        return (*self.heads, *self.networks)

    def method_labels(self) -> dict[str, str]:
        """Every method's row label, saying how it was initialised and, for LGrad, what its transform is."""
        labels = {m: HEAD_LABELS.get(m, m) for m in self.methods()}
        if "lgrad" in labels:
            labels["lgrad"] = f"LGrad (scratch; transform: {self.lgrad_transform_family}'s discriminator)"
        return labels

    def backbone_spec(self) -> str:
        t = self.build.tile
        return self.backbone or f"spectrum:size={t}+npr:size={t}"

    def training_families(self) -> tuple[str, ...]:
        """The families trained on in turn (one-family) or left out in turn (leave-one-out)."""
        return self.train_families or self.build.families

    def train_set_name(self, family: str) -> str:
        """results.csv's train_family and the folder name of the runs for ``family`` (an item of training_families)."""
        return f"all-but-{family}" if self.protocol == "leave-one-out" else family

    def train_sets(self) -> tuple[str, ...]:
        return tuple(self.train_set_name(f) for f in self.training_families())

    def seen_families(self, family: str) -> tuple[str, ...]:
        """The families whose fakes the runs for ``family`` are trained on."""
        if self.protocol == "leave-one-out":
            return tuple(f for f in self.build.families if f != family)
        return (family,)


@dataclass
class DemoResult:
    out: Path
    results: pd.DataFrame  # train_family, head, seed, test_family, seen, n_real, n_fake, ap, acc, real_acc, fake_acc
    tables: dict[str, ResultsTable]  # "<train family>/ap", "<train family>/acc", "summary"
    detector: Path | None
    seconds: dict[str, float] = field(default_factory=dict)
    benchmark: Benchmark | None = None
    spread: pd.DataFrame | None = None  # seed_spread_frame(results, cfg): None with one seed
    config: DemoConfig | None = None


def _check_out(out: Path, state: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix a demo of another benchmark or backbone into ``out`` (extraction would append to it)."""
    path = out / "demo-state.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != state:
            if not overwrite:
                raise DemoError(
                    f"{out}: holds a demo of another benchmark or backbone ({path}); use another --out or --overwrite"
                )
            for sub in ("features", "runs", "eval", "manifests", "plots", "detector"):
                shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, state, sort_keys=True)


def _extract_split(bench: Benchmark, split: str, out: Path, backbone, cfg: DemoConfig, progress: bool) -> Path:
    from ..features.extract import extract
    from ..features.job import ExtractConfig
    from ..images.layouts import list_samples

    manifest = out / "manifests" / f"{split}.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    samples = bench.samples(split)
    atomic_write(manifest, lambda p: samples.to_csv(p, index=False))
    listing = list_samples(manifest, "manifest")
    target = out / "features" / "all" / split
    res = extract(
        listing.samples,
        root=listing.root,
        out=target,
        backbone=backbone,
        config=ExtractConfig(batch_size=cfg.extract_batch_size, workers=0, processes=1, storage_dtype="float32"),
        ignored=listing.ignored,
        progress=progress,
    )
    if len(res.errors):
        raise DemoError(f"{target}: {len(res.errors)} benchmark tile(s) could not be used; see {target / 'errors.csv'}")
    return target


def _family_sets(all_sets: dict[str, Path], families: tuple[str, ...], out: Path) -> dict[tuple[str, str], Path]:
    """features/<family>/<split>: the family's fakes and the split's reals, reals relabelled to the family."""
    sets = {}
    for split, path in all_sets.items():
        fs = open_feature_set(path)
        gens = fs.generators
        meta = {k: v for k, v in fs.meta.items() if k not in ("dim", "dtype", "count", "shards", "n_errors")}
        for fam in families:
            rows = np.flatnonzero((gens == "real") | (gens == fam))
            samples = fs.samples.iloc[rows][["path", "label", "generator"]].reset_index(drop=True)
            samples["generator"] = fam
            x = fs.take(rows).astype(np.float32)
            sets[(fam, split)] = write_feature_set(
                out / "features" / fam / split, x, samples, meta={**meta, "demo_family": fam}
            )
    return sets


def _leave_one_out_sets(
    all_sets: dict[str, Path], families: tuple[str, ...], left_out: tuple[str, ...], out: Path
) -> dict[tuple[str, str], Path]:
    """features/all-but-<F>/{train,val}: the fakes of every family but F, each keeping its family as ``generator``
    (the training environments), and the split's reals once (``generator`` "real"), as in features/all."""
    sets = {}
    for split in ("train", "val"):
        fs = open_feature_set(all_sets[split])
        gens = fs.generators
        meta = {k: v for k, v in fs.meta.items() if k not in ("dim", "dtype", "count", "shards", "n_errors")}
        for fam in left_out:
            others = [f for f in families if f != fam]
            rows = np.flatnonzero((gens == "real") | np.isin(gens, others))
            samples = fs.samples.iloc[rows][["path", "label", "generator"]].reset_index(drop=True)
            name = f"all-but-{fam}"
            sets[(name, split)] = write_feature_set(
                out / "features" / name / split,
                fs.take(rows).astype(np.float32),
                samples,
                meta={**meta, "demo_family": name, "demo_left_out": fam, "demo_train_families": others},
            )
    return sets


@contextmanager
def _quiet_training():
    """The training loop logs every epoch; the demo runs dozens of trainings and reports one line each."""
    logger = logging.getLogger("causalclip")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _overrides(cfg: DemoConfig, seed: int) -> dict[str, Any]:
    return {**dict(cfg.train_overrides), "train.seed": seed}


def _loo(cfg: DemoConfig) -> bool:
    return cfg.protocol == "leave-one-out"


def _unseen_label(cfg: DemoConfig) -> str:
    """The tables' column of the mean over the test families not seen in training."""
    return "Left out" if _loo(cfg) else "Unseen"


def _protocol_line(cfg: DemoConfig) -> str:
    if _loo(cfg):
        return (
            f"Protocol `leave-one-out`: each head is trained on the union of all {len(cfg.build.families)} families "
            "but one (their fakes and the reals) and tested on every family; the family left out is the unseen one."
        )
    return "Protocol `one-family`: each head is trained on one family and tested on every family."


def _summary_caption(cfg: DemoConfig) -> str:
    if _loo(cfg):
        return "AP (%) on the family left out of training; each column: trained on all the other families."
    return "Mean AP (%) on the families not seen in training, per training family."


def _mean_frame(results: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean over seeds per (train family, head, test family), with ``seen``."""
    keys = ["train_family", "head", "test_family", "seen"]
    return results.groupby(keys, sort=False)[metrics].mean().reset_index()


def _tables(results: pd.DataFrame, cfg: DemoConfig) -> dict[str, ResultsTable]:
    """The paper's Table 1-4 format per training set (AP and ACC), and a summary over training sets."""
    families = list(cfg.build.families)
    tables: dict[str, ResultsTable] = {}
    n_seeds = results["seed"].nunique()
    seeds_note = (
        (f"Mean of {n_seeds} training seeds; per-seed values in results.csv, std over seeds in seeds.csv.",)
        if n_seeds > 1
        else ()
    )
    unseen_label = _unseen_label(cfg)
    labels = cfg.method_labels()
    seeds_note = (*seeds_note, *_networks_note(cfg))
    mean = _mean_frame(results, ["ap", "acc"])
    for fam in cfg.training_families():
        name, seen = cfg.train_set_name(fam), cfg.seen_families(fam)
        for metric in ("ap", "acc"):
            rows = {}
            for head in cfg.methods():
                sub = mean[(mean["train_family"] == name) & (mean["head"] == head)].set_index("test_family")[metric]
                values = {(f"{g} (train)" if g in seen else g): 100 * sub[g] for g in families}
                unseen = [100 * sub[g] for g in families if g not in seen]
                values[unseen_label] = float(np.mean(unseen))
                values["Avg"] = float(np.mean([100 * sub[g] for g in families]))
                rows[labels[head]] = values
            frame = pd.DataFrame.from_dict(rows, orient="index").round(2)
            frame.index.name = "method"
            if _loo(cfg):
                first = (
                    f"Trained on {', '.join(seen)} together (their columns are in-distribution tests), {fam} left "
                    f"out; Left out = the AP on {fam}; Avg = mean over all {len(families)}, as the paper's Avg."
                )
            else:
                first = (
                    f"Trained on {fam} (its column is the in-distribution test); Unseen = mean over the other "
                    f"{len(families) - 1} families; Avg = mean over all {len(families)}, as the paper's Avg."
                )
            tables[f"{name}/{metric}"] = ResultsTable(frame=frame, metric=metric, notes=(first, *seeds_note))
    rows = {}
    for head in cfg.methods():
        sub = mean[(mean["head"] == head) & ~mean["seen"].astype(bool)]
        per_train = sub.groupby("train_family")["ap"].mean()
        values = {name: 100 * per_train[name] for name in cfg.train_sets()}
        values["Avg"] = float(np.mean(list(values.values())))
        rows[labels[head]] = values
    frame = pd.DataFrame.from_dict(rows, orient="index").round(2)
    frame.index.name = "method"
    note = (
        "Each column: trained on every family but the one named, AP on that family."
        if _loo(cfg)
        else "Each column: trained on that family, mean AP over the families it did not see."
    )
    tables["summary"] = ResultsTable(frame=frame, metric="ap", notes=(note, *seeds_note))
    return tables


def _networks_note(cfg: DemoConfig) -> tuple[str, ...]:
    """What the tables' rows of networks are, how each was initialised, and what the demo cannot run."""
    labels = cfg.method_labels()
    notes = []
    if cfg.networks:
        names = ", ".join(labels[n] for n in cfg.networks)
        notes.append(
            f"{names}: trained on the tiles' pixels"
            + (
                f" (at most {cfg.network_images_per_class} per class and family)"
                if cfg.network_images_per_class
                else ""
            )
            + ": narrow versions of the authors' networks (one block per stage, a quarter of the width), from "
            "scratch (no ImageNet weights); the heads above them score weight-free forensic features."
        )
    if "fusing" in cfg.networks:
        t = cfg.build.tile
        notes.append(
            f"Fusing: the global view at {t} px and one patch per window type ({t // 2} and {t // 4} px, resized to "
            f"{t // 2}), where the authors pick 3 + 3 patches and resize all to 224."
        )
    if "lgrad" in cfg.networks:
        fam = cfg.lgrad_transform_family
        notes.append(
            f"LGrad's transformation model is {fam}'s discriminator, trained here against {fam}'s generator on the "
            f"real training tiles, then frozen (the authors': StyleGAN's, trained on LSUN bedrooms). It has seen "
            f"{fam}'s fakes: on the {fam} test column LGrad is not unseen, whatever family its classifier was "
            "trained on."
        )
    notes.append(
        "Not run: CLIPping's prompt tuning (it needs CLIP's pretrained text tower; the demo's features are not "
        "CLIP's). Its linear probe (--heads clipping-lp) is UnivFD's with another initialisation."
    )
    return tuple(notes)


SPREAD_COLUMNS = [
    "head",
    "train_family",
    "test",
    "n_seeds",
    "ap_mean",
    "ap_std",
    "acc_mean",
    "acc_std",
    "ap_min",
]


def seed_spread_frame(results: pd.DataFrame, cfg: DemoConfig) -> pd.DataFrame | None:
    """The spread over training seeds (seeds.csv); None with fewer than two seeds (no std to give).

    One row per head, ``test`` ("unseen": the families the head was not trained on; "seen": the families it was
    trained on, the in-distribution test) and ``train_family`` (one training family as in results.csv, e.g.
    "all-but-vae" in leave-one-out, or "all": every training family). For each seed, the mean AP and ACC over that
    row's (training family, test family) pairs; then ``*_mean`` and ``*_std``: the mean and the sample standard
    deviation (ddof=1) of those per-seed means over the seeds (``causalclip.paper.experiment.seed_spread``). Every
    training family has the same number of unseen families (one-family: all but one; leave-one-out: one), so "all"
    is the mean over training families of the per-family value, the tables' "Avg". ``ap_min``: the lowest single
    AP among the row's pairs and seeds. Fractions (0-1), like results.csv."""
    from ..paper.experiment import seed_spread

    if results["seed"].nunique() < 2:
        return None
    seen = results["seen"].astype(bool)
    parts = []
    for test, mask in (("unseen", ~seen), ("seen", seen)):
        for fam in (*cfg.train_sets(), "all"):
            sub = results[mask if fam == "all" else mask & (results["train_family"] == fam)]
            part = seed_spread(sub.rename(columns={"head": "method"})).rename(columns={"method": "head"})
            part["ap_min"] = sub.groupby("head")["ap"].min().reindex(part["head"]).to_numpy()
            part["train_family"], part["test"] = fam, test
            parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    order = {head: k for k, head in enumerate(cfg.methods())}
    frame = frame.sort_values("head", key=lambda h: h.map(order), kind="stable").reset_index(drop=True)
    return frame[SPREAD_COLUMNS]


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _markdown_rows(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def spread_markdown(
    spread: pd.DataFrame,
    *,
    acc_table: bool = True,
    protocol: str = "one-family",
    labels: dict[str, str] | None = None,
) -> str:
    """The spread over seeds as Markdown: unseen-family AP (and ACC) per training family, then one row per head.
    With ``protocol`` "leave-one-out" the unseen family is the one left out, and the wording says so. ``labels``:
    each head's row label (DemoConfig.method_labels), by default HEAD_LABELS."""
    label = {**HEAD_LABELS, **(labels or {})}
    n = int(spread["n_seeds"].min())
    heads = list(dict.fromkeys(spread["head"]))
    fams = [f for f in dict.fromkeys(spread["train_family"]) if f != "all"]
    cell = spread.set_index(["head", "test", "train_family"])
    loo = protocol == "leave-one-out"
    if loo:
        what = (
            "left out: the AP on the family left out of training; in-distribution: the mean over the "
            "training families' own tests"
        )
    else:
        what = "unseen: over the families not seen in training; in-distribution: over the training families' own test"
    lines = [
        f"Over {n} training seeds: mean ± sample standard deviation (ddof=1) over the seeds of each seed's mean ({what}).",
        "",
    ]
    for metric in ("ap", "acc") if acc_table else ("ap",):
        if loo:
            lines.append(
                f"{metric.upper()} (%) on the family left out, per training set; Avg = over all training sets:"
            )
        else:
            lines.append(f"Unseen-family {metric.upper()} (%) per training family; Avg = over all training families:")
        lines.append("")
        rows = []
        for head in heads:
            values = [cell.loc[(head, "unseen", f)] for f in (*fams, "all")]
            rows.append([label.get(head, head), *[_pm(v[f"{metric}_mean"], v[f"{metric}_std"]) for v in values]])
        lines += _markdown_rows(["Method", *fams, "Avg"], rows)
        lines.append("")
    lines.append(f"Per head, over all training {'sets' if loo else 'families'}:")
    lines.append("")
    rows = []
    for head in heads:
        u, s = cell.loc[(head, "unseen", "all")], cell.loc[(head, "seen", "all")]
        rows.append(
            [
                label.get(head, head),
                _pm(u["ap_mean"], u["ap_std"]),
                _pm(u["acc_mean"], u["acc_std"]),
                _pm(s["ap_mean"], s["ap_std"]),
                f"{100 * s['ap_min']:.2f}",
            ]
        )
    unseen = "left-out" if loo else "unseen"
    header = ["Method", f"{unseen} AP", f"{unseen} ACC", "in-distribution AP", "lowest in-distribution AP"]
    lines += _markdown_rows(header, rows)
    return "\n".join(lines) + "\n"


def _plots(results: pd.DataFrame, cfg: DemoConfig, out: Path) -> list[Path]:
    """unseen_ap.png (grouped bars) and cross_family_ap.png (train x test AP per head), via Agg, no pyplot."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed; no plots (pip install 'causalclip[demo]')")
        return []
    out.mkdir(parents=True, exist_ok=True)
    mean = _mean_frame(results, ["ap"])
    trains, heads, tests = list(cfg.train_sets()), list(cfg.methods()), list(cfg.build.families)
    labels = cfg.method_labels()
    written = []

    fig = Figure(figsize=(1.6 + 1.5 * len(trains), 3.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(heads)
    for k, head in enumerate(heads):
        sub = mean[(mean["head"] == head) & ~mean["seen"].astype(bool)]
        vals = [100 * sub[sub["train_family"] == f]["ap"].mean() for f in trains]
        xs = np.arange(len(trains)) + (k - (len(heads) - 1) / 2) * width
        ax.bar(xs, vals, width, label=labels[head])
    ax.set_xticks(np.arange(len(trains)), trains)
    ax.set_xlabel("training set" if _loo(cfg) else "training family")
    ax.set_ylabel("AP on the family left out (%)" if _loo(cfg) else "AP on unseen families (%)")
    ax.set_ylim(0, 100)
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out / "unseen_ap.png"
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    written.append(path)

    fig = Figure(figsize=(3.4 * len(heads), 3.2))
    FigureCanvasAgg(fig)
    for k, head in enumerate(heads):
        ax = fig.add_subplot(1, len(heads), k + 1)
        grid = np.full((len(trains), len(tests)), np.nan)
        for i, f in enumerate(trains):
            for j, g in enumerate(tests):
                hit = mean[(mean["head"] == head) & (mean["train_family"] == f) & (mean["test_family"] == g)]
                if len(hit):
                    grid[i, j] = 100 * hit["ap"].iloc[0]
        ax.imshow(grid, vmin=30, vmax=100, cmap="viridis")  # 30.7: a perfectly inverted ranking
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8, color="white" if v < 75 else "black")
        ax.set_xticks(range(len(tests)), tests, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(trains)), trains if k == 0 else [""] * len(trains), fontsize=7)
        ax.set_title(f"{labels[head]}: AP (%)", fontsize=9)
        ax.set_xlabel("test family", fontsize=8)
    fig.tight_layout()
    path = out / "cross_family_ap.png"
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    written.append(path)
    return written


def _images(out: Path, split: str, generators: tuple[str, ...], relabel: str | None):
    """The split's real tiles and the fakes of ``generators`` as an image set (manifests/<split>.csv); with
    ``relabel`` every row's generator becomes it (a family's set), else fakes keep their family, reals "real"."""
    from ..images.layouts import list_samples
    from ..pixel.data import ImageSet

    manifest = out / "manifests" / f"{split}.csv"
    samples = list_samples(manifest, "manifest").samples
    samples = samples[(samples["generator"] == "real") | samples["generator"].isin(generators)]
    samples = samples[["path", "label", "generator"]].reset_index(drop=True)
    if relabel is not None:
        samples["generator"] = relabel
    desc = {"root": str(manifest), "layout": "manifest", "generators": list(generators), "n": len(samples)}
    return ImageSet(root=manifest, samples=samples, description={**desc, "n_fake": int(samples["label"].sum())})


def _benchmark_parts(net: str, cfg: DemoConfig, bench: Benchmark) -> dict[str, Any]:
    """Overrides of network ``net`` that come from the built benchmark: LGrad's transformation model (the file of
    the chosen GAN family's trained discriminator, and its width)."""
    if net != "lgrad":
        return {}
    fam = cfg.lgrad_transform_family
    return {"lgrad.transform": str(bench.discriminator(fam)), "lgrad.dcgan_width": cfg.build.family_config(fam).width}


def _train_networks(cfg: DemoConfig, out: Path, runs: dict, bench: Benchmark) -> list[dict[str, Any]]:
    """Train every network on every training set (its tiles' pixels) and test it on every family."""
    from ..images.layouts import balanced_per_class
    from ..pixel.config import resolve_pixel_config
    from ..pixel.evaluate import evaluate_images
    from ..pixel.loop import train_network

    tile = cfg.build.tile
    tests = [_images(out, "test", (g,), g) for g in cfg.build.families]
    rows = []
    for fam in cfg.training_families():
        name, seen = cfg.train_set_name(fam), cfg.seen_families(fam)
        relabel = None if _loo(cfg) else fam
        train_set = _images(out, "train", seen, relabel)
        if cfg.network_images_per_class:
            train_set.samples = balanced_per_class(train_set.samples, cfg.network_images_per_class, 0)
            train_set.description["n"] = len(train_set.samples)
        val_set = _images(out, "val", seen, relabel)
        for net in cfg.networks:
            for seed in cfg.seeds:
                run_dir = out / "runs" / name / f"{net}-seed{seed}"
                overrides = {
                    **dict(cfg.network_overrides),
                    "recipe.train_crop": tile,
                    "recipe.test_crop": tile,
                    "train.seed": seed,
                    **{f"{net}.{k}": v for k, v in network_architecture(net, tile).items()},
                    **_benchmark_parts(net, cfg, bench),
                }
                rc = resolve_pixel_config(net, overrides=overrides)  # only this network's keys
                t_run = time.perf_counter()
                with _quiet_training():
                    res = train_network(
                        train_set=train_set, val_set=val_set, out=run_dir, run_config=rc, progress=False, overwrite=True
                    )
                    train_s = time.perf_counter() - t_run
                    ev = evaluate_images(run_dir, tests, out=out / "eval" / name / f"{net}-seed{seed}")
                runs[(name, net, seed)] = run_dir
                metrics = ev.metrics[ev.metrics["generator"] != "mean"]
                for _, m in metrics.iterrows():
                    rows.append(
                        {
                            "train_family": name,
                            "head": net,
                            "seed": seed,
                            "test_family": m["generator"],
                            "seen": m["generator"] in seen,
                            **{k: m[k] for k in ("n_real", "n_fake", "ap", "acc", "real_acc", "fake_acc")},
                            "best_epoch": res.best_epoch,
                            "train_seconds": train_s,
                        }
                    )
                unseen = metrics[~metrics["generator"].isin(seen)]["ap"].mean()
                log.info("trained %s on %s's pixels (seed %d): unseen AP %.2f", net, name, seed, 100 * unseen)
    return rows


def run_demo(
    out: str | os.PathLike[str],
    cfg: DemoConfig | None = None,
    *,
    cache: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> DemoResult:
    """Build or reuse the benchmark, extract, train every head on every family (protocol "one-family") or on all
    families but each one in turn ("leave-one-out"), evaluate on all, report."""
    from ..backbones.registry import load_backbone
    from ..detector.folder import export_detector_from_feature_set
    from ..evaluation.evaluate import evaluate
    from ..training.config import resolve_run_config
    from ..training.loop import train

    cfg = cfg or DemoConfig()
    out = Path(out)
    unknown = sorted(set(cfg.training_families()) - set(cfg.build.families))
    if unknown:
        raise DemoError(f"training family(ies) {unknown} are not among the benchmark's {list(cfg.build.families)}")
    if not cfg.seeds:
        raise DemoError("at least one seed is needed")
    if cfg.protocol not in PROTOCOLS:
        raise DemoError(f"unknown protocol {cfg.protocol!r}; available: {list(PROTOCOLS)}")
    if _loo(cfg) and len(cfg.build.families) < 2:
        raise DemoError("the leave-one-out protocol needs at least two generator families")
    if "lgrad" in cfg.networks:
        fam = cfg.lgrad_transform_family
        if fam not in cfg.build.families or not FAMILIES[fam].has_discriminator:
            gans = [f for f in cfg.build.families if FAMILIES[f].has_discriminator]
            raise DemoError(
                f"lgrad's transformation model is the discriminator of GAN family {fam!r}, which this benchmark does "
                f"not build (its GAN families: {gans}); choose one of them or leave lgrad out of the networks"
            )
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    bench = build_benchmark(cfg.build, cache)
    seconds["benchmark"] = time.perf_counter() - t0
    spec = cfg.backbone_spec()
    _check_out(out, {"benchmark": str(bench.root), "families": list(cfg.build.families), "backbone": spec}, overwrite)

    t0 = time.perf_counter()
    backbone = load_backbone(spec, precision="auto")
    log.info("extracting %s features (%d-d) of every tile", spec, backbone.dim)
    all_sets = {split: _extract_split(bench, split, out, backbone, cfg, progress) for split in SPLITS}
    sets = _family_sets(all_sets, cfg.build.families, out)
    if _loo(cfg):
        sets.update(_leave_one_out_sets(all_sets, cfg.build.families, cfg.training_families(), out))
    seconds["extract"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows, runs = [], {}
    threads = torch.get_num_threads()
    try:
        for fam in cfg.training_families():
            name, seen = cfg.train_set_name(fam), cfg.seen_families(fam)
            for head in cfg.heads:
                for seed in cfg.seeds:
                    run_dir = out / "runs" / name / f"{head}-seed{seed}"
                    rc = resolve_run_config(head, overrides=_overrides(cfg, seed))
                    t_run = time.perf_counter()
                    with _quiet_training():
                        res = train(
                            train_set=sets[(name, "train")],
                            val_set=sets[(name, "val")],
                            out=run_dir,
                            run_config=rc,
                            progress=False,
                            overwrite=True,
                        )
                        train_s = time.perf_counter() - t_run
                        ev = evaluate(
                            run_dir,
                            [sets[(g, "test")] for g in cfg.build.families],
                            out=out / "eval" / name / f"{head}-seed{seed}",
                        )
                    runs[(name, head, seed)] = run_dir
                    metrics = ev.metrics[ev.metrics["generator"] != "mean"]
                    for _, m in metrics.iterrows():
                        rows.append(
                            {
                                "train_family": name,
                                "head": head,
                                "seed": seed,
                                "test_family": m["generator"],
                                "seen": m["generator"] in seen,
                                **{k: m[k] for k in ("n_real", "n_fake", "ap", "acc", "real_acc", "fake_acc")},
                                "best_epoch": res.best_epoch,
                                "train_seconds": train_s,
                            }
                        )
                    unseen = metrics[~metrics["generator"].isin(seen)]["ap"].mean()
                    what = "left-out-family" if _loo(cfg) else "unseen-family"
                    log.info("trained %s on %s (seed %d): %s AP %.2f", head, name, seed, what, 100 * unseen)
        seconds["train_and_evaluate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if cfg.networks:
            rows += _train_networks(cfg, out, runs, bench)
        seconds["networks"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    results = pd.DataFrame(rows)
    atomic_write(out / "results.csv", lambda p: results.to_csv(p, index=False, float_format="%.6f"))
    tables = _tables(results, cfg)
    spread = seed_spread_frame(results, cfg)
    if spread is None:
        (out / "seeds.csv").unlink(missing_ok=True)  # one seed: no spread; none left from an earlier run
    else:
        atomic_write(out / "seeds.csv", lambda p: spread.to_csv(p, index=False, float_format="%.6f"))
    write_text(out / "results.md", render_tables(tables, cfg, spec, spread))

    if cfg.plots:
        _plots(results, cfg, out / "plots")

    det_set = cfg.train_set_name(cfg.detector_family or cfg.training_families()[0])
    det_run = runs.get((det_set, cfg.detector_head, cfg.seeds[0]))
    detector = None
    if det_run is None:
        log.warning("no run of %s on %s: no detector folder written", cfg.detector_head, det_set)
    else:
        detector = export_detector_from_feature_set(
            det_run,
            sets[(det_set, "train")],
            out / "detector",
            provenance={
                "demo": str(out.resolve()),
                "benchmark": str(bench.root),
                "train_family": det_set,
                "protocol": cfg.protocol,
            },
            overwrite=True,
        )
    seconds["total"] = time.perf_counter() - t_all
    write_json(
        out / "demo.json",
        {
            "benchmark": str(bench.root),
            "build": dataclasses.asdict(cfg.build),
            "build_seconds": bench.seconds,
            "backbone": spec,
            "backbone_record": backbone.describe(),
            "heads": list(cfg.heads),
            "networks": list(cfg.networks),
            "network_overrides": dict(cfg.network_overrides),
            "network_architectures": {n: network_architecture(n, cfg.build.tile) for n in cfg.networks},
            "lgrad_transform": (
                {"family": cfg.lgrad_transform_family, "file": str(bench.discriminator(cfg.lgrad_transform_family))}
                if "lgrad" in cfg.networks
                else None
            ),
            "method_labels": cfg.method_labels(),
            "protocol": cfg.protocol,
            "train_families": list(cfg.train_sets()),  # results.csv's train_family values
            "left_out_families": list(cfg.training_families()) if _loo(cfg) else None,
            "seeds": list(cfg.seeds),
            "code_revision": code_revision(),
            "train_overrides": dict(cfg.train_overrides),
            "detector": str(detector) if detector else None,
            "detector_run": str(det_run) if det_run else None,
            "seconds": seconds,
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
            "summary_unseen_ap": tables["summary"].frame.to_dict(orient="index"),
            "seed_spread": None if spread is None else spread.to_dict(orient="records"),
        },
        sort_keys=True,
    )
    return DemoResult(
        out=out,
        results=results,
        tables=tables,
        detector=detector,
        seconds=seconds,
        benchmark=bench,
        spread=spread,
        config=cfg,
    )


def transfer_ranking(summary: ResultsTable, cfg: DemoConfig) -> str:
    """One sentence that answers which detector transfers: every method ranked by the summary's Avg (mean AP on
    the families it was not trained on), from the numbers of this run."""
    avg = summary.frame["Avg"].astype(float).sort_values(ascending=False, kind="stable")
    ranked = ", ".join(f"{method} {value:.2f}" for method, value in avg.items())
    unseen = "the family left out" if _loo(cfg) else "the families each was not trained on"
    caveat = (
        f" LGrad's transformation model has seen {cfg.lgrad_transform_family}'s fakes, so its"
        f" {cfg.lgrad_transform_family} column is not unseen for it (the per-family tables show it)."
        if "lgrad" in cfg.networks
        else ""
    )
    return f"Which detector transfers: ranked by mean AP on {unseen} (Avg above; 50 is chance): {ranked}.{caveat}"


def render_tables(
    tables: dict[str, ResultsTable], cfg: DemoConfig, spec: str, spread: pd.DataFrame | None = None
) -> str:
    """results.md: the summary first, the spread over seeds (two or more seeds), then AP and ACC per family."""
    title = (
        "# Offline demo, leave-one-out: train on all generator families but one, test on all"
        if _loo(cfg)
        else "# Offline demo: train on one generator family, test on all"
    )
    lines = [
        title,
        "",
        _protocol_line(cfg),
        "",
        f"Backbone: `{spec}` (weight-free forensic features, not CLIP). Heads trained by causalclip.train with "
        f"{', '.join(f'{k}={v}' for k, v in cfg.train_overrides)}.",
        "",
        tables["summary"].to_markdown(caption=_summary_caption(cfg)),
        transfer_ranking(tables["summary"], cfg),
        "",
    ]
    if spread is not None:
        lines.append(spread_markdown(spread, protocol=cfg.protocol, labels=cfg.method_labels()))
    for fam in cfg.training_families():
        name = cfg.train_set_name(fam)
        trained = f"all families but **{fam}**" if _loo(cfg) else f"**{fam}**"
        for metric in ("ap", "acc"):
            t = tables[f"{name}/{metric}"]
            lines.append(t.to_markdown(caption=f"Trained on {trained}: {t.label} (%) per test family."))
    return "\n".join(lines)


def summary_text(result: DemoResult) -> str:
    """What the command prints: the protocol, the summary table and the per-family AP tables, as Markdown."""
    cfg = result.config or DemoConfig()
    loo = _loo(cfg)
    caption = _summary_caption(cfg) if loo else "Mean AP (%) on unseen families, per training family:"
    parts = [
        _protocol_line(cfg) + "\n",
        result.tables["summary"].to_markdown(caption=caption),
        transfer_ranking(result.tables["summary"], cfg) + "\n",
    ]
    if result.spread is not None:
        parts.append(spread_markdown(result.spread, acc_table=False, protocol=cfg.protocol, labels=cfg.method_labels()))
    for key, table in result.tables.items():
        if key.endswith("/ap"):
            name = key[:-3]
            trained = f"all families but {name.removeprefix('all-but-')}" if loo else name
            parts.append(table.to_markdown(caption=f"Trained on {trained}: AP (%)"))
    total = result.seconds.get("total", math.nan)
    stages = ", ".join(
        f"{label} {result.seconds[key]:.0f} s"
        for key, label in (
            ("benchmark", "benchmark"),
            ("extract", "features"),
            ("train_and_evaluate", "heads"),
            ("networks", "networks"),
        )  # fmt: skip
        if key in result.seconds
    )
    parts.append(
        f"done in {total:.0f} s ({stages}); tables in {result.out / 'results.md'}, detector in {result.detector}"
    )
    return "\n".join(parts)
