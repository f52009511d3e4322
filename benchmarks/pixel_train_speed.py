"""Training speed of the networks trained on images (NPR, CNNSpot, FreDect, Fusing) on this machine (a benchmark, not a test).

What it measures, all in one run so that the figures compare with each other:

1. **FLOPs per image** of each network's training step (forward + backward), counted with
   ``torch.utils.flop_counter.FlopCounterMode`` on one batch: convolutions, matmuls (FreDect's DCT, in float64,
   included) and their backward. Convention: **2 FLOP per multiply-add**, the convention of the matmul ceiling
   below. Not counted: BatchNorm, ReLU, pooling, the loss, Adam's update (element-wise work, bound by memory
   bandwidth). Counted on the ``meta`` device where the network allows it (no arithmetic done), else on the CPU
   with one real batch (FreDect: autocast has no ``meta`` device type).
2. **The matmul ceiling**: GFLOP/s of a large square ``torch.matmul`` (``--matmul-n``), fp32 and bf16, measured
   once per repetition in the same interleaved schedule as the networks.
3. **The bare training step** (zero_grad, forward, BCE-with-logits loss, backward, Adam step; the loop's step
   without data loading) of every registered network, full size, at each ``--sizes`` side, fp32 and under bf16
   autocast, plus the narrow architectures the demo trains (``causalclip.demo.run.network_architecture``) at the
   demo's tile size. Each configuration is warmed up (``--warmup`` untimed steps on its first visit) and then
   timed for ``--steps`` steps in each of ``--reps`` repetitions, the configurations visited round-robin (the
   order rotated every repetition), because the two vCPUs of the development VM change speed from minute to
   minute: compare rows within one run, and read the spread. Each row: median images/s over the repetitions,
   min-max, achieved GFLOP/s (images/s x training FLOPs per image) and its share of the same-dtype ceiling
   (median over median), and the share of the machine's CPU time other processes used meanwhile.
4. **The end-to-end loop**: images/s of :func:`causalclip.pixel.loop.train_network` (the loop's own
   ``images_per_s`` in metrics.csv: training steps with data loading, validation excluded) on a small folder of
   JPEGs with ``train.workers`` = 0, 1 and 2, beside the bare step of the same network and batch (as in 3, timed
   again just before, so that the two are measured under the same load) and the data side alone (decode + the
   recipe's training transform, ``iterate_batches`` in this process), so one can see which of the two bounds the
   loop.

Batch sizes: the recipes train at 32 (NPR, FreDect-simple) or 64 (CNNSpot, FreDect); on a 2-core CPU a step of
64 ResNet-50 images at 224 x 224 takes a minute or more, so ``--batch-cap`` caps each size's batch (default 16 at
64 px, 8 at 224 px); the caps are printed in every row. The demo's networks train at batch 32 (the demo's own).

Usage::

    python benchmarks/pixel_train_speed.py                      # about 5-12 min on the 2-core development VM
    python benchmarks/pixel_train_speed.py --quick              # smoke run (seconds; figures not meaningful)
    python benchmarks/pixel_train_speed.py --json out.json      # also write every figure as JSON
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from causalclip.core.io import write_text
from causalclip.core.machine import cpu_model
from causalclip.demo.build import BUILD_SIZES
from causalclip.demo.run import DEFAULT_NETWORK_TRAIN, DEMO_NETWORKS, network_architecture
from causalclip.networks.registry import NETWORKS, Recipe, build_network, get_network_method
from causalclip.pixel.config import resolve_pixel_config
from causalclip.pixel.data import TrainTransform, batch_order, iterate_batches, open_image_set
from causalclip.pixel.loop import train_network, train_transform

# Issue 14's methods. Fusing and LGrad (registered later) are not timed by default: Fusing runs a ResNet-50 on the
# global view and six patches (seven passes per image), LGrad's forward needs the StyleGAN discriminator's file.
DEFAULT_NETWORKS = ("npr", "cnnspot", "fredect", "fredect-simple")
DTYPES = ("fp32", "bf16")
WORKERS = (0, 1, 2)
DEMO_TILE = BUILD_SIZES["full"].tile
DEMO_BATCH = int(DEFAULT_NETWORK_TRAIN["recipe.batch_size"])
RESNET50_FORWARD_GMAC = 4.1  # torchvision ResNet-50 at 224 x 224, the figure usually quoted (4.09 GMAC)


# ---------------------------------------------------------------------------------------------------------
# machine and load


def git_commit() -> str:
    """Short HEAD commit, with '+uncommitted changes in src/' when the package differs from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + (" + uncommitted changes in src/" if dirty.stdout.strip() else "")


