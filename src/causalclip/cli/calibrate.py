"""``causalclip calibrate RUN --val DIR [--target-fpr F]``: recompute a run's decision threshold (threshold.json)."""

from __future__ import annotations

import argparse


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from ..evaluation.calibrate import calibrate_run
    from ..metrics.thresholds import THRESHOLD_NAME
    from ..pixel.folder import is_network_folder

    if is_network_folder(args.run):  # a network trained on images: --val is an image folder
        from ..images.layouts import LayoutError
        from ..pixel.data import open_image_set, real_image_set
        from ..pixel.evaluate import calibrate_network_run

        try:
            images = open_image_set(args.val, layout=args.layout or "folders", split=args.split)
        except LayoutError:
            if args.target_fpr is None or args.layout:
                raise
            images = real_image_set(args.val)  # held-out real photos only: enough for a target FPR
        rec = calibrate_network_run(args.run, images, target_fpr=args.target_fpr, device=args.device)
    else:
        if args.layout or args.split:
            raise ValueError(f"{args.run}: --layout/--split apply to networks trained on images; this is a head")
        rec = calibrate_run(args.run, args.val, target_fpr=args.target_fpr, device=args.device)
    print(f"wrote {args.run}/{THRESHOLD_NAME}: threshold {rec['threshold']:.6g} ({rec['method']}, {rec['source']})")
    parts = [f"{rec['n_real']} real", f"{rec['n_fake']} fake"]
    for key, label in (("val_fpr", "FPR"), ("val_fake_acc", "fake acc"), ("val_balanced_acc", "balanced acc")):
        if key in rec:
            parts.append(f"{label} {100 * rec[key]:.2f}%")
    print("  on the calibration set: " + ", ".join(parts))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="choose a run's decision threshold on validation features",
        description="Choose the decision threshold of a trained run on a validation feature set and write "
        "RUN/threshold.json (evaluate reports ACC at it as acc_calibrated). Default: the threshold that maximises "
        "balanced accuracy (needs real and fake images). With --target-fpr: the smallest threshold at which at "
        "most that fraction of the real images score above it (a real-only set works).",
    )
    p.add_argument("run", metavar="RUN", help="run folder (config.json + model.safetensors)")
    p.add_argument(
        "--val",
        required=True,
        metavar="DIR",
        help="validation feature set, made like the training set (networks: images)",
    )
    p.add_argument("--layout", help="networks: how the --val image folder is organised (default folders)")
    p.add_argument("--split", help="networks: the split of --val to read, where the layout has splits")
    p.add_argument("--target-fpr", type=float, metavar="F", help="target false-positive rate on reals, e.g. 0.05")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_calibrate)
