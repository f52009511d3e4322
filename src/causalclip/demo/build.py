"""Build (or reuse) the offline benchmark: real tiles split by scene, and each generator family's fakes.

The build is cached in two levels, each keyed by a hash of everything that determines its files, so changing
one family's budget rebuilds that family only::

    CACHE/real-<key>/                    real tiles: photos (by content hash), tiling, split, encoding, seed
      build.json                         the parameters behind <key>, the photos and their SHA-256
      tiles.csv                          tile, photo, scene, split, y, x, grey, path
      real/<split>/<tile>.jpg
      fakes-<family>-<key>/              one generator family: its config and seed (and the real key)
        family.json                      parameters, training time, description
        model.safetensors                the trained generator (weights only)
        discriminator.safetensors        GAN families: the discriminator trained against it (LGrad's transform)
        fakes.csv                        path, split, index, source (the real tile it re-synthesises or pairs with), grey
        fake/<split>/<i>.jpg

Each folder is built under a temporary name and renamed when complete, so an interrupted build leaves nothing
that looks finished. Real and fake tiles are written the same way: RGB JPEG at one quality, same size. A fake
paired with a greyscale real tile (the i-th fake of a split pairs with the i-th real tile) is converted to grey
the same way, so colour is no shortcut either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..core.io import atomic_write, write_json
from .generators import FAMILIES, FamilyConfig
from .generators import describe as describe_family
from .photos import SPLITS, DemoError, Photo, builtin_photos, folder_photos, load_photo, photo_digest, split_scenes
from .photos import tile_grid as _tile_grid

__all__ = ["BUILD_SIZES", "DISCRIMINATOR_FILE", "Benchmark", "BuildConfig", "build_benchmark", "default_cache"]

log = logging.getLogger("causalclip")

# Bump when the way tiles or fakes are made changes, so old caches are not reused.
# 2: the GAN families keep their trained discriminator (DISCRIMINATOR_FILE).
BUILD_VERSION = 2
DISCRIMINATOR_FILE = "discriminator.safetensors"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """Everything that determines the benchmark's files (``threads`` only how fast they are made)."""

    tile: int = 64
    max_tiles_per_photo: int = 96
    min_std: float = 4.0  # grey levels; flatter tiles (sky, black borders) are left out
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train, val, test, by tiles
    jpeg_quality: int = 95
    builtin: bool = True  # the photos shipped with scikit-image and scikit-learn
    scenes: tuple[str, ...] | None = None  # only these built-in scenes (None: all)
    photo_dirs: tuple[str, ...] = ()  # folders of the user's own photos
    families: tuple[str, ...] = tuple(FAMILIES)
    family_configs: tuple[tuple[str, FamilyConfig], ...] = ()  # per-family budgets
    seed: int = 0
    threads: int = 1  # torch threads while building; 1 is fastest on a busy 2-core machine

    def family_config(self, name: str) -> FamilyConfig:
        return dict(self.family_configs).get(name, FamilyConfig())

    def validate(self) -> None:
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise DemoError(f"unknown generator family(ies) {unknown}; available: {sorted(FAMILIES)}")
        if len(self.families) < 2:
            raise DemoError("the benchmark needs at least two generator families (train on one, test on others)")
        if self.tile < 16 or self.tile & (self.tile - 1):
            raise DemoError(f"tile must be a power of two >= 16, got {self.tile}")
        if not self.builtin and not self.photo_dirs:
            raise DemoError("no photos: keep the built-in photos or pass a folder of your own")
        if not 1 <= self.jpeg_quality <= 100:
            raise DemoError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")


_FULL_BUDGETS = {
    "tconv-gan": FamilyConfig(steps=500, width=16),
    "resize-gan": FamilyConfig(steps=500, width=16),
    "vae": FamilyConfig(steps=300, width=16),
    "diffusion": FamilyConfig(steps=500, width=16, sample_steps=10),
}
_TINY_BUDGETS = {name: FamilyConfig(steps=6, batch_size=8, width=4, sample_steps=2) for name in FAMILIES}

