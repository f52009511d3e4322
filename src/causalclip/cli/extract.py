"""``causalclip extract ROOT --layout L --out DIR``: images -> a cached feature set (resumable)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..backbones.clip import DEFAULT_CLIP, ClipSpec
from ..features.job import AUTO_COMPILE_MIN_IMAGES, AUTO_PROCESSES_MIN_IMAGES, ExtractConfig


def processes_arg(text: str) -> int | str:
    """``--processes``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return n


def _parse_pairs(items: Sequence[str] | None) -> dict[str, tuple[str, str]] | None:
    if not items:
        return None
    pairs = {}
    for item in items:
        name, sep, roots = item.partition("=")
        real, sep2, fake = roots.partition(":")
        if not (sep and sep2 and name and real and fake):
            raise ValueError(f"--pair {item!r}: expected NAME=REAL_DIR:FAKE_DIR")
        pairs[name] = (real, fake)
    return pairs


def _cmd_extract(args: argparse.Namespace) -> int:
    from ..backbones.registry import load_backbone
    from ..features.extract import extract
    from ..images.layouts import list_samples
    from ..images.transforms import Augmentation, Perturbation

    listing = list_samples(
        args.root,
        args.layout,
        split=args.split,
        pairs=_parse_pairs(args.pair),
        max_per_class=args.max_per_class,
        seed=args.seed,
        generator=args.generator,
    )
    if len(listing.samples) == 0:
        raise ValueError(f"{args.root}: the {args.layout} layout found no images")
    load_args = {"feature": args.feature, "normalize": args.normalize, "preprocessing_mode": args.preprocess}
    ray_options = None
    if args.engine == "ray":  # the driver's copy (on CPU) fixes the job's identity; each actor loads its own
        from ..features.ray_engine import RayOptions, actor_precision

        precision = actor_precision(args.precision, args.device)
        backbone = load_backbone(args.backbone, device="cpu", precision=precision, **load_args)
        ray_options = RayOptions(
            address=args.ray_address,
            actors=args.actors,
            gpus_per_actor=args.gpus_per_actor,
            cpus_per_actor=args.cpus_per_actor,
            backbone_args={"model": args.backbone, "compile": args.compile is True, **load_args},
        )
    else:
        backbone = load_backbone(args.backbone, device=args.device, precision=args.precision, **load_args)
    config = ExtractConfig(
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        workers=args.workers,
        processes=args.processes,
        compile="auto" if args.compile is None else args.compile,
        storage_dtype=args.dtype,
    )
    res = extract(
        listing.samples,
        root=listing.root,
        out=args.out,
        backbone=backbone,
        perturbation=Perturbation(jpeg_quality=args.jpeg, blur_sigma=args.blur),
        augmentation=Augmentation() if args.augment else None,
        augment_seed=args.seed,
        config=config,
        ignored=listing.ignored,
        device=args.device,
        progress=not args.quiet,
        engine=args.engine,
        ray_options=ray_options,
    )
    how = f"{res.processes} process{'es' if res.processes > 1 else ''}{', compiled' if res.compiled else ''}"
    print(
        f"{res.out}: {res.n_ok} of {res.n_planned} images extracted ({res.n_extracted_now} in this run, "
        f"{res.images_per_s:.2f} images/s end to end, {how}); {len(res.errors)} input(s) not used"
    )
    if len(res.errors):
        for reason, count in res.errors["reason"].value_counts().items():
            print(f"  {count:>6} x {reason}")
        print(f"  every one is listed in {res.out}/errors.csv")
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser(
        "extract",
        help="images -> cached backbone features (resumable)",
        description="Extract frozen-backbone features of a dataset into a feature set. Run the same command again "
        "to resume after an interruption. Exits 1 if some inputs could not be used (listed in OUT/errors.csv).",
    )
    x.add_argument("root", metavar="ROOT", help="dataset folder (or manifest file for --layout manifest)")
    x.add_argument("--layout", required=True, help="genimage, cnndetection, pairs, folders or manifest")
    x.add_argument("--split", help="train / val / test, where the layout has splits")
    x.add_argument("--generator", help="generator name when ROOT is a single generator's folder")
    x.add_argument("--pair", action="append", metavar="NAME=REAL:FAKE", help="pairs layout: a generator's roots")
    x.add_argument(
        "--backbone",
        default=DEFAULT_CLIP,
        metavar="ID_OR_PATH",
        help="CLIP hub id or local folder (default: CLIP ViT-L/14), or a weight-free spec such as spectrum+npr",
    )
    x.add_argument(
        "--feature", choices=["image_embeds", "pooled"], default=ClipSpec.feature, help="default %(default)s"
    )
    x.add_argument("--normalize", action="store_true", help="L2-normalise the features")
    x.add_argument(
        "--preprocess",
        choices=["crop", "clip"],
        default=ClipSpec.preprocessing_mode,
        help=f"crop: centre crop, no resize (default {ClipSpec.preprocessing_mode})",
    )
    x.add_argument("--jpeg", type=int, metavar="Q", help="perturbation: re-encode as JPEG at quality Q")
    x.add_argument("--blur", type=float, metavar="SIGMA", help="perturbation: Gaussian blur (before JPEG)")
    x.add_argument(
        "--augment", action="store_true", help="training augmentation: blur p=0.1, JPEG p=0.1 (one draw per image)"
    )
    x.add_argument("--out", required=True, metavar="DIR")
    x.add_argument("--max-per-class", type=int, help="balanced seeded sampling: at most N per generator and class")
    x.add_argument(
        "--seed", type=int, default=0, help="seed of --max-per-class sampling and --augment (default %(default)s)"
    )
    x.add_argument(
        "--batch-size", type=int, default=ExtractConfig.batch_size, help="default %(default)s (CPU); 256 on a GPU"
    )
    x.add_argument("--shard-size", type=int, default=ExtractConfig.shard_size, help="default %(default)s")
    x.add_argument(
        "--workers", type=int, default=ExtractConfig.workers, help="decoding processes with --processes 1 (%(default)s)"
    )
    x.add_argument(
        "--processes",
        type=processes_arg,
        default=ExtractConfig.processes,
        metavar="N|auto",
        help="CPU: backbone processes, each decoding its own batches, threads = cores / N (default %(default)s: one "
        f"per core, at most 4, for jobs of at least {AUTO_PROCESSES_MIN_IMAGES} images; 1 = one process, --workers "
        "decode); ignored on a GPU",
    )
    x.add_argument(
        "--dtype",
        choices=["float16", "float32"],
        default=ExtractConfig.storage_dtype,
        help="storage dtype (default %(default)s)",
    )
    x.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto (default): bf16 where native, fp16 on older GPUs, else fp32",
    )
    x.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"torch.compile the backbone (default: on CPU, for jobs of at least {AUTO_COMPILE_MIN_IMAGES} images)",
    )
    x.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    x.add_argument("-q", "--quiet", action="store_true")
    r = x.add_argument_group("distributed (--engine ray; docs/guides/distributed.md)")
    r.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="local (default) or ray: Ray Data on a Ray cluster"
    )
    r.add_argument("--ray-address", metavar="ADDR", help="auto (this node's cluster), ray://HEAD:10001; default local")
    r.add_argument("--actors", type=int, help="backbone actors (default: one per GPU, or CPUs / 2)")
    r.add_argument("--gpus-per-actor", type=float, help="default 1 with --device cuda, else 0 (CPU actors)")
    r.add_argument(
        "--cpus-per-actor", type=float, default=1.0, help="CPUs Ray reserves per actor (default %(default)s)"
    )
    x.set_defaults(func=_cmd_extract)
