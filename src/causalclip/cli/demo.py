"""``causalclip demo``: the whole pipeline on a benchmark built here, without any download."""

from __future__ import annotations

import argparse
import dataclasses

from ..demo.photos import DemoError

PRESET_NAMES = ("full", "tiny")
PROTOCOL_NAMES = ("one-family", "leave-one-out")  # causalclip.demo.run.PROTOCOLS, without importing torch here


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo.build import BUILD_SIZES
    from ..demo.run import DemoConfig, run_demo, summary_text

    build = BUILD_SIZES[args.preset]
    changes = {}
    if args.photos:
        changes["photo_dirs"] = tuple(args.photos)
    if args.no_builtin_photos:
        changes["builtin"] = False
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.threads is not None:
        if args.threads < 1:
            raise DemoError(f"--threads must be >= 1, got {args.threads}")
        changes["threads"] = args.threads
    if args.families:
        changes["families"] = tuple(args.families)
    build = dataclasses.replace(build, **changes)
    cfg = DemoConfig.preset(
        args.preset,
        build=build,
        backbone=args.backbone,
        heads=tuple(args.heads),
        **({} if args.networks is None else {"networks": tuple(args.networks)}),
        **({} if args.lgrad_transform is None else {"lgrad_transform_family": args.lgrad_transform}),
        protocol=args.protocol,
        train_families=tuple(args.train_families) if args.train_families else None,
        seeds=tuple(args.seeds),
        plots=not args.no_plots,
    )
    result = run_demo(args.out, cfg, cache=args.cache, overwrite=args.overwrite, progress=not args.quiet)
    print(summary_text(result))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..heads.registry import HEADS

    d = sub.add_parser(
        "demo",
        help="offline end-to-end demo: real photos, locally trained generators, cross-generator results",
        description="Build (once, then cached) a benchmark from the photos shipped with scikit-image and "
        "scikit-learn and four generator families trained here, extract weight-free forensic features, train "
        "CausalCLIP, UnivFD and VIB-Net on them and NPR, CNNSpot, FreDect, Fusing and LGrad (narrow, from scratch; "
        "LGrad's transformation model: a GAN family's trained discriminator) on the tiles' pixels, on each family "
        "(or, --protocol leave-one-out, on all families but each one in turn), test on all, print the tables, write "
        "plots and a detector folder. Never touches the network.",
    )
    d.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default runs/demo)")
    d.add_argument(
        "--cache", metavar="DIR", help="benchmark cache (default $CAUSALCLIP_CACHE or ~/.cache/causalclip/demo)"
    )
    d.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="full",
        help="full (about 9 min on 2 CPU cores from an empty cache, a few once the benchmark is cached) or tiny "
        "(seconds)",
    )
    d.add_argument("--photos", action="append", metavar="DIR", help="also use your own photos (sub-folder = scene)")
    d.add_argument("--no-builtin-photos", action="store_true", help="only the --photos folders")
    d.add_argument("--backbone", metavar="SPEC", help="default spectrum:size=T+npr:size=T (T = tile size)")
    d.add_argument("--heads", nargs="+", choices=sorted(HEADS), default=["causalclip", "univfd", "vib"])
    from ..networks.registry import NETWORKS

    d.add_argument(
        "--networks",
        nargs="*",
        choices=sorted(NETWORKS),
        metavar="NAME",
        help="networks trained on the tiles' pixels, narrow versions (default npr cnnspot fredect fusing lgrad; "
        f"choices {', '.join(sorted(NETWORKS))}; --networks with no name: none)",
    )
    d.add_argument(
        "--lgrad-transform",
        metavar="FAMILY",
        help="the GAN family whose trained discriminator is LGrad's transformation model (default tconv-gan; "
        "resize-gan is the other)",
    )
    d.add_argument("--families", nargs="+", metavar="NAME", help="generator families to build (default all)")
    d.add_argument(
        "--protocol",
        choices=PROTOCOL_NAMES,
        default="one-family",
        help="one-family (default): train on one family, test on all; leave-one-out: train on all families but "
        "one, test on all (the one left out is the unseen family)",
    )
    d.add_argument(
        "--train-families",
        nargs="+",
        metavar="NAME",
        help="families to train on in turn (default each); with --protocol leave-one-out, the families to leave out",
    )
    d.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        help="head training seeds (default 0); with two or more, also the mean and std over seeds (seeds.csv)",
    )
    d.add_argument("--seed", type=int, help="benchmark seed: tiles, split, generators (default 0)")
    d.add_argument("--threads", type=int, help="torch threads for the build (default 1)")
    d.add_argument("--no-plots", action="store_true")
    d.add_argument("--overwrite", action="store_true", help="replace a demo of another benchmark in --out")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)
