"""Optional extras in tests: a skip where an extra is not installed, a failure in CI (which installs them all)."""

from __future__ import annotations

import importlib
import os

import pytest


def need(name: str, reason: str | None = None):
    """The package, or a skip outside CI; CI installs every extra (.ci/run), so there a missing one fails."""
    return importlib.import_module(name) if os.environ.get("CI") else pytest.importorskip(name, reason=reason)
