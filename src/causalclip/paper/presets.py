"""The paper's two experimental protocols as presets: which folders are the training, validation and test sets.

A preset names a training generator and the 15 test sets of the paper (docs/method.md#protocols-and-data):

- ``sd14``: train on GenImage's Stable Diffusion v1.4 ``train/`` split (Tables 1-2, 5);
- ``progan``: train on CNNDetection's ProGAN training set (Tables 3-4);

and both test on GenImage's seven diffusion generators (their ``val/`` split, GenImage's test set) and
CNNDetection's eight test sets (``CNN_synth_testset``). ``resolve_preset`` turns a preset and the dataset roots
a user has into concrete folders, checks them all, and reports every missing one in a single message.

**Validation** (early stopping) is never a test set. The paper only says "early stopping"; docs/method.md#validation uses the
training generator's held-out split. CNNDetection ships one (``progan_val``) and it is used when present;
GenImage does not (its ``val/`` is the test set), so the default is a seeded held-out fraction of the training
generator's ``train/`` split (``val_fraction``, 5 %), disjoint from the training part. Membership is decided per
image by a hash of (seed, path), so it does not change when other images are added or removed.

Generator names in the listings are the paper's canonical test-set names (``SD1.4``, ``ProGAN``, ...; see
``paper_tables.canonical_test_set``), so evaluation tables need no renaming.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ..images.layouts import LayoutResult, balanced_per_class, list_samples
from .tables import DIFFUSION_TEST_SETS, FOLDER_NAMES, GP_TEST_SETS, canonical_test_set, column_order

__all__ = [
    "DATASET_ROOTS",
    "PRESETS",
    "DataSet",
    "Holdout",
    "Preset",
    "PresetError",
    "ResolvedPreset",
    "holdout_mask",
    "resolve_preset",
]

# The roots a user can give (command line: --genimage, --cnndetection, --cnndetection-train, --cnndetection-val).
DATASET_ROOTS: dict[str, str] = {
    "genimage": "GenImage: the folder holding one folder per generator (stable_diffusion_v_1_4/, ADM/, ...)",
    "cnndetection": "CNNDetection test set (CNN_synth_testset: progan/, cyclegan/, ...), or a folder holding "
    "train/, val/ and test/",
    "cnndetection_train": "CNNDetection's ProGAN training set (progan_train: airplane/, bicycle/, ...)",
    "cnndetection_val": "CNNDetection's ProGAN validation set (progan_val)",
}

DEFAULT_VAL_FRACTION = 0.05


class PresetError(ValueError):
    """A preset cannot be resolved against the given roots; the message lists every missing folder."""


@dataclass(frozen=True)
class Preset:
    """One of the paper's protocols: the training generator and the test sets, by canonical name."""

    name: str
    setting: str  # paper_tables setting whose tables the results are printed beside
    description: str
    train_set: str  # canonical name of the training generator
    test_sets: tuple[str, ...]

    @property
    def train_dataset(self) -> str:
        return _dataset_of(self.train_set)


PRESETS: dict[str, Preset] = {
    "sd14": Preset(
        name="sd14",
        setting="sd14",
        description="train on GenImage SD v1.4 (train/ split), test on the paper's 15 sets (Tables 1, 2 and 5)",
        train_set="SD1.4",
        test_sets=column_order("sd14"),
    ),
    "progan": Preset(
        name="progan",
        setting="progan",
        description="train on CNNDetection ProGAN (progan_train), test on the paper's 15 sets (Tables 3 and 4)",
        train_set="ProGAN",
        test_sets=column_order("progan"),
    ),
}


def _dataset_of(test_set: str) -> str:
    if test_set in DIFFUSION_TEST_SETS:
        return "genimage"
    if test_set in GP_TEST_SETS:
        return "cnndetection"
    raise ValueError(f"{test_set!r} is not one of the paper's test sets")


