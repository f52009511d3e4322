"""``causalclip export RUN --features DIR --out DETECTOR``: package a run as a self-describing detector folder."""

from __future__ import annotations

import argparse


def _cmd_export(args: argparse.Namespace) -> int:
    from ..detector.folder import export_detector_from_feature_set, read_detector, write_network_detector
    from ..pixel.folder import is_network_folder

    if is_network_folder(args.run):  # a network trained on images carries its own preprocessing
        if args.features:
            raise ValueError(f"{args.run}: a network's detector needs no --features (it brings its own preprocessing)")
        out = write_network_detector(args.out, source=args.run, threshold=args.threshold, overwrite=args.overwrite)
        det = read_detector(out)
        print(
            f"exported {args.run} -> {out}: {det.name} network on {det.preprocessing['size']}-px centre crops, "
            f"threshold {det.threshold:.6g} ({det.calibration.get('method', '?')})"
        )
        return 0
    if not args.features:
        raise ValueError(f"{args.run}: a head's detector needs --features DIR (how its features were made)")

    out = export_detector_from_feature_set(
        args.run, args.features, args.out, threshold=args.threshold, overwrite=args.overwrite
    )
    det = read_detector(out)
    bb = det.backbone.get("model", det.backbone.get("name", "?"))
    print(
        f"exported {args.run} -> {out}: {det.info['head']['name']} head on {det.feature_dim}-d {bb} features, "
        f"threshold {det.threshold:.6g} ({det.calibration.get('method', '?')})"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="package a run as a detector folder",
        description="Copy a run's head (config.json + model.safetensors) into a detector folder and write "
        "detector.json: the backbone and preprocessing recorded in the feature set's meta.json, the threshold "
        "(the run's threshold.json unless --threshold is given) and provenance.",
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument(
        "--features", metavar="DIR", help="a feature set made like the training features (heads; not for networks)"
    )
    p.add_argument("--out", required=True, metavar="DETECTOR", help="detector folder to create")
    p.add_argument("--threshold", type=float, help="decision threshold (default: the run's threshold.json, else 0.5)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=_cmd_export)
