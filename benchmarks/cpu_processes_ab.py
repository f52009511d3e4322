"""Paired comparison on this machine: one process with all the cores' threads vs one single-thread process per
core, running the bare ViT-L/14 bf16 forward pass (random weights, batch 8), in alternating time slots.

This VM's speed changes from minute to minute (docs/reports/extraction-speed.md), so comparing two separate runs says little.
Here every configuration is started, warmed up (and compiled) once, then the two take turns: slot 0 the
one-process configuration runs while the others sleep, slot 1 the per-core processes run, and so on. Each pair of
adjacent slots gives one ratio under nearly the same machine conditions.

    python benchmarks/cpu_processes_ab.py                 # compiled, 12 slots of 15 s (~7 min)
    python benchmarks/cpu_processes_ab.py --eager --slots 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time, torch
group, threads, t_start, slots, slot, gap, compile_ = sys.argv[1:8]
group, threads, slots = int(group), int(threads), int(slots)
t_start, slot, gap = float(t_start), float(slot), float(gap)
torch.set_num_threads(threads)
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
torch.manual_seed(0)
cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=224, patch_size=14, projection_dim=768)
m = CLIPVisionModelWithProjection._from_config(cfg, attn_implementation="eager").eval().to(torch.bfloat16)
x = torch.randn(8, 3, 224, 224, dtype=torch.bfloat16)
f = lambda x: m(pixel_values=x).image_embeds
if compile_ == "1":
    f = torch.compile(f, dynamic=False)
out = []
with torch.inference_mode():
    f(x); f(x)
    if time.time() > t_start:
        print(json.dumps({"late": True})); sys.exit(0)
    for i in range(group, slots, 2):
        s0 = t_start + i * (slot + gap)
        while time.time() < s0:
            time.sleep(0.02)
        t, n = time.perf_counter(), 0
        while time.time() < s0 + slot:
            f(x); n += 8
        out.append([i, n / (time.perf_counter() - t)])
print(json.dumps({"res": out}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slots", type=int, default=12, help="time slots, alternating (even number)")
    ap.add_argument("--slot", type=float, default=15.0, help="seconds per slot")
    ap.add_argument("--eager", action="store_true", help="no torch.compile")
    ap.add_argument("--warmup", type=float, default=180.0, help="seconds allowed for loading and compiling")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    start = time.time() + args.warmup
    common = [str(start), str(args.slots), str(args.slot), "4.0", "0" if args.eager else "1"]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, "0", str(cores), *common], stdout=subprocess.PIPE)]
    procs += [
        subprocess.Popen([sys.executable, "-c", CHILD, "1", "1", *common], stdout=subprocess.PIPE) for _ in range(cores)
    ]
    outs = [json.loads(p.communicate()[0].decode().strip().splitlines()[-1]) for p in procs]
    if any("late" in o for o in outs):
        print(f"warm-up took longer than --warmup {args.warmup:.0f} s; run again with a larger value")
        return 1
    one = [v for _, v in outs[0]["res"]]
    per = [[v for _, v in o["res"]] for o in outs[1:]]
    many = [sum(vals) for vals in zip(*per, strict=True)]
    mode = "eager" if args.eager else "torch.compile"
    print(f"ViT-L/14 bf16 forward, batch 8, {mode}, {cores} cores; images/s per {args.slot:.0f} s slot")
    print(f"{'pair':>4} {f'1 process x {cores} threads':>24} {f'{cores} processes x 1 thread':>24} {'ratio':>6}")
    for i, (a, b) in enumerate(zip(one, many, strict=True)):
        split = " + ".join(f"{p[i]:.2f}" for p in per)
        print(f"{i:>4} {a:>24.2f} {f'{b:.2f} ({split})':>24} {b / a:>6.2f}")
    ratios = [b / a for a, b in zip(one, many, strict=True)]
    print(
        f"median {statistics.median(one):.2f} vs {statistics.median(many):.2f} images/s; ratio median "
        f"{statistics.median(ratios):.2f}, min {min(ratios):.2f}, max {max(ratios):.2f}"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"one_process": one, "per_core": many, "ratios": ratios, "mode": mode}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
