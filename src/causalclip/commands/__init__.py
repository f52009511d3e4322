"""Subcommands that live in their own modules. Each module listed in ``MODULES`` defines
``register(sub: argparse._SubParsersAction) -> None``, which adds its parser(s) and sets ``func`` to a function of
the parsed arguments returning an exit code (see ``causalclip.cli``)."""

from __future__ import annotations

import argparse
import importlib

MODULES: tuple[str, ...] = (
    "calibrate",
    "export",
    "mask_report",
    "umap",
    "experiment",
    "detect",
    "serve",
    "demo",
    "table",
)


def register_all(sub: argparse._SubParsersAction) -> None:
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
