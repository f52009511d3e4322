"""The ``causalclip`` command: one entry point, one subcommand per task. Every subcommand body is a function
of parsed arguments returning an exit code, so tests run ``main([...])`` in-process."""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from collections.abc import Sequence

from ..backbones.base import BackboneError
from ..core.config import ConfigError
from ..core.version import __version__
from ..features.featureset import FeatureSetError
from ..features.job import ExtractError
from ..heads.checkpoint import CheckpointError
from ..metrics.errors import MetricsError
from . import (
    calibrate,
    demo,
    detect,
    evaluate,
    experiment,
    export,
    extract,
    gradient_maps,
    import_checkpoint,
    inspect,
    mask_report,
    serve,
    table,
    train,
    umap,
)

# Subcommands in the order ``causalclip --help`` lists them.
COMMANDS = (
    train,
    evaluate,
    extract,
    inspect,
    calibrate,
    export,
    import_checkpoint,
    gradient_maps,
    mask_report,
    umap,
    experiment,
    detect,
    serve,
    demo,
    table,
)

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


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time of the record (tests and notebooks replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="causalclip", description="Detect AI-generated images with CausalCLIP.")
    p.add_argument("--version", action="version", version=f"causalclip {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler], force=True)
    try:
        rc = args.func(args)
        sys.stdout.flush()  # here, so that a reader that went away is handled below rather than at exit
        return rc
    except USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"causalclip {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`causalclip inspect DIR | head`): stop quietly, as cat does
        try:  # what is still buffered for stdout would fail again when Python flushes it at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        return 0
    except KeyboardInterrupt:
        again = " (completed shards, epochs and runs are kept: run the same command again to go on)"
        print(f"causalclip {args.command}: interrupted{again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
