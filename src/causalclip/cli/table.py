"""``causalclip table``: render evaluation outputs (``metrics.csv``) as the paper's Tables 1-4, our rows beside
the paper's, in Markdown, CSV or LaTeX."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.io import write_text


def _runs(items: list[str]) -> dict[str, Path]:
    runs: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        p = Path(path)
        if p.is_dir():
            p = p / "metrics.csv"
        if not p.is_file():
            raise ValueError(f"{path}: no metrics.csv (give an evaluation folder or its metrics.csv)")
        if name in runs:
            raise ValueError(f"run name {name!r} given twice; name them with NAME=DIR")
        runs[name] = p
    return runs


def _cmd_table(args: argparse.Namespace) -> int:
    from ..paper.report import results_table

    table = results_table(
        _runs(args.evals),
        metric=args.metric,
        setting=None if args.setting == "none" else args.setting,
        paper_methods=args.paper_methods,
    )
    text = {"markdown": table.to_markdown, "csv": table.to_csv, "latex": table.to_latex}[args.format]()
    if args.out:
        write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "table",
        help="results table (paper's Tables 1-4 format) from evaluation outputs",
        description="Render evaluation outputs as the paper's Tables 1-4: one row per run (AP or ACC per test set "
        "and Avg), with the paper's rows for the setting above ours. Best value per column in bold, second "
        "underlined.",
    )
    t.add_argument("evals", nargs="+", metavar="[NAME=]DIR", help="evaluation folder (metrics.csv) per run")
    t.add_argument("--metric", choices=["ap", "acc", "real_acc", "fake_acc"], default="ap")
    t.add_argument(
        "--setting",
        choices=["sd14", "progan", "none"],
        default="sd14",
        help="paper rows to show; none: ours only (columns are always the paper's test sets)",
    )
    t.add_argument("--paper-methods", nargs="+", metavar="METHOD", help="only these of the paper's rows")
    t.add_argument("--format", choices=["markdown", "csv", "latex"], default="markdown")
    t.add_argument("--out", metavar="FILE", help="write to FILE instead of printing")
    t.set_defaults(func=_cmd_table)
