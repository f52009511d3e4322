"""The ``causalclip`` command: one entry point, one subcommand per task. Every subcommand body is a function
of parsed arguments returning an exit code, so tests run ``main([...])`` in-process."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .checkpoint import CheckpointError
from .config import ConfigError
from .features import FeatureSetError, open_feature_set
from .heads import ABLATIONS, HEADS
from .metrics import MetricsError

log = logging.getLogger("causalclip")

# Errors that mean "bad input": reported as one line naming the file, exit code 2, no traceback.
USER_ERRORS = (ConfigError, FeatureSetError, CheckpointError, MetricsError, FileExistsError, ValueError, KeyError)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import resolve_run_config, train

    overrides = list(args.set or [])
    for name in ("epochs", "batch_size", "lr", "seed", "device"):
        value = getattr(args, name)
        if value is not None:
            overrides.append(f"train.{name}={json.dumps(value)}")
    rc = resolve_run_config(args.head, config_file=args.config, overrides=overrides, ablation=args.ablation)
    result = train(
        train_set=args.train,
        val_set=args.val,
        out=args.out,
        run_config=rc,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    best = result.history.iloc[result.best_epoch - 1]
    print(
        f"trained {rc.head} -> {result.run_dir}  (best epoch {result.best_epoch}: val AP {100 * best['val_ap']:.2f}, "
        f"ACC {100 * best['val_acc']:.2f}; {result.stop_reason})"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_table

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


def _cmd_inspect(args: argparse.Namespace) -> int:
    fs = open_feature_set(args.dir)
    counts = fs.samples.groupby(["generator", "label"]).size().unstack(fill_value=0)
    print(f"{fs.root}: {len(fs)} vectors of dim {fs.dim} ({fs.meta['dtype']}) in {len(fs.shards)} shard(s)")
    for key in ("backbone", "preprocessing", "perturbation"):
        if key in fs.meta:
            print(f"  {key}: {json.dumps(fs.meta[key])[:200]}")
    print(counts.rename(columns={0: "real", 1: "fake"}).to_string())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="causalclip", description="Detect AI-generated images with CausalCLIP.")
    p.add_argument("--version", action="version", version=f"causalclip {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a head on cached features", description="Train a head on a feature set.")
    t.add_argument("--head", choices=sorted(HEADS), default="causalclip")
    t.add_argument("--train", required=True, metavar="DIR", help="training feature set")
    t.add_argument("--val", required=True, metavar="DIR", help="validation feature set (early stopping)")
    t.add_argument("--out", required=True, metavar="RUN", help="run folder to create")
    t.add_argument("--config", metavar="FILE", help="JSON or TOML config: [train] and per-head sections")
    t.add_argument("--ablation", choices=sorted(ABLATIONS), help="Table 5 configuration (causalclip head)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. tau=0.5 or train.patience=3")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="per-generator AP/ACC of a trained head", description="Evaluate a run.")
    e.add_argument("run", metavar="RUN", help="run or detector folder (config.json + model.safetensors)")
    e.add_argument("--test", nargs="+", required=True, metavar="DIR", help="test feature set(s)")
    e.add_argument("--out", metavar="DIR", help="write metrics.csv and predictions.csv here")
    e.add_argument("--no-balance", action="store_true", help="use every sample instead of balanced sampling")
    e.add_argument("--max-per-class", type=int, help="cap per class and generator (UnivFD: 1000)")
    e.add_argument("--seed", type=int, default=0, help="seed of the balanced sampling")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=_cmd_evaluate)

    i = sub.add_parser("inspect", help="validate and summarise a feature set", description="Validate a feature set.")
    i.add_argument("dir", metavar="DIR")
    i.set_defaults(func=_cmd_inspect)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr, force=True
    )
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"causalclip {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
