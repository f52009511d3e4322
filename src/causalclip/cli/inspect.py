"""``causalclip inspect DIR``: validate and summarise a feature set."""

from __future__ import annotations

import argparse
import json

from ..features.featureset import open_feature_set


def _cmd_inspect(args: argparse.Namespace) -> int:
    fs = open_feature_set(args.dir)
    counts = fs.samples.groupby(["generator", "label"]).size().unstack(fill_value=0)
    print(f"{fs.root}: {len(fs)} vectors of dim {fs.dim} ({fs.meta['dtype']}) in {len(fs.shards)} shard(s)")
    for key in ("backbone", "preprocessing", "perturbation"):
        if key in fs.meta:
            print(f"  {key}: {json.dumps(fs.meta[key])[:200]}")
    print(counts.rename(columns={0: "real", 1: "fake"}).to_string())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("inspect", help="validate and summarise a feature set", description="Validate a feature set.")
    i.add_argument("dir", metavar="DIR")
    i.set_defaults(func=_cmd_inspect)
