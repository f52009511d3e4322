"""``causalclip umap``: the paper's Fig. 3, 2-D maps of raw, VIB-Net and CausalCLIP features."""

from __future__ import annotations

import argparse


def _cmd_umap(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..evaluation.plots import umap_figure

    if args.max_per_group < 0:
        raise ValueError(f"--max-per-group must be >= 0 (0 = all), got {args.max_per_group}")
    written = umap_figure(
        args.features,
        args.out,
        vib_run=args.vib,
        causalclip_run=args.causalclip,
        seen_generators=args.seen,
        max_per_group=args.max_per_group,
        seed=args.seed,
        method=args.method,
        n_neighbors=args.n_neighbors,
        min_dist=args.min_dist,
        metric=args.metric,
    )
    sep = pd.read_csv(written[-1])
    print("5-NN real/fake agreement in the 2-D map (0.5 = mixed, 1 = separated):")
    print(sep.pivot(index="representation", columns="subset", values="knn_agreement").round(3).to_string())
    for path in written:
        print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "umap",
        help="UMAP of raw / VIB-Net / CausalCLIP features, real vs fake, seen vs unseen (Fig. 3)",
        description="Embed a seeded subsample of feature sets in 2-D: the raw features, VIB-Net's bottleneck mean "
        "(--vib) and CausalCLIP's causal part Zc (--causalclip); a panel is skipped when its run is not given. "
        "Writes STEM.png, STEM.svg, STEM.csv (coordinates) and STEM_separation.csv. Needs the 'umap' extra "
        "(pip install 'causalclip[umap]').",
    )
    p.add_argument("--features", nargs="+", required=True, metavar="DIR", help="feature set(s) to embed")
    p.add_argument("--vib", metavar="RUN", help="a VIB-Net run folder (--head vib)")
    p.add_argument("--causalclip", metavar="RUN", help="a CausalCLIP run folder (--head causalclip)")
    p.add_argument("--seen", nargs="+", required=True, metavar="GEN", help="generator name(s) seen in training")
    p.add_argument("--out", required=True, metavar="STEM", help="output path without suffix, e.g. figs/umap")
    p.add_argument("--max-per-group", type=int, default=500, metavar="N", help="per generator and class (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsample and of UMAP")
    p.add_argument("--method", choices=["umap", "pca"], default="umap", help="pca: fast linear alternative")
    p.add_argument("--n-neighbors", type=int, default=15, help="UMAP n_neighbors")
    p.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist")
    p.add_argument("--metric", default="euclidean", help="UMAP metric (euclidean, cosine, ...)")
    p.set_defaults(func=_cmd_umap)
