"""``causalclip evaluate RUN --test DIR...``: per-generator AP/ACC of a trained head."""

from __future__ import annotations

import argparse
import sys


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate, format_table

    res = evaluate(
        args.run,
        args.test,
        out=args.out,
        balance=not args.no_balance,
        max_per_class=args.max_per_class,
        seed=args.seed,
        device=args.device,
    )
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    print(format_table(res.metrics))
    if args.out:
        print(f"wrote {args.out}/metrics.csv and {args.out}/predictions.csv")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="per-generator AP/ACC of a trained head", description="Evaluate a run.")
    e.add_argument("run", metavar="RUN", help="run or detector folder (config.json + model.safetensors)")
    e.add_argument("--test", nargs="+", required=True, metavar="DIR", help="test feature set(s)")
    e.add_argument("--out", metavar="DIR", help="write metrics.csv and predictions.csv here")
    e.add_argument("--no-balance", action="store_true", help="use every sample instead of balanced sampling")
    e.add_argument("--max-per-class", type=int, help="cap per class and generator (UnivFD: 1000)")
    e.add_argument("--seed", type=int, default=0, help="seed of the balanced sampling")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=_cmd_evaluate)
