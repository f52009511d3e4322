"""Atomic result files: every file the toolkit writes appears whole or not at all, never half-written or appended."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write", "read_json", "save_npy", "write_json", "write_text"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it over ``path`` (all or nothing)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = False) -> Path:
    """``obj`` as indented JSON with a final newline (values JSON cannot hold are written as ``str``)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def read_json(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> Any:
    """The JSON document in ``path``; an unreadable or invalid file raises ``error("<path>: cannot read JSON: ...")``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise error(f"{path}: cannot read JSON: {exc}") from exc


def save_npy(path: str | os.PathLike[str], arr: np.ndarray) -> None:
    """``np.save`` without pickles, to exactly ``path`` (for use inside :func:`atomic_write`)."""
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
        np.save(f, arr, allow_pickle=False)