def cpu_busy_seconds() -> float:
    """CPU-seconds all CPUs have spent busy since boot (/proc/stat; idle and iowait excluded)."""
    try:
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def snapshot() -> tuple[float, float, float]:
    """(wall clock, CPU-s the machine has been busy, CPU-s this process and its finished children have used)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return time.perf_counter(), cpu_busy_seconds(), own


def other_cpu_share(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Share of the machine's CPU capacity that *other* processes used between snapshots a and b."""
    wall = b[0] - a[0]
    other = (b[1] - a[1]) - (b[2] - a[2])
    return max(other, 0.0) / (wall * (os.cpu_count() or 1)) if wall > 0 else float("nan")


def wait_idle(max_wait_s: float, *, threshold: float = 0.10, window_s: float = 10.0) -> float:
    """Wait (at most max_wait_s) until other processes have used < threshold of the CPUs for window_s."""
    t0, quiet_since, prev = time.perf_counter(), None, snapshot()
    while time.perf_counter() - t0 < max_wait_s:
        time.sleep(1.0)
        cur = snapshot()
        if other_cpu_share(prev, cur) >= threshold:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = cur[0]
        elif cur[0] - quiet_since >= window_s:
            break
        prev = cur
    return time.perf_counter() - t0


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# ---------------------------------------------------------------------------------------------------------
# what is measured


@dataclasses.dataclass(frozen=True)
class Case:
    """One timed configuration: a network (full size or the demo's narrow one) at a size, batch and precision."""

    network: str
    arch: str  # "full" (the authors' architecture) or "demo" (the narrow one the demo trains)
    size: int
    batch: int
    dtype: str  # "fp32" or "bf16" (autocast)

    @property
    def model_key(self) -> tuple[str, str, int]:
        return (self.network, self.arch, self.size)

    def cells(self) -> list[str]:
        return [self.network, self.arch, str(self.size), str(self.batch), self.dtype]


# The demo's networks timed here. Not LGrad: its forward takes a gradient inside (torch.autograd.grad), which
# FlopCounterMode cannot count, and its training needs a GAN family's discriminator file from a built benchmark.
TIMED_DEMO_NETWORKS = tuple(n for n in DEMO_NETWORKS if n != "lgrad")


def network_config(network: str, arch: str, size: int) -> dict[str, Any]:
    """Config overrides of ``network``: full size (its input size set where the config has one), or the demo's."""
    if arch == "demo":
        return network_architecture(network, size)
    fields = {f.name for f in dataclasses.fields(get_network_method(network).config_cls)}
    return {"size": size} if "size" in fields else {}


def make_network(network: str, arch: str, size: int, *, seed: int = 0) -> nn.Module:
    """A freshly initialised network in training mode; FreDect's DCT statistics fitted on random images (the
    speed does not depend on their values)."""
    torch.manual_seed(seed)
    net = build_network(network, network_config(network, arch, size))
    if getattr(net, "needs_fit", False):
        net.fit([torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed))])
    return net.train()


def build_cases(args: argparse.Namespace) -> list[Case]:
    caps = dict(zip(args.sizes, args.batch_cap, strict=True))
    cases = [
        Case(name, "full", size, min(get_network_method(name).recipe.batch_size, caps[size]), dtype)
        for size in args.sizes
        for name in args.networks
        for dtype in DTYPES
    ]
    cases += [
        Case(name, "demo", args.demo_tile, args.demo_batch, dtype) for name in TIMED_DEMO_NETWORKS for dtype in DTYPES
    ]
    return cases


# ---------------------------------------------------------------------------------------------------------
# FLOPs


