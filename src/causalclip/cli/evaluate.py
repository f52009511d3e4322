"""``causalclip evaluate RUN --test DIR...``: per-generator AP/ACC of a trained head."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate, format_table
    from ..pixel.folder import is_network_folder

    common = {
        "out": args.out,
        "balance": not args.no_balance,
        "max_per_class": args.max_per_class,
        "seed": args.seed,
        "device": args.device,
    }
    if is_network_folder(args.run):  # a network trained on images: --test names image folders
        from ..pixel.data import open_image_set
        from ..pixel.evaluate import evaluate_images

        sets = []
        for item in args.test:  # NAME=DIR names the generator of a folder (default: the folder's name)
            name, sep, path = item.partition("=")
            path, name = (path, name) if sep and name and path else (item, None)
            sets.append(open_image_set(path, layout=args.layout or "folders", split=args.split, generator=name))
        res = evaluate_images(args.run, sets, workers=args.workers, **common)
    else:
        if args.layout or args.split:
            raise ValueError(f"{args.run}: --layout/--split apply to networks trained on images; this is a head")
        res = evaluate(args.run, args.test, **common)
    for note in res.notes if not args.quiet else ():
        print(f"note: {note}", file=sys.stderr)
    print(format_table(res.metrics))
    if args.out:
        print(f"wrote {args.out}/metrics.csv and {args.out}/predictions.csv")
    if args.out and (Path(args.out) / "errors.csv").exists():
        print(f"images that could not be used, if any: {args.out}/errors.csv")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="per-generator AP/ACC of a trained head", description="Evaluate a run.")
    e.add_argument("run", metavar="RUN", help="run or detector folder (config.json + model.safetensors)")
    e.add_argument(
        "--test",
        nargs="+",
        required=True,
        metavar="DIR",
        help="test feature set(s); for a network, image folders (NAME=DIR names the generator)",
    )
    e.add_argument("--layout", help="networks: how the --test folders are organised (default folders)")
    e.add_argument("--split", help="networks: the split of --test to read, where the layout has splits")
    e.add_argument("--workers", type=int, default=0, help="networks: decoding worker processes (default 0)")
    e.add_argument("--out", metavar="DIR", help="write metrics.csv and predictions.csv here")
    e.add_argument("--no-balance", action="store_true", help="use every sample instead of balanced sampling")
    e.add_argument("--max-per-class", type=int, help="cap per class and generator (UnivFD: 1000)")
    e.add_argument("--seed", type=int, default=0, help="seed of the balanced sampling")
    e.add_argument("--device", default="cpu")
    e.add_argument("-q", "--quiet", action="store_true", help="no notes on stderr")
    e.set_defaults(func=_cmd_evaluate)