@dataclass(frozen=True)
class Holdout:
    """Part of a split carved off by :func:`holdout_mask`: ``part="val"`` is the held-out fraction."""

    fraction: float
    seed: int
    part: Literal["train", "val"]


@dataclass(frozen=True)
class DataSet:
    """One set of a resolved preset: how to list its images (``list_samples(root, layout, split=, generator=)``),
    optionally restricted to one part of a held-out split."""

    role: Literal["train", "val", "test"]
    name: str  # canonical test-set name; also the generator name given to the listing
    dataset: str  # "genimage" or "cnndetection"
    layout: str
    root: Path
    split: str | None = None
    holdout: Holdout | None = None

    def cache_name(self, *, max_per_class: int | None = None, seed: int = 0) -> str:
        """A folder name that says which images the set holds (dataset, split, name, held-out part, cap)."""
        slug = re.sub(r"[^A-Za-z0-9.]+", "", self.name)
        # a set without a split is named by its role (progan's train, val and test sets are all "ProGAN")
        parts = [self.dataset, self.split or ("all" if self.role == "test" else self.role), slug]
        if self.holdout is not None:
            parts.append(f"{self.holdout.part}{self.holdout.fraction:g}h{self.holdout.seed}")
        if max_per_class is not None:
            parts.append(f"max{max_per_class}s{seed}")
        return "-".join(parts)

    def list(self, *, max_per_class: int | None = None, seed: int = 0) -> LayoutResult:
        """The set's images (generator = ``name``), at most ``max_per_class`` per class, seeded. Files the
        listing did not use are in ``ignored``; for the validation part of a held-out split they are left to the
        training part, so each is reported once."""
        if self.holdout is None:
            return list_samples(
                self.root, self.layout, split=self.split, generator=self.name, max_per_class=max_per_class, seed=seed
            )
        listing = list_samples(self.root, self.layout, split=self.split, generator=self.name)
        mask = holdout_mask(listing.samples, self.holdout.fraction, self.holdout.seed)
        part = listing.samples[mask if self.holdout.part == "val" else ~mask].reset_index(drop=True)
        if max_per_class is not None:
            part = balanced_per_class(part, max_per_class, seed)
        ignored = listing.ignored if self.holdout.part == "train" else listing.ignored.iloc[:0]
        return LayoutResult(root=listing.root, samples=part, ignored=ignored)

    def describe(self) -> str:
        where = f"{self.root}" + (f" (split {self.split})" if self.split else "")
        if self.holdout is not None:
            share = self.holdout.fraction if self.holdout.part == "val" else 1 - self.holdout.fraction
            where += f", the {self.holdout.part} part ({share:.0%}, hash seed {self.holdout.seed})"
        return f"{self.role:<5} {self.name:<10} {where}"


@dataclass(frozen=True)
class ResolvedPreset:
    """A preset bound to folders on disk."""

    preset: Preset
    train: DataSet
    val: DataSet
    test: tuple[DataSet, ...]
    missing: tuple[str, ...] = ()  # test sets not found (only with allow_missing), with the reason
    unused: tuple[str, ...] = ()  # folders found under the roots that the protocol does not use
    notes: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.preset.name

    @property
    def setting(self) -> str:
        return self.preset.setting

    def describe(self) -> str:
        lines = [f"preset {self.name}: {self.preset.description}"]
        lines += ["  " + s.describe() for s in (self.train, self.val, *self.test)]
        lines += [f"  missing: {m}" for m in self.missing]
        lines += [f"  not used: {u}" for u in self.unused]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def holdout_mask(samples: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the held-out rows: those whose hash of (seed, path) falls below ``fraction``.

    Decided per image, so membership is stable when images are added or removed. Each (generator, label) group
    with at least two images keeps at least one image on each side (tiny sets would otherwise lose a class).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction!r}")
    u = np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{seed}\0{p}".encode(), digest_size=8).digest(), "little") / 2.0**64
            for p in samples["path"]
        ],
        dtype=np.float64,
    )
    mask = u < fraction
    keys = samples["generator"].astype(str) + "\0" + samples["label"].astype(str)
    for idx in pd.Series(np.arange(len(samples))).groupby(keys.to_numpy()).indices.values():
        if len(idx) < 2:
            continue
        if not mask[idx].any():
            mask[idx[np.argmin(u[idx])]] = True
        if mask[idx].all():
            mask[idx[np.argmax(u[idx])]] = False
    return mask


