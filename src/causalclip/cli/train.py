"""``causalclip train``: train a head on a cached feature set, or a network on images (NPR, CNNSpot, FreDect), and
write a run folder. One command for every method: ``--head`` names either (docs/guides/image-detectors.md)."""

from __future__ import annotations

import argparse
import json

from ..heads.causalclip import ABLATIONS
from ..heads.registry import DEFAULT_HEAD, HEADS
from ..networks.registry import NETWORKS
from ..training.config import TrainConfig


def _cmd_train(args: argparse.Namespace) -> int:
    if args.head in NETWORKS:
        return _train_network(args)
    for flag, value in (("--layout", args.layout), ("--imagenet-weights", args.imagenet_weights)):
        if value is not None:
            raise ValueError(
                f"{flag} applies to networks trained on images ({sorted(NETWORKS)}), not to --head {args.head}"
            )
    from ..training.config import resolve_run_config
    from ..training.loop import train

    overrides = list(args.set or [])
    for name in ("epochs", "batch_size", "lr", "seed", "device"):
        value = getattr(args, name)
        if value is not None:
            overrides.append(f"train.{name}={json.dumps(value)}")
    rc = resolve_run_config(args.head, config_file=args.config, overrides=overrides, ablation=args.ablation)
    val, heldout = _val_roles(args.val)
    result = train(
        train_set=args.train,
        val_set=val,
        heldout_sets=heldout,
        out=args.out,
        run_config=rc,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    best = result.history.iloc[result.best_epoch - 1]
    held = f", held-out AP {100 * best['heldout_ap']:.2f}" if heldout else ""
    print(
        f"trained {rc.head} -> {result.run_dir}  (best epoch {result.best_epoch}: val AP {100 * best['val_ap']:.2f}, "
        f"ACC {100 * best['val_acc']:.2f}{held}; {result.stop_reason})"
    )
    diag = json.loads((result.run_dir / "summary.json").read_text(encoding="utf-8")).get("diagnostics", {})
    if "nc_probe_acc" in diag:  # did the mask take the label out of Znc? A fresh probe says, not the adversary
        adv = f"; the adversary trained against the mask: {diag['adv_acc']:.3f}" if "adv_acc" in diag else ""
        print(
            f"  held-out accuracy on Znc of a fresh probe: {diag['nc_probe_acc']:.3f} (chance 0.5){adv}; "
            f"on Zc: {diag.get('c_probe_acc', float('nan')):.3f}; mask keeps {diag['mask_dims_selected']} dims"
        )
    return 0


def _image_set(root: str, args: argparse.Namespace, split: str | None):
    from ..pixel.data import open_image_set

    return open_image_set(
        root, layout=args.layout or "folders", split=split, max_per_class=args.max_per_class, seed=args.seed or 0
    )


def _train_network(args: argparse.Namespace) -> int:
    from ..pixel.config import resolve_pixel_config
    from ..pixel.loop import train_network

    if args.ablation:
        raise ValueError(f"--ablation applies to the causalclip head, not to the network {args.head!r}")
    overrides = list(args.set or [])
    for name in ("epochs", "batch_size", "lr"):
        if getattr(args, name) is not None:
            overrides.append(f"recipe.{name}={json.dumps(getattr(args, name))}")
    for name in ("seed", "device", "workers", "imagenet_weights"):
        if getattr(args, name) is not None:
            overrides.append(f"train.{name}={json.dumps(getattr(args, name))}")
    rc = resolve_pixel_config(args.head, config_file=args.config, overrides=overrides)
    val, heldout = _val_roles(args.val)
    result = train_network(
        train_set=_image_set(args.train, args, args.train_split),
        val_set=_image_set(val, args, args.val_split),
        heldout_sets=[_image_set(h, args, args.val_split) for h in heldout],
        out=args.out,
        run_config=rc,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    if result.history.empty:
        return 0  # a DDP rank other than 0: rank 0 reports
    best = result.history.iloc[result.best_epoch - 1]
    held = f", held-out AP {100 * best['heldout_ap']:.2f}" if heldout else ""
    print(
        f"trained {rc.method} -> {result.run_dir}  (best epoch {result.best_epoch}: val AP {100 * best['val_ap']:.2f}, "
        f"ACC {100 * best['val_acc']:.2f}{held}; {result.stop_reason})"
    )
    if len(result.errors):
        print(f"  {len(result.errors)} image(s) could not be used: {result.run_dir}/errors.csv")
    init = json.loads((result.run_dir / "run.json").read_text(encoding="utf-8")).get("init", {})
    if init.get("note"):
        print(f"  initialised {init['note']}")
    return 0


def _val_roles(items: list[str]) -> tuple[str, list[str]]:
    """``--val DIR [heldout=DIR ...]`` -> (the in-distribution validation set, the held-out generators' sets)."""
    plain, heldout = [], []
    for item in items:
        role, sep, path = item.partition("=")
        if sep and role == "heldout" and path:
            heldout.append(path)
        elif sep and role in ("val", "heldout"):
            raise ValueError(f"--val {item!r}: expected DIR, val=DIR or heldout=DIR")
        else:
            plain.append(path if sep and role == "val" else item)
    if len(plain) != 1:
        raise ValueError(
            f"--val takes exactly one in-distribution validation set (DIR), got {len(plain)}; held-out generators' "
            "sets are given as heldout=DIR"
        )
    return plain[0], heldout


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train a head on cached features, or a network on images",
        description="Train a head on a feature set, or a network (NPR, CNNSpot, FreDect, Fusing, LGrad) on images; "
        "docs/guides/comparison-methods.md lists every method.",
    )
    d = TrainConfig()  # the one definition of the training defaults
    methods = ", ".join(f"{k} ({v.title})" for k, v in NETWORKS.items())
    t.add_argument(
        "--head",
        choices=sorted(HEADS) + sorted(NETWORKS),
        default=DEFAULT_HEAD,
        metavar="METHOD",
        help=f"heads on cached features: {', '.join(sorted(HEADS))} (clipping needs CLIP image_embeds features "
        f"and the extract extra: docs/guides/clipping.md); networks trained on images: {methods} "
        "(default: %(default)s)",
    )
    t.add_argument(
        "--train", required=True, metavar="DIR", help="training feature set; for a network, an image folder (--layout)"
    )
    t.add_argument(
        "--val",
        required=True,
        nargs="+",
        metavar="[heldout=]DIR",
        help="the training generator's validation feature set (DIR), and optionally sets of generators that are not "
        "in training (heldout=DIR, repeatable): model selection and early stopping then follow the held-out sets",
    )
    t.add_argument("--out", required=True, metavar="RUN", help="run folder to create")
    t.add_argument("--config", metavar="FILE", help="JSON or TOML config: [train] and per-head sections")
    t.add_argument("--ablation", choices=sorted(ABLATIONS), help="Table 5 configuration (causalclip head)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. tau=0.5 or train.patience=3")
    t.add_argument(
        "--epochs",
        type=int,
        help=f"maximum epochs (default: the head's recipe, else {d.epochs}; early stopping usually ends sooner)",
    )
    t.add_argument("--batch-size", type=int, help=f"default: the head's recipe, else {d.batch_size}")
    t.add_argument("--lr", type=float, help=f"learning rate (default: the head's recipe, else {d.lr:g})")
    t.add_argument("--seed", type=int, help=f"default {d.seed}")
    t.add_argument("--device", help=f"{d.device} (default), cuda, cuda:1, ...")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    g = t.add_argument_group("networks trained on images (--head " + "/".join(NETWORKS) + ")")
    g.add_argument("--layout", help="how --train/--val folders are organised (default folders; docs/guides/layouts.md)")
    g.add_argument("--train-split", help="split of --train to read, where the layout has splits (e.g. train)")
    g.add_argument("--val-split", help="split of --val to read, where the layout has splits (e.g. val)")
    g.add_argument("--max-per-class", type=int, help="at most N images per generator and class (seeded)")
    g.add_argument("--workers", type=int, help="data-loading worker processes (default 2)")
    g.add_argument(
        "--imagenet-weights",
        metavar="FILE",
        help="torchvision ResNet-50 ImageNet file: the ResNet-50 of CNNSpot, Fusing and LGrad starts from it "
        "(without it they train from scratch)",
    )
    t.set_defaults(func=_cmd_train)