# "full": the benchmark the docs report (3.8 to 7.6 minutes to build on 2-core machines, docs/reports/demo-results.md);
# "tiny": the same pipeline in seconds, for tests.
BUILD_SIZES: dict[str, BuildConfig] = {
    "full": BuildConfig(family_configs=tuple(_FULL_BUDGETS.items())),
    "tiny": BuildConfig(
        tile=32,
        max_tiles_per_photo=4,
        scenes=("astronaut", "chelsea", "coffee", "china", "flower", "camera", "brick", "coins"),
        family_configs=tuple(_TINY_BUDGETS.items()),
    ),
}


def default_cache() -> Path:
    """$CAUSALCLIP_CACHE, else $XDG_CACHE_HOME/causalclip/demo, else ~/.cache/causalclip/demo."""
    if os.environ.get("CAUSALCLIP_CACHE"):
        return Path(os.environ["CAUSALCLIP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "causalclip" / "demo"


@dataclass
class Benchmark:
    """A built benchmark: where its tiles are and which generator made each fake."""

    root: Path  # CACHE/real-<key>
    tiles: pd.DataFrame  # the real tiles (tiles.csv)
    fakes: dict[str, pd.DataFrame]  # family -> fakes.csv, paths relative to root
    family_dirs: dict[str, Path]
    config: BuildConfig
    seconds: dict[str, float] = field(default_factory=dict)  # what this call spent building, by part

    def discriminator(self, family: str) -> Path:
        """The trained discriminator of GAN family ``family`` (DCGAN layout, safetensors); DemoError if it has none."""
        path = self.family_dirs[family] / DISCRIMINATOR_FILE if family in self.family_dirs else None
        if path is None or not path.is_file():
            gans = sorted(f for f in self.family_dirs if (self.family_dirs[f] / DISCRIMINATOR_FILE).is_file())
            raise DemoError(f"{family}: no trained discriminator in this benchmark (GAN families built here: {gans})")
        return path

    def samples(self, split: str) -> pd.DataFrame:
        """path (absolute), label, generator for one split: reals as generator "real", then every family's fakes."""
        real = self.tiles[self.tiles["split"] == split]
        parts = [pd.DataFrame({"path": [str(self.root / p) for p in real["path"]], "label": 0, "generator": "real"})]
        for fam, df in self.fakes.items():
            rows = df[df["split"] == split]
            parts.append(
                pd.DataFrame({"path": [str(self.root / p) for p in rows["path"]], "label": 1, "generator": fam})
            )
        return pd.concat(parts, ignore_index=True)


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _seed(*parts: Any) -> int:
    """A 63-bit seed derived from the build seed and names (stable across runs and Python versions)."""
    words = [int(p) if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]) >> 1


def encode_jpeg(rgb: np.ndarray, path: Path, quality: int) -> None:
    """The one encoding every tile gets, real or fake: RGB JPEG (Pillow, 4:2:0), written atomically."""
    atomic_write(path, lambda p: Image.fromarray(rgb, "RGB").save(p, format="JPEG", quality=quality))


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """Pillow's "L" conversion (BT.601 luma), replicated to three channels."""
    luma = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    return np.repeat(luma[..., None], 3, axis=2)


@contextmanager
def _torch_state(threads: int):
    """Deterministic kernels and a fixed thread count while building; both restored afterwards."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def _photos(cfg: BuildConfig) -> list[Photo]:
    photos = builtin_photos(cfg.scenes) if cfg.builtin else []
    for d in cfg.photo_dirs:
        photos += folder_photos(d)
    names = [p.name for p in photos]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DemoError(f"photo names {dup[:5]} appear twice (two folders with the same layout?)")
    return photos


def _real_key(cfg: BuildConfig, photos: list[Photo]) -> tuple[str, dict[str, Any]]:
    params = {
        "version": BUILD_VERSION,
        "tile": cfg.tile,
        "max_tiles_per_photo": cfg.max_tiles_per_photo,
        "min_std": cfg.min_std,
        "fractions": list(cfg.fractions),
        "jpeg_quality": cfg.jpeg_quality,
        "seed": cfg.seed,
        "photos": [{"name": p.name, "scene": p.scene, "sha256": photo_digest(p), "source": p.source} for p in photos],
    }
    # Where a photo comes from (package version, folder) is recorded but not keyed: its bytes are.
    keyed = {**params, "photos": [{k: v for k, v in p.items() if k != "source"} for p in params["photos"]]}
    return _key(keyed), params


def _build_real(folder: Path, cfg: BuildConfig, photos: list[Photo], params: dict[str, Any]) -> pd.DataFrame:
    """Cut, split and encode the real tiles into ``folder`` (a fresh temporary folder)."""
    crops: dict[str, tuple[np.ndarray, list[tuple[int, int]], bool]] = {}
    for photo in photos:
        rgb = load_photo(photo)
        rng = np.random.default_rng(_seed(cfg.seed, "tiles", photo.name))
        corners = _tile_grid(rgb, size=cfg.tile, max_tiles=cfg.max_tiles_per_photo, min_std=cfg.min_std, rng=rng)
        grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
        crops[photo.name] = (rgb, corners, grey)
        if not corners:
            log.warning("%s: smaller than %d px or flat everywhere; no tiles", photo.path, cfg.tile)
    per_scene = (
        pd.DataFrame(
            [(p.scene, len(crops[p.name][1]), crops[p.name][2]) for p in photos], columns=["scene", "n_tiles", "grey"]
        )
        .groupby("scene", sort=True)
        .agg(n_tiles=("n_tiles", "sum"), grey=("grey", "all"))
        .reset_index()
    )
    per_scene = per_scene[per_scene["n_tiles"] > 0]
    split_of = split_scenes(per_scene, fractions=cfg.fractions, seed=_seed(cfg.seed, "split") % 2**32)
    rows = []
    for photo in photos:
        rgb, corners, grey = crops[photo.name]
        split = split_of.get(photo.scene)
        stem = photo.name.replace("/", "_").replace(".", "_")
        for y, x in corners:
            tile = f"{stem}_y{y:04d}_x{x:04d}"
            path = f"real/{split}/{tile}.jpg"
            (folder / "real" / split).mkdir(parents=True, exist_ok=True)
            encode_jpeg(np.ascontiguousarray(rgb[y : y + cfg.tile, x : x + cfg.tile]), folder / path, cfg.jpeg_quality)
            rows.append((tile, photo.name, photo.scene, split, y, x, grey, path))
    tiles = pd.DataFrame(rows, columns=["tile", "photo", "scene", "split", "y", "x", "grey", "path"])
    tiles = tiles.sort_values(["split", "tile"], kind="stable", ignore_index=True)
    for split in SPLITS:
        if not (tiles["split"] == split).any():
            raise DemoError(f"the {split} split has no tiles; add photos")
    atomic_write(folder / "tiles.csv", lambda p: tiles.to_csv(p, index=False))
    write_json(folder / "build.json", params, sort_keys=True)
    return tiles


def _read_tiles(root: Path, paths: Sequence[str]) -> torch.Tensor:
    """(N, 3, s, s) float32 in [-1, 1] from the stored (decoded) JPEG tiles."""
    arr = np.stack([np.asarray(Image.open(root / p).convert("RGB")) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, s, s) in [-1, 1] -> (N, s, s, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _build_family(
    folder: Path, root: Path, name: str, fcfg: FamilyConfig, cfg: BuildConfig, tiles: pd.DataFrame, params: dict
) -> tuple[pd.DataFrame, float]:
    from safetensors.torch import save_file

    family = FAMILIES[name]
    train_tiles = tiles[tiles["split"] == "train"]
    real = _read_tiles(root, train_tiles["path"])
    t0 = time.perf_counter()
    trained = family.train(real, fcfg, _seed(cfg.seed, "train", name), lambda msg: log.info("  %s", msg))
    train_s = time.perf_counter() - t0
    model = trained.model
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p), metadata={"family": name}))
    if trained.discriminator is not None:
        disc = {k: v.detach().contiguous() for k, v in trained.discriminator.state_dict().items()}
        # One metadata key: safetensors writes several in no fixed order, and the build must be byte-identical.
        meta = {"dcgan_discriminator": json.dumps({"family": name, "resolution": cfg.tile, "width": fcfg.width})}
        atomic_write(folder / DISCRIMINATOR_FILE, lambda p: save_file(disc, str(p), metadata=meta))
    rows = []
    t1 = time.perf_counter()
    for split in SPLITS:
        reals = tiles[tiles["split"] == split].reset_index(drop=True)
        source = _read_tiles(root, reals["path"]) if family.resynthesises else None
        images = family.sample(
            model, len(reals), seed=_seed(cfg.seed, "sample", name, split), cfg=fcfg, size=cfg.tile, source=source
        )
        pixels = _to_uint8(images)
        (folder / "fake" / split).mkdir(parents=True, exist_ok=True)
        for i, (rgb, src, grey) in enumerate(zip(pixels, reals["tile"], reals["grey"], strict=True)):
            if grey:
                rgb = to_grey(rgb)
            path = f"fake/{split}/{name}-{i:05d}.jpg"
            encode_jpeg(rgb, folder / path, cfg.jpeg_quality)
            rows.append((path, split, i, src, bool(grey)))
    sample_s = time.perf_counter() - t1
    fakes = pd.DataFrame(rows, columns=["path", "split", "index", "source", "grey"])
    atomic_write(folder / "fakes.csv", lambda p: fakes.to_csv(p, index=False))
    write_json(
        folder / "family.json",
        {
            **params,
            **describe_family(name, fcfg),
            "discriminator": DISCRIMINATOR_FILE if trained.discriminator is not None else None,
            "train_seconds": train_s,
            "sample_seconds": sample_s,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.machine(),
        },
        sort_keys=True,
    )
    return fakes, train_s + sample_s


def _complete(folder: Path, build: Callable[[Path], Any]) -> Any:
    """Run ``build(tmp)`` into a fresh temporary folder, then rename it to ``folder``."""
    tmp = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        result = build(tmp)
        if folder.exists():  # built meanwhile by another process: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def build_benchmark(cfg: BuildConfig, cache: str | os.PathLike[str] | None = None) -> Benchmark:
    """Build the benchmark into ``cache`` (default :func:`default_cache`), reusing every part already built."""
    cfg.validate()
    cache = Path(cache) if cache is not None else default_cache()
    photos = _photos(cfg)
    key, params = _real_key(cfg, photos)
    root = cache / f"real-{key}"
    seconds: dict[str, float] = {}
    with _torch_state(cfg.threads):
        if not (root / "tiles.csv").is_file():
            log.info("building real tiles from %d photos into %s", len(photos), root)
            t0 = time.perf_counter()
            _complete(root, lambda tmp: _build_real(tmp, cfg, photos, params))
            seconds["real"] = time.perf_counter() - t0
        tiles = pd.read_csv(root / "tiles.csv", dtype={"split": str, "tile": str, "path": str})
        fakes, dirs = {}, {}
        for name in cfg.families:
            fcfg = cfg.family_config(name)
            fparams = {"real_key": key, "seed": cfg.seed, "version": BUILD_VERSION, **describe_family(name, fcfg)}
            folder = root / f"fakes-{name}-{_key(fparams)}"
            if not (folder / "fakes.csv").is_file():
                log.info("training the %s generator (%s) and making its fakes", name, FAMILIES[name].description)
                t0 = time.perf_counter()
                _complete(folder, lambda tmp, n=name, f=fcfg, p=fparams: _build_family(tmp, root, n, f, cfg, tiles, p))
                seconds[name] = time.perf_counter() - t0
            df = pd.read_csv(folder / "fakes.csv", dtype={"split": str, "path": str})
            df["path"] = [f"{folder.name}/{p}" for p in df["path"]]
            fakes[name], dirs[name] = df, folder
    return Benchmark(root=root, tiles=tiles, fakes=fakes, family_dirs=dirs, config=cfg, seconds=seconds)