# ---------------------------------------------------------------------------------------------------------
# Finding folders


def _dirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _find_ci(folder: Path, name: str) -> Path | None:
    hits = [d for d in _dirs(folder) if d.lower() == name.lower()]
    return folder / hits[0] if hits else None


def _spellings(test_set: str) -> list[str]:
    return list(dict.fromkeys([test_set] + [k for k, v in FOLDER_NAMES.items() if v == test_set]))


class _Problems:
    """Everything wrong with the folders, each message with what it prevents: test-set names, or "train"/"val"."""

    def __init__(self) -> None:
        self.items: list[tuple[frozenset[str], str]] = []

    def add(self, what: str | list[str] | tuple[str, ...], message: str) -> None:
        self.items.append((frozenset([what] if isinstance(what, str) else what), message))


def _map_folders(root: Path, wanted: tuple[str, ...], problems: _Problems, dataset: str) -> tuple[dict, list[str]]:
    """canonical name -> folder under ``root`` (top level, or one level down for GenImage's release folders),
    and the top-level folders that map to none of ``wanted``."""
    found: dict[str, list[Path]] = {}
    unused = []
    for d in _dirs(root):
        name = canonical_test_set(d)
        if name is None and dataset == "genimage":  # e.g. GenImage/sd14/imagenet_ai_0419_sdv4/
            inner = {canonical_test_set(i) for i in _dirs(root / d)} - {None}
            name = inner.pop() if len(inner) == 1 else None
        if name in wanted:
            found.setdefault(name, []).append(root / d)
        else:
            unused.append(str(root / d))
    mapping = {}
    for name, folders in found.items():
        if len(folders) > 1:
            problems.add(
                name, f"{dataset} {name}: several folders under {root} stand for it: {[f.name for f in folders]}"
            )
        else:
            mapping[name] = folders[0]
    return mapping, unused


def _genimage_split_dir(folder: Path, split: str) -> Path | None:
    """``folder/<split>`` or ``folder/<release folder>/<split>`` when it holds ai/ and nature/."""
    candidates = [folder] + [folder / d for d in _dirs(folder)]
    for c in candidates:
        s = _find_ci(c, split)
        if s is not None and _find_ci(s, "ai") is not None and _find_ci(s, "nature") is not None:
            return s
    return None


def _is_cnn_leaf(folder: Path) -> bool:
    return _find_ci(folder, "0_real") is not None and _find_ci(folder, "1_fake") is not None


def _is_cnn_set(folder: Path) -> bool:
    """0_real/ and 1_fake/ directly, or class folders holding them."""
    return _is_cnn_leaf(folder) or any(_is_cnn_leaf(folder / d) for d in _dirs(folder))


def _root(roots: Mapping[str, str | os.PathLike[str] | None], key: str) -> Path | None:
    value = roots.get(key)
    return None if value in (None, "") else Path(os.path.expanduser(os.fspath(value)))


def _check_root(path: Path | None, key: str, problems: _Problems, needed: dict[str, str]) -> Path | None:
    """``path`` when it is a folder; else one problem that blocks everything in ``needed`` (what -> label)."""
    flag = "--" + key.replace("_", "-")
    if path is not None and path.is_dir():
        return path
    what = ", ".join(needed.values())
    if path is None:
        problems.add(list(needed), f"{flag} not given: needed for {what}")
    else:
        problems.add(list(needed), f"{flag} {path}: folder not found (needed for {what})")
    return None


