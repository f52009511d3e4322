"""Why the demo's detectors invert across families: three statistics of the test tiles' forensic features.

    python benchmarks/demo_feature_stats.py --demo-dir runs/demo [--split test] [--out stats.md]

Reads the feature set ``features/all/<split>`` of a ``causalclip demo`` output folder (backbone
``spectrum:size=64+npr:size=64``, the demo's default) and prints, per generator (``real`` and each family), the
mean over its tiles of:

- **spectrum, corner rings**: the azimuthally averaged log-magnitude spectrum (mean-subtracted profile, DC
  dropped) averaged over its last four rings, the corners of the 2-D spectrum (rings 42-45 at size 64). Above the
  reals' value: more energy at the highest frequencies than real tiles ("too sharp"); below: less ("too smooth").
- **NPR level**: the mean over channels and neighbour offsets of log mean |r|, r the 2 x 2-cell neighbour residual
  in 0-255 units (the first statistic of each pair in the NPR block's 18 "level" numbers): texture energy.
- **NPR 2x2 periodicity**: the mean absolute deviation of each cell phase's statistics from their phase mean (the
  NPR block's 72 "periodic" numbers), which x2 up-sampling raises.

The offsets of the two blocks come from the feature set's recorded backbone (``meta.json``), so another size
works; another backbone is refused. The command line, UTC date, code revision of this script and of the
features, and the machine are printed with the table. docs/reports/demo-results.md reports a run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from causalclip import open_feature_set
from causalclip.core.machine import cpu_model
from causalclip.core.revision import code_revision

NPR_LEVEL = 18  # 3 channels x 3 offsets x 2 statistics (log mean |r|, log RMS r): the per-phase means
NPR_PERIODIC = 72  # 3 channels x 4 phases x 6: each phase's deviation from that mean


def blocks(meta: dict) -> dict[str, slice]:
    """Column slices of the spectrum profile, NPR level and NPR periodic blocks, from the recorded backbone."""
    record = meta.get("backbone") or {}
    parts = record.get("parts") if record.get("name") == "concat" else [record]
    out, start = {}, 0
    for part in parts or []:
        dim = int(part["dim"])
        if part.get("name") == "spectrum":
            out["spectrum"] = slice(start, start + dim)
        elif part.get("name") == "npr":
            if dim != NPR_LEVEL + NPR_PERIODIC:
                raise SystemExit(f"NPR block of dim {dim}: expected {NPR_LEVEL + NPR_PERIODIC}")
            out["npr_level"] = slice(start, start + NPR_LEVEL)
            out["npr_periodic"] = slice(start + NPR_LEVEL, start + dim)
        start += dim
    missing = {"spectrum", "npr_level"} - set(out)
    if missing:
        names = [p.get("name") for p in parts or []]
        raise SystemExit(f"the features were made with {names}; this needs a spectrum and an npr block")
    return out


def statistics(x: np.ndarray, cols: dict[str, slice]) -> dict[str, float]:
    """The three statistics of one group of rows ``x`` (n, dim), each a mean over the rows."""
    spectrum = x[:, cols["spectrum"]]
    level = x[:, cols["npr_level"]].reshape(len(x), 3, 6)  # channel, (offset, statistic) interleaved
    periodic = x[:, cols["npr_periodic"]]
    return {
        "spectrum_corners": float(spectrum[:, -4:].mean()),
        "npr_level": float(level[:, :, 0::2].mean()),  # log mean |r| of the three offsets
        "npr_periodicity": float(np.abs(periodic).mean()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo-dir", required=True, type=Path, help="output folder of `causalclip demo`")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"], help="tiles to describe (test)")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args(argv)
    folder = args.demo_dir / "features" / "all" / args.split
    if not (folder / "meta.json").is_file():
        raise SystemExit(f"{folder}: no feature set (is --demo-dir the output folder of `causalclip demo`?)")
    fs = open_feature_set(folder)
    cols = blocks(fs.meta)
    x = fs.take(np.arange(len(fs))).astype(np.float64)
    gens = fs.generators
    rows = {g: statistics(x[gens == g], cols) | {"n": int((gens == g).sum())} for g in dict.fromkeys(gens)}
    if "real" not in rows:
        raise SystemExit(f"{folder}: no generator 'real' among {sorted(rows)}")
    order = ["real", *sorted((g for g in rows if g != "real"), key=lambda g: -rows[g]["spectrum_corners"])]
    demo = (
        json.loads((args.demo_dir / "demo.json").read_text(encoding="utf-8"))
        if (args.demo_dir / "demo.json").is_file()
        else {}
    )
    spec = cols["spectrum"]
    lines = [
        f"Command: `python benchmarks/demo_feature_stats.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M')} UTC; script at "
        f"{code_revision()}; features {folder} made at {demo.get('code_revision', 'unknown')}; machine "
        f"{cpu_model()}, {os.cpu_count()} CPUs.",
        "",
        f"| {args.split} tiles | n | spectrum, rings {spec.stop - spec.start - 3}-{spec.stop - spec.start} (corners) "
        "| NPR level, log mean abs residual | NPR 2x2 periodicity |",
        "|---|---:|---:|---:|---:|",
    ]
    for g in order:
        r = rows[g]
        lines.append(
            f"| {g} | {r['n']} | {r['spectrum_corners']:+.2f} | {r['npr_level']:.2f} | {r['npr_periodicity']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