def count_flops(net: nn.Module, size: int, batch: int, device: str) -> tuple[float, float]:
    """(forward FLOPs, backward FLOPs) per image of one training-mode batch of ``batch`` size x size images
    through a copy of ``net`` on ``device`` ("meta": shapes only, no arithmetic)."""
    net = copy.deepcopy(net).to(device).train()
    x = torch.empty(batch, 3, size, size, device=device) if device == "meta" else torch.randn(batch, 3, size, size)
    y = torch.zeros(batch, device=device)
    with FlopCounterMode(display=False) as fwd:
        out = net(x)
    with FlopCounterMode(display=False) as bwd:
        F.binary_cross_entropy_with_logits(out.float(), y).backward()
    return fwd.get_total_flops() / batch, bwd.get_total_flops() / batch


def training_flops(net: nn.Module, size: int) -> dict[str, Any]:
    """Forward and forward + backward FLOPs per image (2 per multiply-add) of ``net`` at size x size.

    Counted on the meta device when the network runs there; else (FreDect: autocast knows no meta device) on the
    CPU with one real batch, of 1 image from 64 px up, of 2 below (BatchNorm in training mode needs two values per
    channel, and the last stage's maps of a 32 px input are 1 x 1)."""
    try:
        fwd, bwd = count_flops(net, size, 2, "meta")
        where = "meta"
    except (RuntimeError, NotImplementedError):
        fwd, bwd = count_flops(net, size, 1 if size >= 64 else 2, "cpu")
        where = "cpu"
    return {"forward": fwd, "train": fwd + bwd, "counted_on": where}


def conv_linear_macs(net: nn.Module, size: int) -> float:
    """Multiply-adds per image of every Conv2d and Linear in a forward pass, from their output shapes (forward
    hooks on the meta device): a count made without FlopCounterMode, for checking it."""
    total = 0.0

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * k
        else:
            total += output.numel() * module.in_features

    net = copy.deepcopy(net).to("meta").eval()
    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        net(torch.empty(1, 3, size, size, device="meta"))
    for h in handles:
        h.remove()
    return total


# ---------------------------------------------------------------------------------------------------------
# timing


