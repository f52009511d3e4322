"""Image data for networks trained on pixels: listed data sets, the training and test transforms, deterministic
batches (for resume and DDP), and data loading in worker processes that reports every unusable image.

Every random choice (crop position, flip, blur, JPEG) comes from ``numpy.random.default_rng([seed, epoch, index])``,
so an image's augmentation depends only on (seed, epoch, index): not on the worker that decoded it, the number of
processes, or whether the run was interrupted and resumed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..images.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, load_rgb
from ..images.layouts import IMAGE_EXTENSIONS, LABEL_FOLDERS, LayoutError, LayoutResult, list_samples
from ..images.transforms import Augmentation, Preprocessing, normalise_lut

__all__ = [
    "Batch",
    "ImageSet",
    "TrainTransform",
    "batch_order",
    "image_set_from_listing",
    "real_image_set",
    "iterate_batches",
    "open_image_set",
]


@dataclass
class ImageSet:
    """A listed image data set: absolute paths, labels (0 real, 1 fake), generators; how it was listed."""

    root: Path
    samples: pd.DataFrame  # path (absolute), label, generator
    description: dict[str, Any]  # root, layout, split, generator, n, n_fake: recorded in run folders
    ignored: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return self.samples["label"].to_numpy(dtype=np.int64)

    @property
    def paths(self) -> np.ndarray:
        return self.samples["path"].to_numpy(dtype=object)

    @property
    def generators(self) -> np.ndarray:
        return self.samples["generator"].astype(str).to_numpy(dtype=object)


def open_image_set(
    root: str | os.PathLike[str],
    *,
    layout: str = "folders",
    split: str | None = None,
    generator: str | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
) -> ImageSet:
    """List the images of a data set with one of the extraction layouts (docs/guides/layouts.md)."""
    res = list_samples(root, layout, split=split, generator=generator, max_per_class=max_per_class, seed=seed)
    desc = {"layout": layout, "split": split, "generator": generator, "max_per_class": max_per_class}
    out = image_set_from_listing(res, desc)
    out.root = Path(root)  # a manifest's listing root is its folder; errors and records name the file given
    out.description["root"] = str(Path(root).resolve())
    return out


def real_image_set(root: str | os.PathLike[str]) -> ImageSet:
    """Every image file under ``root`` (or under its ``real/``, ``0_real/`` or ``nature/`` folder when it has one and
    no fakes beside it), labelled real: a set of held-out real photos for a false-positive-rate threshold."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: folder not found")
    folder = next((root / r for r, _f in LABEL_FOLDERS if (root / r).is_dir()), root)
    paths = sorted(str(p.resolve()) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise LayoutError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    samples = pd.DataFrame({"path": paths, "label": np.zeros(len(paths), dtype=np.int64), "generator": root.name})
    desc = {"root": str(root.resolve()), "layout": "real images", "n": len(paths), "n_fake": 0}
    return ImageSet(root=root, samples=samples, description=desc)


def image_set_from_listing(listing: LayoutResult, description: dict[str, Any] | None = None) -> ImageSet:
    """An :class:`ImageSet` of a layout's listing (paths made absolute); ``description`` is recorded in runs."""
    root = Path(listing.root)
    base = root if root.is_dir() else root.parent
    samples = listing.samples[["path", "label", "generator"]].copy()
    samples["path"] = [p if os.path.isabs(p) else str((base / p).resolve()) for p in samples["path"]]
    samples = samples.reset_index(drop=True)
    desc = {
        "root": str(root.resolve()),
        **(description or {}),
        "n": len(samples),
        "n_fake": int(samples["label"].sum()),
    }
    return ImageSet(root=root, samples=samples, description=desc, ignored=listing.ignored)


# ----------------------------------------------------------------------------------------------- transforms


def _pad_to(rgb: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (black, centred) an image smaller than ``size`` on either side, as torchvision's pad_if_needed."""
    h, w = rgb.shape[:2]
    if h >= size and w >= size:
        return rgb
    H, W = max(h, size), max(w, size)
    out = np.zeros((H, W, 3), dtype=np.uint8)
    y, x = (H - h) // 2, (W - w) // 2
    out[y : y + h, x : x + w] = rgb
    return out


def _resize(rgb: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Bilinear resize: the shorter side to ``size`` (aspect kept), or to ``size`` x ``size`` ("square")."""
    h, w = rgb.shape[:2]
    if mode == "square":
        new = (size, size)
    else:
        s = size / min(h, w)
        new = (max(size, round(w * s)), max(size, round(h * s)))
    if new == (w, h):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(new, Image.BILINEAR))


@dataclass(frozen=True)
class TrainTransform:
    """The training transform of a recipe, in CNNDetection's order: resize (if the recipe does), blur / JPEG
    (:class:`~causalclip.images.transforms.Augmentation`), random (or centre) crop, zero-padded when the image is
    smaller, horizontal flip, normalisation. (H, W, 3) uint8 -> (3, crop, crop) float32."""

    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool = True
    resize: int | None = None
    resize_mode: str = "shorter_side"  # or "square"
    crop_mode: str = "random"  # or "center"
    augmentation: Augmentation | None = None

    def __call__(self, rgb: np.ndarray, *, seed: int, epoch: int, index: int) -> np.ndarray:
        rng = np.random.default_rng([seed, epoch, index])
        u_crop_y, u_crop_x, u_flip = rng.random(3)
        aug_seed = int(rng.integers(2**62))  # the blur/JPEG draws: Augmentation's own (seed, index) stream
        if self.resize:
            rgb = _resize(rgb, self.resize, self.resize_mode)
        if self.augmentation is not None:
            rgb = self.augmentation.apply(rgb, seed=aug_seed, index=index)
        rgb = _pad_to(rgb, self.crop)
        h, w = rgb.shape[:2]
        if self.crop_mode == "center":  # torchvision CenterCrop's offsets
            y, x = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
        else:
            y = min(h - self.crop, int(u_crop_y * (h - self.crop + 1)))
            x = min(w - self.crop, int(u_crop_x * (w - self.crop + 1)))
        rgb = rgb[y : y + self.crop, x : x + self.crop]
        if self.flip and u_flip < 0.5:
            rgb = rgb[:, ::-1]
        return _normalise(rgb, self.mean, self.std)


def _normalise(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    lut = normalise_lut(tuple(mean), tuple(std))
    out = np.empty((3, *rgb.shape[:2]), dtype=np.float32)
    for c in range(3):
        np.take(lut[c], rgb[..., c], out=out[c])
    return out


# ----------------------------------------------------------------------------------------------- batches


def batch_order(n: int, *, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[np.ndarray]:
    """The global batches of an epoch: a permutation drawn from (seed, epoch) cut into ``batch_size`` pieces.
    A last piece of fewer than 2 images is dropped (BatchNorm needs two samples); in order when not shuffling."""
    perm = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    out = [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in out if len(b) >= 2 or not shuffle]


@dataclass
class Batch:
    x: torch.Tensor  # (b, 3, S, S) float32, normalised
    y: torch.Tensor  # (b,) float32
    index: np.ndarray  # (b,) positions in the image set
    errors: list[tuple[int, str]]  # (position, reason) of images of this batch that could not be used


class _Decode(torch.utils.data.Dataset):
    """Item = a list of positions (one rank's share of a batch) -> a Batch; decoded in a worker process."""

    def __init__(self, paths: np.ndarray, labels: np.ndarray, transform, *, seed: int, epoch: int, max_pixels: int):
        self.paths, self.labels, self.transform = paths, labels, transform
        self.seed, self.epoch, self.max_pixels = seed, epoch, max_pixels

    def __len__(self) -> int:  # unused: items are batches of positions chosen by the caller
        return 0

    def __getitem__(self, positions: np.ndarray) -> Batch:
        xs, ys, ok, errors = [], [], [], []
        for i in positions:
            try:
                rgb = load_rgb(self.paths[i], max_pixels=self.max_pixels)
                if isinstance(self.transform, Preprocessing):
                    x = self.transform(rgb)
                else:
                    x = self.transform(rgb, seed=self.seed, epoch=self.epoch, index=int(i))
            except ImageDecodeError as exc:
                errors.append((int(i), exc.reason))
                continue
            xs.append(x)
            ys.append(self.labels[i])
            ok.append(int(i))
        x = torch.from_numpy(np.stack(xs)) if xs else torch.empty(0)
        return Batch(x, torch.tensor(ys, dtype=torch.float32), np.asarray(ok, dtype=np.int64), errors)


def _identity(batch: list[Batch]) -> Batch:
    return batch[0]


def iterate_batches(
    images: ImageSet,
    batches: Sequence[np.ndarray],
    transform: TrainTransform | Preprocessing,
    *,
    seed: int = 0,
    epoch: int = 0,
    workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Decode and transform ``batches`` (lists of positions) in order, in ``workers`` processes (0: in this one).

    An image that cannot be decoded is left out of its batch and reported in ``Batch.errors``; nothing raises.
    """
    ds = _Decode(images.paths, images.labels, transform, seed=seed, epoch=epoch, max_pixels=max_pixels)
    if workers <= 0:
        for b in batches:
            yield ds[b]
        return
    loader = torch.utils.data.DataLoader(
        ds,
        sampler=list(batches),  # each "index" is a whole batch of positions
        batch_size=1,
        collate_fn=_identity,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2,
        multiprocessing_context="spawn" if os.name != "posix" else None,
    )
    yield from loader
