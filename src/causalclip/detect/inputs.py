"""Command-line inputs (files, folders, globs) -> the image paths to score, in order, and what matched nothing."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

from ..images.layouts import IMAGE_EXTENSIONS
from .detection import Detection

# Files picked up inside folders (explicitly named files are always tried, whatever their suffix).
FOLDER_SUFFIXES = frozenset(IMAGE_EXTENSIONS | {".avif", ".ppm", ".jp2", ".j2k", ".jfif"})


_GLOB_CHARS = re.compile(r"[*?\[]")


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[Detection], int]:
    """Command-line inputs -> (image paths in order, problems, non-image files skipped in folders).

    A file is taken whatever its suffix; a folder is walked recursively for image suffixes (hidden entries
    skipped); anything else containing ``*``, ``?`` or ``[`` is a glob (``**`` recursive). An input that matches
    nothing is a problem (reported like an undecodable file). Duplicates are scored once.
    """
    paths: list[str] = []
    problems: list[Detection] = []
    seen: set[str] = set()
    skipped = 0

    def add(p: str) -> None:
        key = os.path.normpath(p)
        if key not in seen:
            seen.add(key)
            paths.append(p)

    def walk(folder: str) -> int:
        nonlocal skipped
        found = 0
        for dirpath, dirnames, filenames in os.walk(folder, onerror=None):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.startswith("."):
                    continue
                if Path(f).suffix.lower() in FOLDER_SUFFIXES:
                    add(os.path.join(dirpath, f))
                    found += 1
                else:
                    skipped += 1
        return found

    for raw in inputs:
        if os.path.isdir(raw):
            if walk(raw) == 0:
                problems.append(Detection(raw, error="no image files in this folder"))
        elif os.path.exists(raw) or os.path.islink(raw):
            add(raw)
        elif _GLOB_CHARS.search(raw):
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                problems.append(Detection(raw, error="no file matches this pattern"))
            for m in matches:
                if os.path.isdir(m):
                    walk(m)
                else:
                    add(m)
        else:
            problems.append(Detection(raw, error="no such file or directory"))
    return paths, problems, skipped
