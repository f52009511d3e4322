"""Real photographs that need no download, cut into tiles and split by scene.

The built-in photos are the ones scikit-image and scikit-learn ship inside their wheels (read straight from the
installed package folders, never through ``skimage.data``'s downloader). Users can add folders of their own
photos. Tiles are split into train/val/test by *scene* (a photo, or a group of photos of one scene such as the
motorcycle stereo pair), so no scene is in two splits.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..images.decode import ImageDecodeError, load_rgb
from ..images.layouts import IMAGE_EXTENSIONS

__all__ = ["BUILTIN_PHOTOS", "DemoError", "Photo", "builtin_photos", "folder_photos", "split_scenes", "tile_grid"]

SPLITS = ("train", "val", "test")


class DemoError(ValueError):
    """The demo cannot run with what it was given (a missing package, too few photos, a bad folder)."""


@dataclass(frozen=True)
class Photo:
    name: str  # unique, stable: "skimage/astronaut", "user/holiday/beach.jpg"
    scene: str  # photos of one scene share it and always land in the same split
    path: Path
    source: str  # where it comes from, e.g. "scikit-image 0.26.0"


# (package, file inside the package's data folder, scene). Photographs only: the synthetic (color.png, logo,
# checkerboards, horse silhouette) and near-empty microscopy (cell.png) images are left out.
BUILTIN_PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("skimage", "astronaut.png", "astronaut"),
    ("skimage", "chelsea.png", "chelsea"),
    ("skimage", "coffee.png", "coffee"),
    ("skimage", "rocket.jpg", "rocket"),
    ("skimage", "motorcycle_left.png", "motorcycle"),
    ("skimage", "motorcycle_right.png", "motorcycle"),  # the stereo pair: one scene
    ("skimage", "hubble_deep_field.jpg", "hubble"),
    ("skimage", "ihc.png", "ihc"),
    ("skimage", "retina.jpg", "retina"),
    ("skimage", "camera.png", "camera"),
    ("skimage", "coins.png", "coins"),
    ("skimage", "clock_motion.png", "clock"),
    ("skimage", "moon.png", "moon"),
    ("skimage", "brick.png", "brick"),
    ("skimage", "grass.png", "grass"),
    ("skimage", "gravel.png", "gravel"),
    ("skimage", "text.png", "text"),
    ("skimage", "page.png", "page"),
    ("sklearn", "china.jpg", "china"),
    ("sklearn", "flower.jpg", "flower"),
)

_PACKAGE_DATA = {"skimage": ("scikit-image", "data"), "sklearn": ("scikit-learn", "datasets/images")}


def _package_folder(module: str) -> tuple[Path, str]:
    dist, sub = _PACKAGE_DATA[module]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DemoError(
            f"the demo's built-in photos come with {dist}, which is not installed: "
            f"pip install 'causalclip[demo]' (or bash scripts/install.sh)"
        )
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version(dist)
    except PackageNotFoundError:
        ver = "?"
    return Path(next(iter(spec.submodule_search_locations))) / sub, f"{dist} {ver}"


def builtin_photos(scenes: Sequence[str] | None = None) -> list[Photo]:
    """The photos shipped inside the scikit-image and scikit-learn wheels (``scenes``: only those)."""
    photos = []
    for module, file, scene in BUILTIN_PHOTOS:
        if scenes is not None and scene not in scenes:
            continue
        folder, source = _package_folder(module)
        path = folder / file
        if not path.is_file():
            raise DemoError(f"{path}: missing from the installed {source}; reinstall it")
        photos.append(Photo(name=f"{module}/{Path(file).stem}", scene=scene, path=path, source=source))
    if scenes is not None:
        unknown = sorted(set(scenes) - {p.scene for p in photos})
        if unknown:
            raise DemoError(
                f"unknown built-in scene(s) {unknown}; available: {sorted({s for *_, s in BUILTIN_PHOTOS})}"
            )
    return photos


def folder_photos(root: str | os.PathLike[str]) -> list[Photo]:
    """Every image file under ``root``. A file directly in ``root`` is its own scene; files in a sub-folder share
    that sub-folder's scene (put photos of one place or event in one sub-folder so they stay in one split)."""
    root = Path(root)
    if not root.is_dir():
        raise DemoError(f"{root}: photo folder not found")
    photos = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith(".") or Path(f).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            rel = (Path(dirpath) / f).relative_to(root)
            scene = rel.parts[0] if len(rel.parts) > 1 else rel.as_posix()
            photos.append(
                Photo(name=f"user/{rel.as_posix()}", scene=f"user/{scene}", path=root / rel, source=str(root))
            )
    if not photos:
        raise DemoError(f"{root}: no image files (expected files ending in {sorted(IMAGE_EXTENSIONS)})")
    return photos


