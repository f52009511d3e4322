"""``causalclip experiment``, ``causalclip ablation`` and ``causalclip robustness``: the paper's Tables 1-5 and
Fig. 4 from dataset folders in one command each (causalclip.paper.experiment does the work)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ..heads.causalclip import ABLATIONS
from ..heads.registry import HEADS
from ..networks.registry import NETWORKS
from ..paper.experiment import ExtractOptions
from ..paper.presets import DATASET_ROOTS, DEFAULT_VAL_FRACTION, PRESETS, resolve_preset
from .extract import processes_arg

# Every ExtractOptions field can come from the command line (same name), else from a record, else its default.
_EXTRACT_FIELDS = tuple(f.name for f in dataclasses.fields(ExtractOptions))


def _add_data_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("data (see docs/guides/experiments.md for the folder trees)")
    g.add_argument(
        "--preset", choices=sorted(PRESETS), required=required, help="sd14 or progan (the paper's protocols)"
    )
    for key, text in DATASET_ROOTS.items():
        g.add_argument("--" + key.replace("_", "-"), metavar="DIR", help=text)
    g.add_argument("--allow-missing", action="store_true", help="run on the test sets present, list the others")
    g.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help=f"held-out validation fraction of the training split where no validation set exists "
        f"(default {DEFAULT_VAL_FRACTION})",
    )
    g.add_argument("--val-seed", type=int, metavar="S", help="seed of that held-out split (default 0)")


def _add_extract_args(p: argparse.ArgumentParser) -> None:
    d = ExtractOptions()  # the one definition of these defaults (its run-time ones come from ExtractConfig)
    g = p.add_argument_group("features (cached; defaults as in `causalclip extract`)")
    g.add_argument("--backbone", metavar="ID_OR_PATH", help=f"CLIP hub id or local folder (default {d.backbone})")
    g.add_argument("--feature", choices=["image_embeds", "pooled"], help=f"default {d.feature}")
    g.add_argument("--normalize", action="store_true", default=None, help="L2-normalise the features")
    g.add_argument(
        "--preprocess", choices=["crop", "clip"], help=f"crop: centre crop, no resize (default {d.preprocess})"
    )
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help=f"default {d.precision}")
    g.add_argument("--dtype", choices=["float16", "float32"], help=f"storage dtype (default {d.dtype})")
    g.add_argument("--max-per-class", type=int, metavar="N", help="at most N images per class in every set (seeded)")
    g.add_argument(
        "--data-seed", type=int, metavar="S", help=f"seed of --max-per-class sampling (default {d.data_seed})"
    )
    g.add_argument(
        "--extract-batch-size",
        type=int,
        dest="batch_size",
        metavar="B",
        help=f"default {d.batch_size} (CPU); 256 on a GPU",
    )
    g.add_argument("--shard-size", type=int, metavar="N", help=f"default {d.shard_size}")
    g.add_argument(
        "--workers", type=int, metavar="W", help=f"image decoding processes (default {d.workers}; 0 = in-process)"
    )
    g.add_argument(
        "--processes",
        type=processes_arg,
        metavar="N|auto",
        help=f"CPU backbone processes (default {d.processes}; see `causalclip extract --help`)",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"torch.compile the backbone (default {d.compile}: see `causalclip extract --help`)",
    )
    g.add_argument("--cache", metavar="DIR", help="feature cache folder (default OUT/features); share it between runs")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="S", help="training seeds (default 0)")
    g.add_argument("--config", metavar="FILE", help="JSON or TOML config: [train] and per-head sections")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.epochs=20 or tau=0.5")
    g.add_argument("--epochs", type=int, metavar="N", help="maximum epochs (early stopping on validation)")
    g.add_argument("--retrain", action="store_true", help="replace runs whose configuration changed")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (runs, tables); reused when run again")
    p.add_argument("--device", help="cpu (default), cuda, ...: extraction, training and evaluation")
    p.add_argument(
        "--eval-max-per-class", type=int, metavar="N", help="evaluation: balanced sampling capped at N per class"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser(
        "experiment",
        help="reproduce Tables 1-4: extract -> train -> evaluate under a preset",
        description="Extract features (cached), train each head for each seed, evaluate on the preset's test sets "
        "and print Tables 1-4 (AP and ACC per test set and the mean) beside the paper's rows. Running it again "
        "reuses cached features and trained runs.",
    )
    _add_data_args(x, required=True)
    _add_extract_args(x)
    _add_train_args(x)
    x.add_argument(
        "--heads",
        nargs="*",
        choices=sorted(HEADS),
        default=["causalclip", "univfd", "vib"],
        help="heads on the cached features (default causalclip univfd vib; --heads with no name: none)",
    )
    x.add_argument(
        "--networks",
        nargs="+",
        choices=sorted(NETWORKS),
        default=[],
        help="also train these networks on the same images with their authors' recipes (e.g. npr cnnspot fredect); "
        "their rows join the tables",
    )
    x.add_argument(
        "--network-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override of the networks' recipe or loop, e.g. recipe.epochs=5, train.workers=4, "
        "train.imagenet_weights=resnet50.pth",
    )
    x.add_argument("--all-paper-rows", action="store_true", help="show all of the paper's methods, not just ours")
    x.add_argument(
        "--protocol",
        choices=["standard", "leave-one-out"],
        default="standard",
        help="leave-one-out: also train each head without each generator of the training set in turn (or each "
        "class folder: CNNDetection's ProGAN training set has 20), select on the left-out one's validation images, "
        "test on every test set; tables of both protocols (default standard)",
    )
    x.add_argument(
        "--leave-out",
        nargs="+",
        metavar="GROUP",
        help="leave-one-out: leave out only these generators/classes in turn (default every one)",
    )
    _add_common(x)
    x.set_defaults(func=_cmd_experiment)

    a = sub.add_parser(
        "ablation",
        help="reproduce Table 5: the four module configurations, OP and GP",
        description="Train the causalclip head with each of the four module configurations of Table 5 (none, "
        "factorization, masking, full) and report OP (mean over all test sets) and GP (mean over the eight "
        "CNNDetection sets) beside the paper's Table 5.",
    )
    _add_data_args(a, required=True)
    _add_extract_args(a)
    _add_train_args(a)
    a.add_argument("--ablations", nargs="+", choices=list(ABLATIONS), default=list(ABLATIONS))
    _add_common(a)
    a.set_defaults(func=_cmd_ablation)

    r = sub.add_parser(
        "robustness",
        help="reproduce Fig. 4: evaluate runs under JPEG and blur",
        description="Evaluate trained runs on the preset's test sets with every JPEG quality and blur sigma "
        "applied to each test image (perturbed features are cached), write long and per-level tables and plot "
        "them. Runs come from --experiment DIR (an `experiment` or `ablation` output) and/or --runs.",
    )
    _add_data_args(r, required=False)
    _add_extract_args(r)
    r.add_argument("--experiment", metavar="DIR", help="an experiment/ablation output folder: its runs, preset, roots")
    r.add_argument("--runs", nargs="+", metavar="[NAME=]RUN", help="run folders (NAME: the method label)")
    r.add_argument("--jpeg", type=int, nargs="*", default=[100, 90, 80, 70, 60, 50, 40, 30], metavar="Q")
    r.add_argument("--blur", type=float, nargs="*", default=[0, 1, 2, 3, 4], metavar="SIGMA")
    r.add_argument("--no-plot", action="store_true", help="tables only (the plot needs matplotlib)")
    _add_common(r)
    r.set_defaults(func=_cmd_robustness)


# ---------------------------------------------------------------------------------------------------------


def _roots(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    roots = dict(base or {})
    for key in DATASET_ROOTS:
        if getattr(args, key) is not None:
            roots[key] = getattr(args, key)
    return roots


def _resolve(args: argparse.Namespace, info: dict[str, Any] | None = None):
    info = info or {}
    preset = args.preset or info.get("preset")
    if preset is None:
        raise ValueError("--preset is required (or --experiment DIR, whose preset is used)")
    roots = _roots(args, info.get("roots"))
    resolved = resolve_preset(
        preset,
        roots,
        val_fraction=_first(args.val_fraction, info.get("val_fraction"), DEFAULT_VAL_FRACTION),
        val_seed=_first(args.val_seed, info.get("val_seed"), 0),
        allow_missing=args.allow_missing or bool(info.get("missing")),
    )
    return resolved, roots


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _cache(args: argparse.Namespace, base: dict[str, Any] | None = None, cache_dir: str | None = None):
    from ..paper.experiment import FeatureCache

    base = base or {}
    opts = {k: getattr(args, k, None) if getattr(args, k, None) is not None else base.get(k) for k in _EXTRACT_FIELDS}
    folder = args.cache or cache_dir or str(Path(args.out) / "features")
    return FeatureCache(
        folder, ExtractOptions(**{k: v for k, v in opts.items() if v is not None}), progress=not args.quiet
    )


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.set or [])
    if args.epochs is not None:
        out.append(f"train.epochs={json.dumps(args.epochs)}")
    return out


def _print_summary(lines: list[str]) -> None:
    print()
    for line in lines:
        print(line)


def _cmd_experiment(args: argparse.Namespace) -> int:
    from ..paper.experiment import run_experiment, summary_lines

    resolved, roots = _resolve(args)
    print(resolved.describe(), file=sys.stderr)
    res = run_experiment(
        resolved,
        args.out,
        cache=_cache(args),
        heads=args.heads,
        seeds=args.seeds,
        config_file=args.config,
        overrides=_overrides(args),
        retrain=args.retrain,
        eval_max_per_class=args.eval_max_per_class,
        all_paper_rows=args.all_paper_rows,
        roots=roots,
        progress=not args.quiet,
        protocol=args.protocol,
        leave_out=args.leave_out,
        networks=args.networks,
        network_overrides=args.network_set,
    )
    for o in [*res.outcomes, *(res.loo.outcomes if res.loo else [])]:
        print(f"{o.spec.name}: {o.status} -> {o.run_dir}", file=sys.stderr)
    names = [f"results_{metric}.md" for metric in res.tables]
    if res.loo is not None:
        names += [f"results_loo_{metric}.md" for metric in res.loo.tables] + ["results_loo_seeds.md"]
    for name in names:
        print()
        print(Path(args.out, name).read_text(encoding="utf-8"), end="")
    _print_summary([*summary_lines(res.sets, res.errors, resolved), f"tables and runs in {args.out}"])
    return 0


def _cmd_ablation(args: argparse.Namespace) -> int:
    from ..paper.experiment import run_ablation, summary_lines

    resolved, roots = _resolve(args)
    print(resolved.describe(), file=sys.stderr)
    res = run_ablation(
        resolved,
        args.out,
        cache=_cache(args),
        ablations=args.ablations,
        seeds=args.seeds,
        config_file=args.config,
        overrides=_overrides(args),
        retrain=args.retrain,
        eval_max_per_class=args.eval_max_per_class,
        roots=roots,
        progress=not args.quiet,
    )
    for o in res.outcomes:
        print(f"{o.spec.name}: {o.status} -> {o.run_dir}", file=sys.stderr)
    print()
    print(res.markdown, end="")
    _print_summary([*summary_lines(res.sets, res.errors, resolved), f"tables and runs in {args.out}"])
    return 0


def _parse_runs(items: list[str]) -> dict[str, list[str]]:
    runs: dict[str, list[str]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        if not name or not path:
            raise ValueError(f"--runs {item!r}: expected RUN or NAME=RUN")
        runs.setdefault(name, []).append(path)
    return runs


def _cmd_robustness(args: argparse.Namespace) -> int:
    from ..paper.experiment import read_experiment, run_robustness, runs_from_experiment, summary_lines

    info: dict[str, Any] = {}
    runs: dict[str, list[str]] = {}
    if args.experiment:
        info = read_experiment(args.experiment)
        runs = runs_from_experiment(info)
    if args.runs:
        for name, dirs in _parse_runs(args.runs).items():
            runs.setdefault(name, []).extend(dirs)
    if not runs:
        raise ValueError("no runs to evaluate: give --experiment DIR and/or --runs RUN ...")
    base = info.get("extract_options")
    if base is None:  # runs only: the features they were trained on, as recorded in their config.json
        base = _options_from_run(next(iter(runs.values()))[0])
    resolved, _ = _resolve(args, info)
    print(resolved.describe(), file=sys.stderr)
    res = run_robustness(
        resolved,
        runs,
        args.out,
        cache=_cache(args, base, info.get("cache")),
        jpeg=args.jpeg,
        blur=args.blur,
        eval_max_per_class=args.eval_max_per_class,
        plot=not args.no_plot,
    )
    print()
    table = res.mean.assign(ap=(100 * res.mean["ap"]).round(2), acc=(100 * res.mean["acc"]).round(2))
    print("Mean over test sets (AP and ACC in %):")
    print(table.to_string(index=False))
    lines = summary_lines(res.sets, res.errors, resolved)
    lines.append("written: " + ", ".join(str(p) for p in res.files))
    _print_summary(lines)
    return 0


def _options_from_run(run: str) -> dict[str, Any]:
    """Extraction options matching the features a run was trained on (its config.json's ``features``)."""
    path = Path(run) / "config.json"
    try:
        features = json.loads(path.read_text(encoding="utf-8")).get("features", {})
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the run's config ({exc})") from exc
    bb, prep = features.get("backbone") or {}, features.get("preprocessing") or {}
    opts: dict[str, Any] = {}
    if bb.get("model"):
        opts["backbone"] = bb["model"]
    for key in ("feature", "normalize"):
        if key in bb:
            opts[key] = bb[key]
    if prep.get("mode"):
        opts["preprocess"] = prep["mode"]
    return opts
