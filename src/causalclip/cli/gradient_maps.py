"""``causalclip gradient-maps ROOT --transform FILE --out DIR``: LGrad's gradient maps of a data set, cached as PNGs.

Every image listed by ``--layout`` under ROOT becomes the 8-bit gradient map of the transformation model
(:func:`causalclip.networks.lgrad.gradient_map`, the authors' normalisation) written losslessly as
``DIR/<its path relative to ROOT, suffix .png>``: the same folder layout, so ``causalclip train --head lgrad
--train DIR ... --set lgrad.input=gradient`` reads it with the same ``--layout``. ``DIR/manifest.csv`` (path, label,
generator) lists every map for ``--layout manifest`` too, ``DIR/errors.csv`` every input that could not be used, and
``DIR/gradient_maps.json`` the transformation model (file, sha256, architecture: StyleGAN's or, ``--arch dcgan``, a
DCGAN discriminator such as a demo GAN family's) and the settings.

Resumable: each PNG is written atomically and an existing one is kept, so running the same command again after an
interruption finishes the rest. A folder made with another transformation model or other settings is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.io import atomic_write, read_json, write_json
from ..images.decode import ImageDecodeError, load_rgb
from ..images.layouts import list_samples
from ..networks.importer import read_lgrad_transform, sha256_file
from ..networks.lgrad import TRANSFORM_ARCHS, build_discriminator, discriminator_config, gradient_map

__all__ = ["write_gradient_maps"]

log = logging.getLogger("causalclip")

MANIFEST_NAME = "gradient_maps.json"


def _target(rel: str) -> str:
    """Where the map of the image at ``rel`` (relative to ROOT, or absolute for a manifest) goes, relative to DIR."""
    p = Path(rel)
    if p.is_absolute():  # outside ROOT: a stable name from the path, so two files called a.png stay apart
        digest = hashlib.sha1(str(p).encode("utf-8")).hexdigest()[:16]
        return f"external/{digest}-{p.stem}.png"
    return p.with_suffix(".png").as_posix()


def _pixels(path: str, rgb: np.ndarray, resolution: int, center_crop: int | None) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, R, R) float in [0, 1]: [centre crop,] then the authors' resize to R x R."""
    if center_crop:
        h, w = rgb.shape[:2]
        if h < center_crop or w < center_crop:
            raise ImageDecodeError(path, f"{w}x{h} is smaller than the centre crop {center_crop}")
        top, left = int(round((h - center_crop) / 2.0)), int(round((w - center_crop) / 2.0))
        rgb = rgb[top : top + center_crop, left : left + center_crop]
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    if tuple(x.shape[-2:]) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return x


def _save_png(path: Path, gmap: torch.Tensor) -> None:
    arr = gmap.permute(1, 2, 0).to(torch.uint8).cpu().numpy()  # (R, R, 3), values already whole numbers
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: Image.fromarray(arr, mode="RGB").save(p, format="PNG"))