def photo_digest(photo: Photo) -> str:
    """SHA-256 of the file's bytes: the build cache is keyed by the photos' content, not their paths."""
    return hashlib.sha256(photo.path.read_bytes()).hexdigest()


def load_photo(photo: Photo) -> np.ndarray:
    try:
        return load_rgb(photo.path)
    except ImageDecodeError as exc:
        raise DemoError(f"{photo.path}: cannot read photo: {exc.reason}") from exc


def tile_grid(
    rgb: np.ndarray, *, size: int, max_tiles: int, min_std: float, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Top-left corners of non-overlapping ``size`` tiles on a grid centred in the photo, flat tiles (luma std
    below ``min_std`` grey levels: sky, black borders) left out, at most ``max_tiles`` of them (seeded choice),
    in raster order."""
    h, w = rgb.shape[:2]
    ny, nx = h // size, w // size
    oy, ox = (h - ny * size) // 2, (w - nx * size) // 2
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    corners = []
    for i in range(ny):
        for j in range(nx):
            y, x = oy + i * size, ox + j * size
            if luma[y : y + size, x : x + size].std() >= min_std:
                corners.append((y, x))
    if len(corners) > max_tiles:
        keep = np.sort(rng.choice(len(corners), size=max_tiles, replace=False))
        corners = [corners[k] for k in keep]
    return corners


def split_scenes(tiles_per_scene: pd.DataFrame, *, fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """scene -> split. ``tiles_per_scene``: columns scene, n_tiles, grey (bool).

    Colour and grey scenes are assigned separately, so each split gets both. Scenes are taken in a seeded random
    order and each goes to the split furthest below its share of tiles; every split gets at least one scene.
    """
    if len(tiles_per_scene) < 3:
        raise DemoError(
            f"the demo needs photos of at least 3 scenes (one per split), got {len(tiles_per_scene)} with usable tiles"
        )
    if any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise DemoError(f"split fractions must be positive and sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    ordered = tiles_per_scene.sort_values("scene", kind="stable").reset_index(drop=True)
    for _, stratum in ordered.groupby("grey", sort=True):
        total = int(stratum["n_tiles"].sum())
        taken = dict.fromkeys(SPLITS, 0)
        for k in rng.permutation(len(stratum)):
            scene, n = stratum["scene"].iloc[k], int(stratum["n_tiles"].iloc[k])
            split = max(SPLITS, key=lambda s: fractions[SPLITS.index(s)] * total - taken[s])
            assignment[scene] = split
            taken[split] += n
    # A split left without any scene takes the smallest scene of the split that has the most.
    sizes = dict(zip(ordered["scene"], ordered["n_tiles"].astype(int), strict=True))
    for split in SPLITS:
        if split not in assignment.values():
            donor = max(SPLITS, key=lambda s: sum(1 for v in assignment.values() if v == s))
            smallest = min((sc for sc, v in assignment.items() if v == donor), key=lambda sc: (sizes[sc], sc))
            assignment[smallest] = split
    return assignment
