"""``causalclip mask-report RUN --out DIR``: plots and tables of a CausalCLIP run's mask diagnostics."""

from __future__ import annotations

import argparse


def _cmd_mask_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..evaluation.plots import mask_report

    written = mask_report(args.run, args.out, top_k=args.top_k)
    table = pd.read_csv(written[0])
    last = table.iloc[-1]
    parts = [
        f"{name} {last[name]:.4g}"
        for name in ("mask_dims_selected", "nhsic", "adv_acc", "nc_probe_acc", "grad_cls", "grad_indep")
        if name in table.columns and pd.notna(last[name])
    ]
    print(f"{args.run}: {len(table)} epoch(s); last epoch: " + ", ".join(parts))
    for path in written:
        print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mask-report",
        help="plots and tables of a CausalCLIP run's mask (sparsity, HSIC, adversary/probe accuracy)",
        description="Read a CausalCLIP run folder (metrics.csv, mask_selection.csv, mask_frequency.npy) and write "
        "mask_report.csv/.md, mask_top_dimensions.csv, mask_training.png/.svg and mask_frequency.png/.svg into "
        "--out. Needs the 'plots' extra (pip install 'causalclip[plots]').",
    )
    p.add_argument("run", metavar="RUN", help="run folder of causalclip train --head causalclip")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the report (created)")
    p.add_argument("--top-k", type=int, default=20, metavar="K", help="dimensions listed in mask_report.md")
    p.set_defaults(func=_cmd_mask_report)
