"""The code revision recorded in every run folder and detector (git commit, with a mark when the tree is dirty)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from .version import __version__


@functools.cache
def code_revision() -> str:
    """The git commit of the causalclip source (with ``-dirty`` for uncommitted changes), if it is a checkout.

    Asked once per process and remembered: a long job (a benchmark, a demo with dozens of runs) records one
    revision, the one it started with, even when the checkout moves on while it runs."""
    src = Path(__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10
        )
        if top.returncode == 0 and (Path(top.stdout.strip()) / "src" / "causalclip").is_dir():
            rev = subprocess.run(
                ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            )
            dirty = subprocess.run(
                ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if rev.returncode == 0:
                return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return f"causalclip {__version__} (not a git checkout)"
