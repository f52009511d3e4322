"""``causalclip import-checkpoint --method M FILE --out DETECTOR``: an authors' released checkpoint as a detector."""

from __future__ import annotations

import argparse

from ..networks.registry import NETWORKS


def _cmd_import(args: argparse.Namespace) -> int:
    from ..core.config import config_from_dict
    from ..detector.folder import read_detector, write_network_detector
    from ..networks.importer import import_network
    from ..networks.registry import network_config_dict

    if (args.dct_mean or args.dct_var) and args.method != "fredect":
        raise ValueError("--dct-mean/--dct-var are the statistics of AIGCDetectBenchmark's FreDect (--method fredect)")
    if args.transform and args.method != "lgrad":
        raise ValueError("--transform is LGrad's transformation model (--method lgrad)")
    stats = {"dct_mean": args.dct_mean, "dct_var": args.dct_var} if args.method == "fredect" else {}
    if args.method == "lgrad":
        stats["transform"] = args.transform
    network, report = import_network(args.method, args.checkpoint, **stats)
    config = config_from_dict(NETWORKS[args.method].config_cls, network_config_dict(args.method, network))
    out = write_network_detector(
        args.out,
        network=network,
        method=args.method,
        config=config,
        init={"method": "checkpoint", "report": report},
        threshold=args.threshold,
        provenance={"checkpoint": report.get("source"), "sha256": report.get("sha256")},
        overwrite=args.overwrite,
    )
    det = read_detector(out)
    print(
        f"imported {args.checkpoint} -> {out}: {det.name} ({report.get('n_tensors', '?')} tensors checked), "
        f"{det.preprocessing['size']}-px centre crops, threshold {det.threshold:.6g}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-checkpoint",
        help="an authors' released checkpoint (.pth) as a detector folder",
        description="Read an authors' checkpoint with torch.load(weights_only=True) only (a file that needs a full "
        "unpickler is refused), map and check every key and shape against our network, and write a detector folder "
        "(config.json + model.safetensors) that detect, serve and evaluate load. docs/guides/comparison-methods.md "
        "lists where each method's checkpoints are published.",
    )
    p.add_argument("checkpoint", metavar="FILE", help="the authors' .pth / .pt / .safetensors file")
    p.add_argument("--method", required=True, choices=sorted(NETWORKS), help="which network the file holds")
    p.add_argument("--out", required=True, metavar="DETECTOR", help="detector folder to create")
    p.add_argument("--dct-mean", metavar="FILE", help="fredect: AIGCDetectBenchmark's weights/auxiliary/dct_mean")
    p.add_argument("--dct-var", metavar="FILE", help="fredect: AIGCDetectBenchmark's weights/auxiliary/dct_var")
    p.add_argument(
        "--transform", metavar="FILE", help="lgrad: the transformation model (the authors' StyleGAN discriminator .pth)"
    )
    p.add_argument("--threshold", type=float, help="decision threshold (default 0.5: the authors' logit > 0)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=_cmd_import)
