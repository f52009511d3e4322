"""The ``causalclip`` command: one entry point, one subcommand per task. Every subcommand body is a function
of parsed arguments returning an exit code, so tests run ``main([...])`` in-process."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .backbones import BackboneError
from .checkpoint import CheckpointError
from .config import ConfigError
from .extract import ExtractError
from .features import FeatureSetError, open_feature_set
from .heads import ABLATIONS, HEADS
from .metrics import MetricsError

log = logging.getLogger("causalclip")

# Errors that mean "bad input": reported as one line naming the file, exit code 2, no traceback.
USER_ERRORS = (
    ConfigError,
    FeatureSetError,
    CheckpointError,
    MetricsError,
    BackboneError,
    ExtractError,
    FileExistsError,
    ValueError,
    KeyError,
)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import resolve_run_config, train

    overrides = list(args.set or [])
    for name in ("epochs", "batch_size", "lr", "seed", "device"):
        value = getattr(args, name)
        if value is not None:
            overrides.append(f"train.{name}={json.dumps(value)}")
    rc = resolve_run_config(args.head, config_file=args.config, overrides=overrides, ablation=args.ablation)
    result = train(
        train_set=args.train,
        val_set=args.val,
        out=args.out,
        run_config=rc,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    best = result.history.iloc[result.best_epoch - 1]
    print(
        f"trained {rc.head} -> {result.run_dir}  (best epoch {result.best_epoch}: val AP {100 * best['val_ap']:.2f}, "
        f"ACC {100 * best['val_acc']:.2f}; {result.stop_reason})"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_table

    res = evaluate(
        args.run,
        args.test,
        out=args.out,
        balance=not args.no_balance,
        max_per_class=args.max_per_class,
        seed=args.seed,
        device=args.device,
    )
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    print(format_table(res.metrics))
    if args.out:
        print(f"wrote {args.out}/metrics.csv and {args.out}/predictions.csv")
    return 0


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time of the record (tests and notebooks replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def processes_arg(text: str) -> int | str:
    """``--processes``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return n


def _parse_pairs(items: Sequence[str] | None) -> dict[str, tuple[str, str]] | None:
    if not items:
        return None
    pairs = {}
    for item in items:
        name, sep, roots = item.partition("=")
        real, sep2, fake = roots.partition(":")
        if not (sep and sep2 and name and real and fake):
            raise ValueError(f"--pair {item!r}: expected NAME=REAL_DIR:FAKE_DIR")
        pairs[name] = (real, fake)
    return pairs


