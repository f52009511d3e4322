"""The package's imports go one way: each stage imports only from stages below it, no cycles (imports inside
functions included), no other module's private names. The checker is tested on small packages built here."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import causalclip  # noqa: E402
from layering import problems  # noqa: E402

# Lowest first: the data flow of the toolkit (docs/guides/install.md, "Code layout").
STAGES = [
    "core",
    "images",
    "backbones",
    "networks",
    "features",
    "metrics",
    "heads",
    "training",
    "evaluation",
    "pixel",
    "detector",
    "detect",
    "serve",
    "paper",
    "demo",
    "cli",
]


def test_causalclip_imports_go_one_way():
    found = problems(Path(causalclip.__file__).parent, STAGES)
    assert not found, "\n".join(found)


def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


CLEAN = {
    "__init__.py": "",
    "low/__init__.py": "",
    "low/a.py": "X = 1\n_hidden = 2\n",
    "high/__init__.py": "",
    "high/b.py": "from ..low.a import X\n",
}


def test_a_clean_package_passes(tmp_path):
    assert problems(_package(tmp_path, CLEAN), ["low", "high"]) == []


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    pkg = _package(
        tmp_path,
        {
            **CLEAN,
            "low/c.py": "def f():\n    from .d import Y\n    return Y\n",
            "low/d.py": "from .c import f\nY = 1\n",
        },
    )
    found = problems(pkg, ["low", "high"])
    assert found == ["import cycle: pkg.low.c -> pkg.low.d -> pkg.low.c"]


def test_an_upward_import_names_both_modules(tmp_path):
    pkg = _package(tmp_path, {**CLEAN, "low/e.py": "def g():\n    import pkg.high.b\n"})
    found = problems(pkg, ["low", "high"])
    assert len(found) == 1 and "upward import: pkg.low.e (stage low) imports pkg.high.b (stage high)" in found[0]


def test_importing_the_package_top_from_a_stage_is_upward(tmp_path):
    pkg = _package(tmp_path, {**CLEAN, "low/f.py": "from .. import something\n"})
    assert problems(pkg, ["low", "high"]) == ["upward import: pkg.low.f (stage low) imports pkg (stage top) at line 1"]


def test_private_names_and_hidden_imports_are_reported(tmp_path):
    pkg = _package(
        tmp_path,
        {
            **CLEAN,
            "high/g.py": "from ..low.a import _hidden\n",
            "high/h.py": "import importlib\nNAME = 'pkg.low.a'\nm = importlib.import_module(NAME)\n",
        },
    )
    found = problems(pkg, ["low", "high"])
    assert any("pkg.high.g imports the private name _hidden of pkg.low.a" in f for f in found)
    assert any("pkg.high.h imports a module whose name is computed at run time (line 3)" in f for f in found)


def test_a_subpackage_missing_from_the_stages_is_reported(tmp_path):
    pkg = _package(tmp_path, {**CLEAN, "extra/__init__.py": ""})
    assert "pkg.extra is a subpackage missing from the list of stages" in problems(pkg, ["low", "high"])


@pytest.mark.parametrize("stages", [["high", "low"]])
def test_reversing_the_stages_makes_the_clean_import_upward(tmp_path, stages):
    found = problems(_package(tmp_path, CLEAN), stages)
    assert found and "pkg.high.b (stage high) imports pkg.low.a (stage low)" in found[0]


def test_importing_the_package_stays_cheap():
    """``import causalclip`` loads no numerical library; the API loads on first use and lists what it offers."""
    import subprocess

    code = (
        "import sys, causalclip as cc; heavy = [m for m in ('torch', 'numpy', 'pandas') if m in sys.modules]; "
        "print(heavy); cc.hsic; print('torch' in sys.modules, sorted(set(cc.__all__) - set(dir(cc))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True []"
    for name in causalclip.__all__:
        assert getattr(causalclip, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        causalclip.nothing_here  # noqa: B018