def resolve_preset(
    name: str,
    roots: Mapping[str, str | os.PathLike[str] | None],
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    val_seed: int = 0,
    allow_missing: bool = False,
) -> ResolvedPreset:
    """Bind preset ``name`` to folders under ``roots`` (keys of ``DATASET_ROOTS``; None = not given).

    Checks that the training, validation and every test folder exist with the expected sub-folders, and raises
    one :class:`PresetError` that lists everything missing. With ``allow_missing`` missing *test* sets are left
    out instead (and listed in ``missing``); the training set is always required. Folders under the roots that
    the protocol does not use are listed in ``unused``.
    """
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    unknown = sorted(set(roots) - set(DATASET_ROOTS))
    if unknown:
        raise PresetError(f"unknown dataset root(s) {unknown}; known: {sorted(DATASET_ROOTS)}")
    if not 0.0 < val_fraction < 1.0:
        raise PresetError(f"the held-out validation fraction must be in (0, 1), got {val_fraction!r}")
    preset = PRESETS[name]
    problems = _Problems()
    notes: list[str] = []
    unused: list[str] = []
    test: dict[str, DataSet] = {}
    train = val = None
    holdout = {part: Holdout(val_fraction, val_seed, part) for part in ("train", "val")}
    holdout_note = (
        f"validation: a held-out {val_fraction:.0%} of the {preset.train_set} training images (chosen by a hash of "
        f"seed {val_seed} and the path), disjoint from training"
    )

    # GenImage: one folder per generator; a test set is its val/ split, the training set SD1.4's train/ split.
    needed = {t: f"{t} (test)" for t in preset.test_sets if t in DIFFUSION_TEST_SETS}
    if preset.train_dataset == "genimage":
        needed = {"train": f"{preset.train_set} (training)", **needed}
    gi = _check_root(_root(roots, "genimage"), "genimage", problems, needed)
    if gi is not None:
        mapping, extra = _map_folders(gi, DIFFUSION_TEST_SETS, problems, "GenImage")
        unused += extra
        for t in DIFFUSION_TEST_SETS:
            roles = (["train"] if t == preset.train_set and "train" in needed else []) + (
                ["test"] if t in needed else []
            )
            if not roles:
                if t in mapping:
                    unused.append(str(mapping[t]))
                continue
            if t not in mapping:
                keys = ["train" if r == "train" else t for r in roles]
                problems.add(keys, f"GenImage {t}: no folder under {gi} (looked for {_spellings(t)}, any case)")
                continue
            for role in roles:
                split = "train" if role == "train" else "val"
                if _genimage_split_dir(mapping[t], split) is None:
                    problems.add(
                        "train" if role == "train" else t,
                        f"GenImage {t}: {mapping[t]} has no {split}/ folder holding ai/ and nature/ (directly or one "
                        "release folder down)",
                    )
                elif role == "test":
                    test[t] = DataSet("test", t, "genimage", "genimage", mapping[t], "val")
                else:
                    train = DataSet("train", t, "genimage", "genimage", mapping[t], "train", holdout["train"])
                    val = DataSet("val", t, "genimage", "genimage", mapping[t], "train", holdout["val"])
                    notes.append(holdout_note + "; GenImage's val/ split is the test set")

    # CNNDetection: the test sets under ROOT (or ROOT/test); the ProGAN training and validation sets.
    needed = {t: f"{t} (test)" for t in preset.test_sets if t in GP_TEST_SETS}
    cr = _root(roots, "cnndetection")
    if needed:
        cr = _check_root(cr, "cnndetection", problems, needed)
    elif cr is not None and not cr.is_dir():
        cr = None
    split_root = False
    if cr is not None:
        test_dir = _find_ci(cr, "test")
        split_root = test_dir is not None and not _is_cnn_leaf(test_dir)
        test_root = test_dir if split_root else cr
        mapping, extra = _map_folders(test_root, GP_TEST_SETS, problems, "CNNDetection")
        unused += [u for u in extra if not (split_root and Path(u).name.lower() in ("train", "val", "test"))]
        for t in needed:
            if t not in mapping:
                problems.add(t, f"CNNDetection {t}: no folder under {test_root} (looked for {_spellings(t)}, any case)")
            elif not _is_cnn_set(mapping[t]):
                problems.add(
                    t,
                    f"CNNDetection {t}: {mapping[t]} holds neither 0_real/ and 1_fake/ nor class folders holding them",
                )
            else:
                test[t] = DataSet("test", t, "cnndetection", "cnndetection", mapping[t])

    given_train, given_val = _root(roots, "cnndetection_train"), _root(roots, "cnndetection_val")
    if preset.train_dataset == "cnndetection":
        t = preset.train_set
        tr, va = given_train, given_val
        if cr is not None:  # ROOT/train and ROOT/val next to ROOT/test, or ROOT/progan_train and ROOT/progan_val
            tr = tr or (_find_ci(cr, "train") if split_root else None) or _find_ci(cr, "progan_train")
            va = va or (_find_ci(cr, "val") if split_root else None) or _find_ci(cr, "progan_val")
        tr = _progan_folder(tr, "train", "--cnndetection-train", problems)
        if tr is None and given_train is None and not any("train" in w for w, _ in problems.items):
            problems.add(
                "train",
                f"CNNDetection {t} training set not found: give --cnndetection-train (the progan_train folder), or "
                "--cnndetection ROOT with ROOT/train/ next to ROOT/test/, or ROOT/progan_train/",
            )
        va = _progan_folder(va, "val", "--cnndetection-val", problems)
        if tr is not None and va is not None:
            train = DataSet("train", t, "cnndetection", "cnndetection", tr)
            val = DataSet("val", t, "cnndetection", "cnndetection", va)
            notes.append(f"validation: CNNDetection's {t} validation set {va}")
        elif tr is not None and not any("val" in w for w, _ in problems.items):
            train = DataSet("train", t, "cnndetection", "cnndetection", tr, None, holdout["train"])
            val = DataSet("val", t, "cnndetection", "cnndetection", tr, None, holdout["val"])
            notes.append(holdout_note + " (no ProGAN validation set found: --cnndetection-val)")
    elif given_train is not None or given_val is not None:
        notes.append(
            f"--cnndetection-train/--cnndetection-val are not used by preset {name} (it trains on {preset.train_set})"
        )

    test_only = [(w, m) for w, m in problems.items if w <= set(preset.test_sets)]
    fatal = [(w, m) for w, m in problems.items if not (allow_missing and w <= set(preset.test_sets))]
    if allow_missing and not fatal and not test:
        fatal = test_only  # nothing left to test on
    if fatal:
        listing = "\n".join(f"  - {m}" for _, m in fatal)
        some_tests = not allow_missing and any(w <= set(preset.test_sets) for w, _ in fatal)
        more = "\n(--allow-missing runs on the test sets that are present)" if some_tests else ""
        raise PresetError(f"preset {name}: {len(fatal)} problem(s) with the dataset folders:\n{listing}{more}")
    assert train is not None and val is not None
    return ResolvedPreset(
        preset=preset,
        train=train,
        val=val,
        test=tuple(test[t] for t in preset.test_sets if t in test),
        missing=tuple(m for _, m in test_only),
        unused=tuple(sorted(set(unused))),
        notes=tuple(notes),
    )


def _progan_folder(folder: Path | None, role: str, flag: str, problems: _Problems) -> Path | None:
    """``folder`` (or its progan/ sub-folder) when it holds class folders with 0_real/ and 1_fake/."""
    if folder is None:
        return None
    if not folder.is_dir():
        problems.add(role, f"{flag} {folder}: folder not found")
        return None
    inner = _find_ci(folder, "progan")  # train/progan/<class>/... as well as train/<class>/...
    folder = inner if inner is not None and _is_cnn_set(inner) else folder
    if not _is_cnn_set(folder):
        problems.add(role, f"ProGAN {role} set {folder}: no class folders holding 0_real/ and 1_fake/")
        return None
    return folder