def _cmd_extract(args: argparse.Namespace) -> int:
    from .backbones import load_backbone
    from .extract import ExtractConfig, extract
    from .imageio import Augmentation, Perturbation
    from .layouts import list_samples

    listing = list_samples(
        args.root,
        args.layout,
        split=args.split,
        pairs=_parse_pairs(args.pair),
        max_per_class=args.max_per_class,
        seed=args.seed,
        generator=args.generator,
    )
    if len(listing.samples) == 0:
        raise ValueError(f"{args.root}: the {args.layout} layout found no images")
    load_args = {"feature": args.feature, "normalize": args.normalize, "preprocessing_mode": args.preprocess}
    ray_options = None
    if args.engine == "ray":  # the driver's copy (on CPU) fixes the job's identity; each actor loads its own
        from .ray_engine import RayOptions, actor_precision

        precision = actor_precision(args.precision, args.device)
        backbone = load_backbone(args.backbone, device="cpu", precision=precision, **load_args)
        ray_options = RayOptions(
            address=args.ray_address,
            actors=args.actors,
            gpus_per_actor=args.gpus_per_actor,
            cpus_per_actor=args.cpus_per_actor,
            backbone_args={"model": args.backbone, "compile": args.compile, **load_args},
        )
    else:
        backbone = load_backbone(
            args.backbone, device=args.device, precision=args.precision, compile=args.compile, **load_args
        )
    config = ExtractConfig(
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        workers=args.workers,
        processes=args.processes,
        storage_dtype=args.dtype,
    )
    res = extract(
        listing.samples,
        root=listing.root,
        out=args.out,
        backbone=backbone,
        perturbation=Perturbation(jpeg_quality=args.jpeg, blur_sigma=args.blur),
        augmentation=Augmentation() if args.augment else None,
        augment_seed=args.seed,
        config=config,
        ignored=listing.ignored,
        device=args.device,
        progress=not args.quiet,
        engine=args.engine,
        ray_options=ray_options,
    )
    print(
        f"{res.out}: {res.n_ok} of {res.n_planned} images extracted ({res.n_extracted_now} in this run, "
        f"{res.images_per_s:.2f} images/s); {len(res.errors)} input(s) not used"
    )
    if len(res.errors):
        for reason, count in res.errors["reason"].value_counts().items():
            print(f"  {count:>6} x {reason}")
        print(f"  every one is listed in {res.out}/errors.csv")
        return 1
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    fs = open_feature_set(args.dir)
    counts = fs.samples.groupby(["generator", "label"]).size().unstack(fill_value=0)
    print(f"{fs.root}: {len(fs)} vectors of dim {fs.dim} ({fs.meta['dtype']}) in {len(fs.shards)} shard(s)")
    for key in ("backbone", "preprocessing", "perturbation"):
        if key in fs.meta:
            print(f"  {key}: {json.dumps(fs.meta[key])[:200]}")
    print(counts.rename(columns={0: "real", 1: "fake"}).to_string())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="causalclip", description="Detect AI-generated images with CausalCLIP.")
    p.add_argument("--version", action="version", version=f"causalclip {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a head on cached features", description="Train a head on a feature set.")
    t.add_argument("--head", choices=sorted(HEADS), default="causalclip", help="which head (default: causalclip)")
    t.add_argument("--train", required=True, metavar="DIR", help="training feature set")
    t.add_argument("--val", required=True, metavar="DIR", help="validation feature set (early stopping)")
    t.add_argument("--out", required=True, metavar="RUN", help="run folder to create")
    t.add_argument("--config", metavar="FILE", help="JSON or TOML config: [train] and per-head sections")
    t.add_argument("--ablation", choices=sorted(ABLATIONS), help="Table 5 configuration (causalclip head)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. tau=0.5 or train.patience=3")
    t.add_argument("--epochs", type=int, help="maximum epochs (default 50; early stopping usually ends sooner)")
    t.add_argument("--batch-size", type=int, help="default 256")
    t.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    t.add_argument("--seed", type=int, help="default 0")
    t.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="per-generator AP/ACC of a trained head", description="Evaluate a run.")
    e.add_argument("run", metavar="RUN", help="run or detector folder (config.json + model.safetensors)")
    e.add_argument("--test", nargs="+", required=True, metavar="DIR", help="test feature set(s)")
    e.add_argument("--out", metavar="DIR", help="write metrics.csv and predictions.csv here")
    e.add_argument("--no-balance", action="store_true", help="use every sample instead of balanced sampling")
    e.add_argument("--max-per-class", type=int, help="cap per class and generator (UnivFD: 1000)")
    e.add_argument("--seed", type=int, default=0, help="seed of the balanced sampling")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=_cmd_evaluate)

    x = sub.add_parser(
        "extract",
        help="images -> cached backbone features (resumable)",
        description="Extract frozen-backbone features of a dataset into a feature set. Run the same command again "
        "to resume after an interruption. Exits 1 if some inputs could not be used (listed in OUT/errors.csv).",
    )
    x.add_argument("root", metavar="ROOT", help="dataset folder (or manifest file for --layout manifest)")
    x.add_argument("--layout", required=True, help="genimage, cnndetection, pairs, folders or manifest")
    x.add_argument("--split", help="train / val / test, where the layout has splits")
    x.add_argument("--generator", help="generator name when ROOT is a single generator's folder")
    x.add_argument("--pair", action="append", metavar="NAME=REAL:FAKE", help="pairs layout: a generator's roots")
    x.add_argument(
        "--backbone",
        default="openai/clip-vit-large-patch14",
        metavar="ID_OR_PATH",
        help="CLIP hub id or local folder (default: CLIP ViT-L/14), or a weight-free spec such as spectrum+npr",
    )
    x.add_argument("--feature", choices=["image_embeds", "pooled"], default="image_embeds")
    x.add_argument("--normalize", action="store_true", help="L2-normalise the features")
    x.add_argument("--preprocess", choices=["crop", "clip"], default="crop", help="crop: centre crop, no resize")
    x.add_argument("--jpeg", type=int, metavar="Q", help="perturbation: re-encode as JPEG at quality Q")
    x.add_argument("--blur", type=float, metavar="SIGMA", help="perturbation: Gaussian blur (before JPEG)")
    x.add_argument(
        "--augment", action="store_true", help="training augmentation: blur p=0.1, JPEG p=0.1 (one draw per image)"
    )
    x.add_argument("--out", required=True, metavar="DIR")
    x.add_argument("--max-per-class", type=int, help="balanced seeded sampling: at most N per generator and class")
    x.add_argument("--seed", type=int, default=0, help="seed of --max-per-class sampling and --augment")
    x.add_argument("--batch-size", type=int, default=8, help="8 on CPU; 256 on a GPU")
    x.add_argument("--shard-size", type=int, default=4096)
    x.add_argument("--workers", type=int, default=1, help="decoding processes (with --processes 1)")
    x.add_argument(
        "--processes",
        type=processes_arg,
        default="auto",
        metavar="N|auto",
        help="CPU: backbone processes, each decoding its own batches, threads = cores / N (auto: one per core, "
        "at most 4; 1 = one process, --workers decode); ignored on a GPU",
    )
    x.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="storage dtype")
    x.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    x.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    x.add_argument("--device", default="cpu")
    x.add_argument("-q", "--quiet", action="store_true")
    r = x.add_argument_group("distributed (--engine ray; docs/distributed.md)")
    r.add_argument("--engine", choices=["local", "ray"], default="local", help="ray: Ray Data on a Ray cluster")
    r.add_argument("--ray-address", metavar="ADDR", help="auto (this node's cluster), ray://HEAD:10001; default local")
    r.add_argument("--actors", type=int, help="backbone actors (default: one per GPU, or CPUs / 2)")
    r.add_argument("--gpus-per-actor", type=float, help="default 1 with --device cuda, else 0 (CPU actors)")
    r.add_argument("--cpus-per-actor", type=float, default=1.0)
    x.set_defaults(func=_cmd_extract)

    i = sub.add_parser("inspect", help="validate and summarise a feature set", description="Validate a feature set.")
    i.add_argument("dir", metavar="DIR")
    i.set_defaults(func=_cmd_inspect)

    from .commands import register_all

    register_all(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler], force=True)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"causalclip {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = " (completed shards and runs are kept: run the same command again to go on)"
        print(f"causalclip {args.command}: interrupted{again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
