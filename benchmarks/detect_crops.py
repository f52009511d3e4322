"""Cost of multi-crop detection (``--crops grid``) relative to the paper's single centre crop, per image size.

Scores JPEGs of several sizes with a DetectionEngine in both modes and reports seconds per image, the number of
tiles, and the ratio. The detector is built like benchmarks/serve_load.py's (a probe head on random features);
the backbone defaults to the CLIP ViT-B/32 architecture with random weights (speed does not depend on weights).

    python benchmarks/detect_crops.py                                        # ViT-B/32, ~5 minutes on 2 cores
    python benchmarks/detect_crops.py --backbone clip-random:arch=vit-l-14 --images 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from causalclip.core.machine import cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import build_detector, make_images  # noqa: E402

SIZES = ((224, 224), (512, 384), (1024, 768), (2048, 1536))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="clip-random:arch=vit-b-32")
    p.add_argument("--images", type=int, default=4, help="images per size")
    p.add_argument("--max-crops", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions; the fastest counts")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    p.add_argument("--precision", default=None, help="default: as the detector's features (fp32 here)")
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args(argv)

    import torch

    from causalclip.detect.engine import DetectionEngine

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="detect-crops-") as tmp:
        tmp = Path(tmp)
        det = build_detector(tmp, args.backbone)
        engines = {
            "center": DetectionEngine(det, precision=args.precision),
            "grid": DetectionEngine(det, precision=args.precision, crops="grid", max_crops=args.max_crops),
        }
        rows = []
        for w, h in SIZES:
            paths = []
            for i, data in enumerate(make_images(args.images, (w, h))):
                paths.append(tmp / f"{w}x{h}-{i}.jpg")
                paths[-1].write_bytes(data)
            row = {"size": f"{w}x{h}"}
            for mode, eng in engines.items():
                list(eng.detect_paths(paths[:1]))  # warm-up
                walls, cpus = [], []
                for _ in range(args.repeats):  # the best of a few: other processes only ever add time
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = list(eng.detect_paths(paths))
                    walls.append((time.perf_counter() - t0) / len(paths))
                    cpus.append((time.process_time() - c0) / len(paths))
                row[f"{mode}_s_per_image"] = min(walls)
                row[f"{mode}_cpu_s_per_image"] = min(cpus)
                row[f"{mode}_crops"] = res[0].crops
            row["ratio"] = row["grid_s_per_image"] / row["center_s_per_image"]
            row["cpu_ratio"] = row["grid_cpu_s_per_image"] / row["center_cpu_s_per_image"]
            rows.append(row)
            print(
                f"{row['size']:>10}: centre {row['center_s_per_image']:.3f} s/image "
                f"({row['center_cpu_s_per_image']:.3f} CPU s), grid of {row['grid_crops']} crops "
                f"{row['grid_s_per_image']:.3f} s/image ({row['grid_cpu_s_per_image']:.3f} CPU s): "
                f"{row['ratio']:.1f}x wall, {row['cpu_ratio']:.1f}x CPU",
                flush=True,
            )
    report = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "backbone": args.backbone,
        "precision": engines["center"].precision,
        "max_crops": args.max_crops,
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
