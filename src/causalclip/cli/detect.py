"""``causalclip detect DETECTOR PATH...``: the probability that each image is AI-generated, and its label.

Exit status (for scripts): 0 every input scored; 1 some inputs unusable (each reported, the rest still scored);
2 usage or model error (nothing scored); 3 with ``--fail-on-fake``, at least one image labelled fake (takes
precedence over 1).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import os
import sys
from contextlib import nullcontext
from typing import IO, Any

from ..detect.engine import DetectionEngine

EXIT_OK, EXIT_UNUSABLE, EXIT_FAKE = 0, 1, 3
MAX_LISTED = 20


class _Writer:
    """Streams rows in one of the output formats."""

    def __init__(self, fmt: str, out: IO[str]) -> None:
        self.fmt, self.out = fmt, out
        self.csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(["path", "fake_probability", "label", "crops", "error"])
        elif fmt == "table":
            out.write(f"{'p_fake':>8}  {'label':<5}  path\n")

    def write(self, d) -> None:
        if self.fmt == "jsonl":
            row = {"path": d.name, "fake_probability": d.fake_probability, "label": d.label, "crops": d.crops}
            row["error"] = d.error
            self.out.write(json.dumps(row) + "\n")
        elif self.csv is not None:
            p = "" if d.fake_probability is None else repr(d.fake_probability)
            self.csv.writerow([d.name, p, d.label or "", d.crops, d.error or ""])
        elif d.ok:
            self.out.write(f"{d.fake_probability:8.4f}  {d.label:<5}  {d.name}\n")
        else:
            self.out.write(f"{'-':>8}  {'ERROR':<5}  {d.name}  ({d.error})\n")
        self.out.flush()


def engine_default(name: str) -> Any:
    """The default of a :class:`DetectionEngine` option: its signature is the one definition."""
    return inspect.signature(DetectionEngine).parameters[name].default


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """The :class:`DetectionEngine` options of ``detect`` and ``serve``: the same flags, defaults and help."""
    p.add_argument(
        "--crops",
        choices=["center", "grid"],
        default=engine_default("crops"),
        help="center: the paper's single centre crop; grid: tiles over the whole image, probabilities averaged "
        "(about one backbone pass per tile)",
    )
    p.add_argument(
        "--max-crops",
        type=int,
        default=engine_default("max_crops"),
        metavar="N",
        help="at most N tiles per image with --crops grid (default %(default)s)",
    )
    p.add_argument("--threshold", type=float, help="label threshold (default: the detector's calibrated one)")
    p.add_argument("--backbone", metavar="ID_OR_PATH", help="where the recorded CLIP model is (e.g. a local copy)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=engine_default("batch_size"),
        help="backbone inputs per pass (default %(default)s, for a CPU; more on a GPU)",
    )
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: as the features were made")
    p.add_argument("--device", default=engine_default("device"))
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the backbone and run one pass of every batch size 1..--batch-size before scoring "
        "(start-up takes longer: minutes for ViT-L/14 on a CPU; pays off on long runs and busy servers)",
    )


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`DetectionEngine` keyword arguments of :func:`add_engine_arguments`' flags, checked."""
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold {args.threshold}: must be a probability in [0, 1]")
    return {
        "device": args.device,
        "precision": args.precision,
        "backbone_model": args.backbone,
        "threshold": args.threshold,
        "crops": args.crops,
        "max_crops": args.max_crops,
        "batch_size": args.batch_size,
        "compile": args.compile,
    }


def _expand_in_order(inputs: list[str]) -> tuple[list[str], list, int, list[int]]:
    """expand_inputs, input by input, so that each unusable input keeps its place among the scored images:
    (paths, problems, skipped, for each problem the number of paths before it). Duplicates are scored once."""
    from ..detect.inputs import expand_inputs

    paths: list[str] = []
    problems: list = []
    at: list[int] = []
    seen: set[str] = set()
    skipped = 0
    for raw in inputs:
        p, bad, n = expand_inputs([raw])
        skipped += n
        for d in bad:
            problems.append(d)
            at.append(len(paths))
        for x in p:
            key = os.path.normpath(x)
            if key not in seen:
                seen.add(key)
                paths.append(x)
    return paths, problems, skipped, at


def _cmd_detect(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..detect.engine import DetectionEngine

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    options = engine_options(args)
    paths, problems, skipped, at = _expand_in_order(args.inputs)
    if args.quiet:  # transformers draws its own "Loading weights" bar
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass
    engine = DetectionEngine(args.detector, workers=args.workers, **options)
    n_fake = n_real = 0
    bad = list(problems)
    target = open(args.output, "w", encoding="utf-8", newline="") if args.output else nullcontext(sys.stdout)  # noqa: SIM115
    with target as out:
        writer = _Writer(args.format, out)
        pending = list(zip(at, problems, strict=True))  # unusable inputs, written where they were given
        bar = tqdm(
            engine.detect_paths(paths),
            total=len(paths),
            unit="img",
            desc="detect",
            file=sys.stderr,
            disable=True if args.quiet else None,  # None: only on a terminal
        )
        for i, d in enumerate(bar):
            while pending and pending[0][0] <= i:
                writer.write(pending.pop(0)[1])
            writer.write(d)
            if not d.ok:
                bad.append(d)
            elif d.label == "fake":
                n_fake += 1
            else:
                n_real += 1
        for _, d in pending:
            writer.write(d)
    crops = "centre crop" if args.crops == "center" else f"grid of up to {args.max_crops} crops"
    summary = (
        f"{n_fake + n_real} image(s) scored: {n_fake} fake, {n_real} real (threshold {engine.threshold:.6g}, "
        f"{crops}); {len(bad)} unusable"
    )
    if skipped:
        summary += f"; {skipped} non-image file(s) in folders skipped"
    print(summary, file=sys.stderr)
    for d in bad[:MAX_LISTED]:
        print(f"  {d.name}: {d.error}", file=sys.stderr)
    if len(bad) > MAX_LISTED:
        print(f"  ... and {len(bad) - MAX_LISTED} more (every one is in the output)", file=sys.stderr)
    if args.fail_on_fake and n_fake:
        return EXIT_FAKE
    return EXIT_UNUSABLE if bad else EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="probability that images are AI-generated, with a detector folder",
        description="Score image files, folders (recursive) and glob patterns with a detector folder (made by "
        "`causalclip export`): per image the probability of fake and the label at the detector's threshold. "
        "Exit status: 0 all inputs scored; 1 some inputs unusable (each is reported, the rest are scored); "
        "2 usage or model error; 3 with --fail-on-fake when any image is labelled fake.",
    )
    p.add_argument("detector", metavar="DETECTOR", help="detector folder")
    p.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders or glob patterns ('imgs/**/*.png')")
    p.add_argument("--format", choices=["table", "csv", "jsonl"], default="table", help="output format")
    p.add_argument("-o", "--output", metavar="FILE", help="write the results here instead of stdout")
    add_engine_arguments(p)
    p.add_argument("--fail-on-fake", action="store_true", help="exit 3 if any image is labelled fake")
    p.add_argument("--workers", type=int, default=engine_default("workers"), help="decoding threads (%(default)s)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_detect)