def write_gradient_maps(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    transform: str | os.PathLike[str],
    layout: str = "folders",
    split: str | None = None,
    generator: str | None = None,
    resolution: int = 256,
    fmaps_base: int = 16 << 10,
    fmaps_max: int = 512,
    arch: str = "stylegan",
    width: int = 16,
    center_crop: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict[str, Any]:
    """Write the gradient map of every image of ``root`` under ``out`` (see the module docstring); returns the
    summary also written to ``out/gradient_maps.json``."""
    root, out, transform = Path(root), Path(out), Path(transform)
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if center_crop is not None and center_crop < 1:
        raise ValueError(f"center_crop: must be >= 1 or None, got {center_crop}")
    config = discriminator_config(arch, resolution=resolution, fmaps_base=fmaps_base, fmaps_max=fmaps_max, width=width)
    config.validate()
    model = build_discriminator(config)
    model.load_state_dict(read_lgrad_transform(transform, config), strict=True)
    model.to(torch.device(device)).eval()
    settings = {
        "transform": {"file": str(transform.resolve()), "sha256": sha256_file(transform)},
        # StyleGAN's record is unchanged from before the DCGAN transform existed, so older folders still resume.
        "discriminator": {"resolution": resolution, "fmaps_base": fmaps_base, "fmaps_max": fmaps_max}
        if arch == "stylegan"
        else {"arch": arch, "resolution": resolution, "width": width},
        "center_crop": center_crop,
        "normalisation": "per image: (g - min) / max(g - min) * 255, rounded to 8 bits (LGrad's gen_imggrad.py)",
    }
    listing = list_samples(root, layout, split=split, generator=generator)
    source = {"root": str(root.resolve()), "layout": layout, "split": split, "generator": generator}
    manifest_path = out / MANIFEST_NAME
    if manifest_path.exists():
        before = read_json(manifest_path)
        same = before.get("settings", {}).get("transform", {}).get("sha256") == settings["transform"]["sha256"]
        same = same and {k: v for k, v in before.get("settings", {}).items() if k != "transform"} == {
            k: v for k, v in settings.items() if k != "transform"
        }
        if not same or before.get("source") != source:
            raise ValueError(
                f"{manifest_path}: this folder holds gradient maps made with another transformation model, settings "
                "or source; choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)

    samples = listing.samples.reset_index(drop=True)
    errors: dict[str, str] = {str(r.path): str(r.reason) for r in listing.ignored.itertuples()}
    targets: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    todo: list[tuple[int, str]] = []
    for i, rel in enumerate(samples["path"].astype(str)):
        target = _target(rel)
        if target in targets:
            errors[rel] = f"its map {target} would overwrite that of {samples['path'].iloc[targets[target]]}"
            continue
        targets[target] = i
        if not (out / target).is_file():
            todo.append((i, target))
    base = root if root.is_dir() else root.parent
    written, failed = 0, set()
    for start in range(0, len(todo), batch_size):
        chunk, xs = [], []
        for i, target in todo[start : start + batch_size]:
            rel = str(samples["path"].iloc[i])
            try:
                rgb = load_rgb(rel if os.path.isabs(rel) else base / rel)
                xs.append(_pixels(rel, rgb, resolution, center_crop))
            except ImageDecodeError as exc:
                errors[rel] = exc.reason
                failed.add(i)
                continue
            chunk.append(target)
        if not xs:
            continue
        maps = gradient_map(model, torch.cat(xs).to(device))  # (b, 3, R, R) 8-bit values
        for target, gmap in zip(chunk, maps, strict=True):
            _save_png(out / target, gmap)
            written += 1
        log.info("gradient maps: %d of %d written", written, len(todo))
    for target, i in targets.items():
        if i not in failed and (out / target).is_file():
            rows.append(
                {"path": target, "label": int(samples["label"].iloc[i]), "generator": samples["generator"].iloc[i]}
            )
    frame = pd.DataFrame(rows, columns=["path", "label", "generator"])
    atomic_write(out / "manifest.csv", lambda p: frame.to_csv(p, index=False))
    err = pd.DataFrame(sorted(errors.items()), columns=["path", "reason"])
    atomic_write(out / "errors.csv", lambda p: err.to_csv(p, index=False))
    summary = {"source": source, "settings": settings, "n_maps": len(frame), "n_written_now": written,
               "n_errors": len(err)}  # fmt: skip
    write_json(manifest_path, summary)
    return summary


def _cmd(args: argparse.Namespace) -> int:
    summary = write_gradient_maps(
        args.root,
        args.out,
        transform=args.transform,
        layout=args.layout,
        split=args.split,
        generator=args.generator,
        resolution=args.resolution,
        fmaps_base=args.fmaps_base,
        fmaps_max=args.fmaps_max,
        arch=args.arch,
        width=args.width,
        center_crop=args.center_crop,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(
        f"{args.out}: {summary['n_maps']} gradient maps ({summary['n_written_now']} written now), "
        f"{summary['n_errors']} unusable inputs listed in errors.csv"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gradient-maps",
        help="cache LGrad's gradient maps of a data set as PNGs",
        description="Write the gradient map of every image (LGrad: the gradient of a frozen discriminator's score, "
        "the authors' StyleGAN or with --arch dcgan a DCGAN such as a demo GAN family's, with respect to the image "
        "resized to --resolution, normalised per image to 8 bits) as a PNG in the same folder layout under --out, "
        "with manifest.csv, errors.csv and gradient_maps.json. Resumable: run the same command again to finish. "
        "Train on the result with `causalclip train --head lgrad --train DIR ... --set lgrad.input=gradient --set "
        "lgrad.transform=FILE` (for a DCGAN also lgrad.transform_arch=dcgan and lgrad.resolution=N).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("root", metavar="ROOT", help="data set folder (or manifest file)")
    p.add_argument("--transform", required=True, metavar="FILE",
                   help="the transformation model: the authors' karras2019stylegan-bedrooms-256x256_discriminator.pth "
                   "(read with weights_only), a safetensors file of our StyleGAN discriminator, or (--arch dcgan) a demo GAN "
                   "family's discriminator.safetensors")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the gradient maps")
    p.add_argument("--layout", default="folders", help="how ROOT is organised (docs/guides/layouts.md)")
    p.add_argument("--split", help="train/val/test where the layout has splits")
    p.add_argument("--generator", help="ROOT is this one generator's folder")
    p.add_argument("--arch", choices=sorted(TRANSFORM_ARCHS), default="stylegan",
                   help="the transformation model's architecture (LGradConfig.transform_arch)")  # fmt: skip
    p.add_argument("--resolution", type=int, default=256, help="the discriminator's input size")
    p.add_argument("--fmaps-base", type=int, default=16 << 10, help="the discriminator's fmaps_base (stylegan)")
    p.add_argument("--fmaps-max", type=int, default=512, help="the discriminator's fmaps_max (stylegan)")
    p.add_argument("--width", type=int, default=16, help="the DCGAN discriminator's first width (dcgan)")
    p.add_argument("--center-crop", type=int, metavar="N",
                   help="centre-crop N x N before the resize (the detector's view of larger images); default: the "
                   "authors' resize of the whole image")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="images per gradient computation")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.set_defaults(func=_cmd)