def matmul_gflops(dtype: torch.dtype, n: int, seconds: float) -> float:
    """GFLOP/s (2 per multiply-add) of an n x n @ n x n torch.matmul, repeated for at least ``seconds``."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    torch.matmul(a, b)  # warm-up
    reps, t0 = 0, time.perf_counter()
    while reps < 2 or time.perf_counter() - t0 < seconds:
        torch.matmul(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


class Trainer:
    """A network, its Adam optimiser (the recipe's lr and betas) and one fixed batch: the loop's step, timed."""

    def __init__(self, case: Case, *, seed: int = 0):
        recipe: Recipe = get_network_method(case.network).recipe
        self.net = make_network(case.network, case.arch, case.size, seed=seed)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=recipe.lr, betas=tuple(recipe.betas))
        g = torch.Generator().manual_seed(seed + 1)
        self.x = torch.randn(case.batch, 3, case.size, case.size, generator=g)
        self.y = (torch.arange(case.batch) % 2).float()
        self.batch = case.batch

    def step(self, dtype: str) -> float:
        """Seconds of one training step (what train_network does per batch, minus data loading)."""
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = F.binary_cross_entropy_with_logits(self.net(self.x).float(), self.y)
        loss.backward()
        self.opt.step()
        elapsed = time.perf_counter() - t0
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} (the timing of non-finite values means nothing)")
        return elapsed


def time_steps(args: argparse.Namespace, cases: list[Case]) -> dict[str, Any]:
    """Round-robin over the cases, ``args.reps`` times (order rotated each time), with the matmul ceilings at
    the start of every repetition. Returns per-case visits and per-repetition ceilings."""
    trainers: dict[tuple[str, str, int], Trainer] = {}
    visits: dict[Case, list[dict[str, Any]]] = {c: [] for c in cases}
    ceilings: dict[str, list[float]] = {d: [] for d in DTYPES}
    loads: list[str] = []
    for rep in range(args.reps):
        if args.wait_idle > 0:
            waited = wait_idle(args.wait_idle)
            if waited > 2:
                print(f"    (waited {waited:.0f} s for an idle machine)", flush=True)
        loads.append(load_average())
        for d in DTYPES:
            dt = torch.float32 if d == "fp32" else torch.bfloat16
            ceilings[d].append(matmul_gflops(dt, args.matmul_n, args.matmul_seconds))
        shift = (rep * len(cases)) // max(args.reps, 1)
        t_rep = time.perf_counter()
        for case in cases[shift:] + cases[:shift]:
            trainer = trainers.get(case.model_key)
            if trainer is None:
                trainer = trainers[case.model_key] = Trainer(case, seed=args.seed)
            for _ in range(args.warmup if not visits[case] else 0):
                trainer.step(case.dtype)
            a = snapshot()
            times = [trainer.step(case.dtype) for _ in range(args.steps)]
            b = snapshot()
            visits[case].append(
                {
                    "rep": rep,
                    "step_s": times,
                    "images_per_s": case.batch * len(times) / sum(times),
                    "other_cpu": other_cpu_share(a, b),
                }
            )
        print(
            f"    repetition {rep + 1}/{args.reps}: {time.perf_counter() - t_rep:.0f} s; matmul GFLOP/s fp32 "
            f"{ceilings['fp32'][-1]:.0f}, bf16 {ceilings['bf16'][-1]:.0f}; load average {loads[-1]}",
            flush=True,
        )
    return {"visits": visits, "ceilings": ceilings, "loads": loads}


# ---------------------------------------------------------------------------------------------------------
# end to end: train_network on JPEGs


@dataclasses.dataclass(frozen=True)
class LoopCase:
    """One end-to-end configuration: a network trained by train_network on a folder of JPEGs."""

    network: str
    arch: str
    size: int  # training crop
    batch: int
    image_px: int  # side of the JPEGs
    per_class: int  # training images per class
    val_per_class: int
    epochs: int

    def step_case(self) -> Case:
        return Case(self.network, self.arch, self.size, self.batch, "fp32")


def loop_cases(args: argparse.Namespace, cases: list[Case]) -> list[LoopCase]:
    """The demo's three networks at its tile size (64 px tiles: the case where data loading may matter) and the
    full CNNSpot at the largest size (the recipe with the most expensive augmentation: blur + JPEG re-encoding)."""
    q = args.quick
    out = [
        LoopCase(
            name,
            "demo",
            args.demo_tile,
            args.demo_batch,
            args.demo_tile,
            4 if q else 64,  # 128 training images: 4 steps of the demo's batch 32 per epoch
            2 if q else 16,
            1 if q else 2,  # the last epoch is reported: the first one builds oneDNN's kernels for new shapes
        )
        for name in TIMED_DEMO_NETWORKS
    ]
    big = max(args.sizes)
    full = next((c for c in cases if c.network == "cnnspot" and c.arch == "full" and c.size == big), None)
    if full is None:
        return out
    image_px = get_network_method("cnnspot").recipe.train_resize or big
    # One epoch of 2 steps: a step of 8 images at 224 px takes 4-10 s on 2 vCPUs; the step phase already built
    # the kernels of these shapes in this process.
    out.append(LoopCase("cnnspot", "full", big, full.batch, max(image_px, big), full.batch, 2, 1))
    return out


def make_jpegs(folder: Path, per_class: int, px: int, *, seed: int) -> Path:
    """folder/{real,fake}/*.jpg: photo-like smooth noise (bicubic up-sampled from 1/8 size), JPEG quality 95."""
    rng = np.random.default_rng(seed)
    for label in ("real", "fake"):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            small = rng.integers(0, 256, (max(px // 8, 2), max(px // 8, 2), 3), dtype=np.uint8)
            Image.fromarray(small).resize((px, px), Image.BICUBIC).save(folder / label / f"{i:04d}.jpg", quality=95)
    return folder


def loop_overrides(case: LoopCase, workers: int, seed: int) -> dict[str, Any]:
    """The run config of a LoopCase: the demo's network settings for the demo's networks, the recipe otherwise."""
    base: dict[str, Any] = {}
    if case.arch == "demo":
        base = {
            **DEFAULT_NETWORK_TRAIN,
            "recipe.train_crop": case.size,
            "recipe.test_crop": case.size,
            **{f"{case.network}.{k}": v for k, v in network_architecture(case.network, case.size).items()},
        }
    return {
        **base,
        "recipe.epochs": case.epochs,
        "recipe.batch_size": case.batch,
        "train.workers": workers,
        "train.patience": 1000,
        "train.min_epochs": 1,
        "train.seed": seed,
        "train.num_threads": 0,
        "train.amp": "off",
    }


def recipe_transform(r: Recipe) -> TrainTransform:
    """The training transform train_network builds from a recipe (resize, blur/JPEG, crop, flip, normalise)."""
    return train_transform(r)


def data_rate(case: LoopCase, train_root: Path, seed: int) -> float:
    """images/s of decoding + the training transform + batching alone (one process, as train.workers=0)."""
    images = open_image_set(train_root)
    rc = resolve_pixel_config(case.network, overrides=loop_overrides(case, 0, seed))
    batches = batch_order(len(images), batch_size=case.batch, seed=seed, epoch=1)
    t0 = time.perf_counter()
    n = sum(len(b.index) for b in iterate_batches(images, batches, recipe_transform(rc.recipe), seed=seed, epoch=1))
    return n / (time.perf_counter() - t0)


def run_loops(args: argparse.Namespace, cases: list[LoopCase], workdir: Path) -> dict[LoopCase, dict[str, Any]]:
    """For each case: the data-side rate and train_network's images/s with 0, 1, 2 workers, interleaved."""
    roots = {}
    for i, c in enumerate(cases):
        key = (c.image_px, c.per_class, c.val_per_class)
        if key not in roots:
            base = workdir / f"jpeg-{c.image_px}px-{c.per_class}"
            roots[key] = (
                make_jpegs(base / "train", c.per_class, c.image_px, seed=10 + i),
                make_jpegs(base / "val", c.val_per_class, c.image_px, seed=100 + i),
            )
    out: dict[LoopCase, dict[str, Any]] = {c: {"bare": [], "data": [], "runs": {w: [] for w in WORKERS}} for c in cases}
    trainers: dict[LoopCase, Trainer] = {}
    logging.getLogger("causalclip").setLevel(logging.WARNING)
    for rep in range(args.loop_reps):
        for c in cases:
            if c.arch == "full" and rep >= args.loop_reps_full:
                continue
            train_root, val_root = roots[(c.image_px, c.per_class, c.val_per_class)]
            # The bare step again, just before the loop runs it: the load on a shared machine changes by the minute.
            if c not in trainers:
                trainers[c] = Trainer(c.step_case(), seed=args.seed)
                for _ in range(args.warmup):
                    trainers[c].step("fp32")
            times = [trainers[c].step("fp32") for _ in range(args.steps)]
            out[c]["bare"].append(c.batch * len(times) / sum(times))
            out[c]["data"].append(data_rate(c, train_root, args.seed))
            for w in WORKERS:
                rc = resolve_pixel_config(c.network, overrides=loop_overrides(c, w, args.seed))
                run_dir = workdir / "runs" / f"{c.network}-{c.arch}-{c.size}-w{w}"
                a = snapshot()
                res = train_network(
                    train_set=open_image_set(train_root),
                    val_set=open_image_set(val_root),
                    out=run_dir,
                    run_config=rc,
                    progress=False,
                    overwrite=True,
                )
                b = snapshot()
                shutil.rmtree(run_dir, ignore_errors=True)
                out[c]["runs"][w].append(
                    {
                        "images_per_s": [float(v) for v in res.history["images_per_s"]],
                        "train_seconds": [float(v) for v in res.history["train_seconds"]],
                        "wall_s": b[0] - a[0],
                        "other_cpu": other_cpu_share(a, b),
                    }
                )
        print(f"    end-to-end repetition {rep + 1}/{args.loop_reps} done; load average {load_average()}", flush=True)
    return out


# ---------------------------------------------------------------------------------------------------------
# reporting


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _num(v: float, digits: int | None = None) -> str:
    if not np.isfinite(v):
        return "n/a"
    if digits is None:
        digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2
    return f"{v:,.{digits}f}"


def _spread(values: Sequence[float]) -> str:
    return f"{_num(min(values))}-{_num(max(values))}" if len(values) > 1 else "1 rep"


def summarise(args, cases, flops, timing, loops) -> dict[str, Any]:
    ceil = {d: float(np.median(v)) for d, v in timing["ceilings"].items()}
    steps = []
    for c in cases:
        rates = [v["images_per_s"] for v in timing["visits"][c]]
        med = float(np.median(rates))
        train_flops = flops[c.model_key]["train"]
        gflops = med * train_flops / 1e9
        first = [v["step_s"][0] for v in timing["visits"][c]]
        later = [t for v in timing["visits"][c] for t in v["step_s"][1:]]
        steps.append(
            {
                **dataclasses.asdict(c),
                "images_per_s": med,
                "images_per_s_reps": rates,
                "train_gflop_per_image": train_flops / 1e9,
                "achieved_gflops": gflops,
                "fraction_of_ceiling": gflops / ceil[c.dtype],
                "ceiling_dtype": c.dtype,
                "other_cpu": [v["other_cpu"] for v in timing["visits"][c]],
                "first_step_s_median": float(np.median(first)),
                "later_steps_s_median": float(np.median(later)) if later else None,
            }
        )
    loop_rows = []
    for lc, res in (loops or {}).items():
        step = next(
            s
            for s in steps
            if Case(**{k: s[k] for k in ("network", "arch", "size", "batch", "dtype")}) == lc.step_case()
        )
        row = {
            **dataclasses.asdict(lc),
            "bare_step_images_per_s": float(np.median(res["bare"])),
            "bare_step_reps": res["bare"],
            "bare_step_images_per_s_step_table": step["images_per_s"],
            "data_images_per_s": float(np.median(res["data"])),
            "data_reps": res["data"],
            "workers": {},
        }
        for w, runs in res["runs"].items():
            last = [r["images_per_s"][-1] for r in runs]
            row["workers"][w] = {
                "images_per_s": float(np.median(last)),
                "reps": last,
                "first_epoch": [r["images_per_s"][0] for r in runs],
                "wall_s": [r["wall_s"] for r in runs],
                "other_cpu": [r["other_cpu"] for r in runs],
            }
        loop_rows.append(row)
    return {
        "ceilings_gflops": timing["ceilings"],
        "ceiling_median_gflops": ceil,
        "steps": steps,
        "loops": loop_rows,
        "loads_at_reps": timing["loads"],
        "flops": [{"network": k[0], "arch": k[1], "size": k[2], **v} for k, v in flops.items()],
    }


def print_report(args, info, summary, resnet_check) -> None:
    p = print
    p("")
    p("== FLOPs per image (FlopCounterMode: convolutions + matmuls and their backward; 2 FLOP per multiply-add) ==")
    p(_row(["network", "arch", "size", "forward GFLOP", "training step GFLOP (fwd + bwd)", "train / forward"]))
    p(_row(["---"] * 6))
    for f in summary["flops"]:
        p(
            _row(
                [
                    f["network"],
                    f["arch"],
                    f["size"],
                    _num(f["forward"] / 1e9, 3),
                    _num(f["train"] / 1e9, 3),
                    _num(f["train"] / f["forward"], 2),
                ]
            )
        )
    fwd, train, hooks = resnet_check
    p(
        f"    ResNet-50 (torchvision layout, CNNSpot's network) at 224: forward {fwd / 1e9:.3f} GFLOP = "
        f"{fwd / 2e9:.3f} G multiply-adds (known: {RESNET50_FORWARD_GMAC} G; conv + linear from output shapes: "
        f"{hooks / 1e9:.3f} G); training step {train / 1e9:.2f} GFLOP = {train / 2e9:.2f} G multiply-adds per "
        f"image (the issue's 'about 12 GFLOP' is this count of multiply-adds)"
    )
    p("")
    p(
        f"== Matmul ceiling: {args.matmul_n} x {args.matmul_n} @ {args.matmul_n} x {args.matmul_n} torch.matmul, "
        f"{info['torch_threads']} threads, once per repetition =="
    )
    p(_row(["precision", "GFLOP/s median", "min-max", "per repetition"]))
    p(_row(["---"] * 4))
    for d in DTYPES:
        v = summary["ceilings_gflops"][d]
        p(_row([f"matmul {d}", _num(float(np.median(v))), _spread(v), ", ".join(_num(x) for x in v)]))
    p("")
    p(
        f"== Bare training step (forward + backward + Adam), images/s: median over {args.reps} interleaved "
        f"repetition(s) of {args.steps} step(s) each, after {args.warmup} warm-up step(s) =="
    )
    p(
        _row(
            [
                "network",
                "arch",
                "size",
                "batch",
                "dtype",
                "images/s",
                "min-max",
                "ms/image",
                "GFLOP/image",
                "GFLOP/s",
                "% of ceiling",
                "other CPU %",
            ]
        )
    )
    p(_row(["---"] * 12))
    for s in summary["steps"]:
        cells = [s["network"], s["arch"], s["size"], s["batch"], s["dtype"]]
        p(
            _row(
                [
                    *cells,
                    _num(s["images_per_s"]),
                    _spread(s["images_per_s_reps"]),
                    _num(1000 / s["images_per_s"]),
                    _num(s["train_gflop_per_image"], 3),
                    _num(s["achieved_gflops"]),
                    _num(100 * s["fraction_of_ceiling"], 1),
                    "/".join(f"{100 * o:.0f}" for o in s["other_cpu"]),
                ]
            )
        )
    ratios = [
        s["first_step_s_median"] / s["later_steps_s_median"] for s in summary["steps"] if s["later_steps_s_median"]
    ]
    if ratios:
        p(
            f"    first timed step of a visit / later steps (median over rows): {np.median(ratios):.2f} "
            f"(range {min(ratios):.2f}-{max(ratios):.2f}); > 1 would mean switching configurations costs time"
        )
    p("")
    p("== bf16 autocast vs fp32 (ratio of median images/s; > 1: bf16 is faster) ==")
    p(_row(["network", "arch", "size", "batch", "bf16 / fp32"]))
    p(_row(["---"] * 5))
    by = {(s["network"], s["arch"], s["size"], s["dtype"]): s for s in summary["steps"]}
    for (net, arch, size, dtype), s in by.items():
        if dtype == "fp32" and (net, arch, size, "bf16") in by:
            p(
                _row(
                    [
                        net,
                        arch,
                        size,
                        s["batch"],
                        _num(by[(net, arch, size, "bf16")]["images_per_s"] / s["images_per_s"], 2),
                    ]
                )
            )
    if summary["loops"]:
        p("")
        p(
            "== End to end: train_network on JPEGs (metrics.csv images_per_s of the last epoch; fp32) vs its parts "
            "measured just before it (median (min-max) over repetitions) =="
        )
        p(
            _row(
                [
                    "network",
                    "arch",
                    "size",
                    "batch",
                    "JPEG px",
                    "train images",
                    "bare step images/s",
                    "data only images/s",
                    "workers",
                    "loop images/s",
                    "loop / bare step",
                    "other CPU %",
                ]
            )
        )
        p(_row(["---"] * 12))
        for r in summary["loops"]:
            for w, v in r["workers"].items():
                p(
                    _row(
                        [
                            r["network"],
                            r["arch"],
                            r["size"],
                            r["batch"],
                            r["image_px"],
                            2 * r["per_class"],
                            f"{_num(r['bare_step_images_per_s'])} ({_spread(r['bare_step_reps'])})",
                            f"{_num(r['data_images_per_s'])} ({_spread(r['data_reps'])})",
                            w,
                            f"{_num(v['images_per_s'])} ({_spread(v['reps'])})",
                            _num(v["images_per_s"] / r["bare_step_images_per_s"], 2),
                            "/".join(f"{100 * o:.0f}" for o in v["other_cpu"]),
                        ]
                    )
                )
        p(
            "    serial model (workers 0): 1 / (1 / bare step + 1 / data only) = "
            + ", ".join(
                f"{r['network']}-{r['arch']}-{r['size']}: "
                f"{_num(1 / (1 / r['bare_step_images_per_s'] + 1 / r['data_images_per_s']))}"
                for r in summary["loops"]
            )
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--networks",
        nargs="+",
        default=list(DEFAULT_NETWORKS),
        choices=sorted(NETWORKS),
        help=f"full-size networks to time (default: {' '.join(DEFAULT_NETWORKS)})",
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="input sides of the full networks")
    ap.add_argument(
        "--batch-cap",
        type=int,
        nargs="+",
        default=[16, 8],
        help="largest batch at each --sizes side (the recipe's batch when smaller; default 16 8)",
    )
    ap.add_argument("--demo-tile", type=int, default=DEMO_TILE, help=f"the demo's tile side (default {DEMO_TILE})")
    ap.add_argument("--demo-batch", type=int, default=DEMO_BATCH, help=f"the demo's batch (default {DEMO_BATCH})")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of every configuration (default 3)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration and repetition (default 2)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps on a configuration's first visit (default 1)")
    ap.add_argument("--matmul-n", type=int, default=2048, help="side of the square matmul of the ceiling")
    ap.add_argument("--matmul-seconds", type=float, default=2.0, help="seconds per ceiling measurement")
    ap.add_argument("--loop-reps", type=int, default=2, help="repetitions of the end-to-end runs (default 2)")
    ap.add_argument(
        "--loop-reps-full",
        type=int,
        default=1,
        help="of which the full-size network's end-to-end runs (slow on a CPU) do this many (default 1)",
    )
    ap.add_argument("--no-loop", action="store_true", help="skip the end-to-end runs")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each repetition, wait up to SECONDS for 10 s of idle machine (default 0)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default 0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: batch 2, one repetition of one step, tiny JPEG sets (every row, no real figures)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch_cap = [2] * len(args.sizes)
        args.demo_batch, args.reps, args.steps, args.warmup = 2, 1, 1, 0
        args.matmul_n, args.matmul_seconds, args.loop_reps, args.loop_reps_full = 1024, 0.1, 1, 1
    if len(args.batch_cap) != len(args.sizes):
        ap.error(f"--batch-cap needs one value per --sizes value ({len(args.sizes)}), got {len(args.batch_cap)}")
    if min(args.batch_cap + [args.demo_batch]) < 2 or min(args.reps, args.steps) < 1:
        ap.error("batches must be >= 2 (BatchNorm) and --reps, --steps >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    info = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "command": "python benchmarks/pixel_train_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "load_average_start": load_average(),
    }
    print("== Machine ==")
    print(f"    {info['date_utc']} UTC; commit {info['commit']}")
    print(
        f"    CPU: {info['cpu']}, {info['cores']} cores; torch {info['torch']} ({info['torch_threads']} threads, "
        f"CPU capability {info['cpu_capability']}), Python {info['python']}"
    )
    print(f"    command: {info['command'].rstrip()}")
    print(f"    load average at start (1, 5, 15 min): {info['load_average_start']}", flush=True)

    cases = build_cases(args)
    flops: dict[tuple[str, str, int], dict[str, Any]] = {}
    for c in cases:
        if c.model_key not in flops:
            flops[c.model_key] = training_flops(make_network(*c.model_key, seed=args.seed), c.size)
    resnet = make_network("cnnspot", "full", 224, seed=args.seed)
    r50 = training_flops(resnet, 224)
    resnet_check = (r50["forward"], r50["train"], conv_linear_macs(resnet, 224))
    del resnet
    print(
        f"    FLOPs counted ({time.perf_counter() - t_start:.0f} s); timing {len(cases)} configurations x "
        f"{args.reps} repetition(s) ...",
        flush=True,
    )
    timing = time_steps(args, cases)
    loops = None
    workdir = Path(tempfile.mkdtemp(prefix="causalclip-pixel-speed-"))
    try:
        if not args.no_loop:
            print("    end-to-end runs (train_network on JPEGs, workers 0/1/2) ...", flush=True)
            loops = run_loops(args, loop_cases(args, cases), workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarise(args, cases, flops, timing, loops)
    info["load_average_end"] = load_average()
    info["wall_s"] = time.perf_counter() - t_start
    print_report(args, info, summary, resnet_check)
    print("")
    print(f"    load average at end (1, 5, 15 min): {info['load_average_end']}; whole run {info['wall_s']:.0f} s")
    if args.json is not None:
        blob = {
            "machine": info,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "resnet50_224": {
                "forward_flops": resnet_check[0],
                "train_flops": resnet_check[1],
                "forward_macs_from_shapes": resnet_check[2],
            },
            **summary,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps(blob, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
