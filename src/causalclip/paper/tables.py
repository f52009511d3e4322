"""The paper's reported numbers (Tables 1-5), shipped as data, and the test-set names they use.

The numbers live in the package data file ``paper/paper_tables.csv`` (long format: table, setting, metric, method, test_set, value in
percent exactly as printed); they were transcribed once from the paper and are checked cell by cell against it
by ``tests/test_paper_tables.py``. The paper itself is not shipped or read here.

Settings: ``sd14`` = trained on GenImage SD v1.4 (Tables 1 AP, 2 ACC), ``progan`` = trained on CNNDetection's
ProGAN (Tables 3 AP, 4 ACC), ``ablation`` = Table 5 (SD v1.4 training; "test sets" OP and GP).

Two things the printed tables say that their text does not (docs/method.md#reference-numbers has the headline numbers):

- Table 5's GP ("average performance on GAN-based datasets") is the mean over all eight CNNDetection test sets,
  Deepfake and SAN included (the tables group those two under "Others"): the printed GP values of the UnivFD
  and CausalCLIP rows are reproduced by that mean of Tables 1-2, and not by the mean over the six GANs.
  ``GP_TEST_SETS`` is that set; ``GAN_TEST_SETS`` is the tables' six-column GAN group.
- Several printed Avg values are not the mean of their row (seven rows of Table 1, two of Table 2, one of
  Table 3). We ship the printed values; the test lists those rows.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

import pandas as pd

__all__ = [
    "ABLATION_CONFIGS",
    "AVG",
    "DIFFUSION_TEST_SETS",
    "FOLDER_NAMES",
    "GAN_TEST_SETS",
    "GP_TEST_SETS",
    "METRICS",
    "SETTINGS",
    "TABLES",
    "TEST_SETS",
    "canonical_method",
    "column_order",
    "canonical_test_set",
    "paper_data",
    "paper_results",
    "paper_table",
    "table_number",
]

# The paper's 15 test sets, by their canonical names: GenImage's seven diffusion sets, then CNNDetection's
# test sets (the paper's column order for the SD1.4-trained Tables 1-2).
DIFFUSION_TEST_SETS: tuple[str, ...] = ("SD1.4", "SD1.5", "ADM", "GLIDE", "Midjourney", "Wukong", "VQDM")
GAN_TEST_SETS: tuple[str, ...] = ("ProGAN", "CycleGAN", "BigGAN", "StyleGAN", "StarGAN", "GauGAN")
GP_TEST_SETS: tuple[str, ...] = (*GAN_TEST_SETS, "Deepfake", "SAN")  # Table 5's GP averages these eight
TEST_SETS: tuple[str, ...] = (*DIFFUSION_TEST_SETS, *GP_TEST_SETS)
AVG = "Avg"

SETTINGS: dict[str, str] = {
    "sd14": "trained on GenImage SD v1.4",
    "progan": "trained on CNNDetection ProGAN",
    "ablation": "Table 5: ablation of the two modules, trained on GenImage SD v1.4",
}
METRICS: dict[str, str] = {"ap": "AP", "acc": "ACC"}
# table number -> (setting, metric); Table 5 holds both metrics.
TABLES: dict[int, tuple[str, str | None]] = {
    1: ("sd14", "ap"),
    2: ("sd14", "acc"),
    3: ("progan", "ap"),
    4: ("progan", "acc"),
    5: ("ablation", None),
}

# Table 5's rows: configuration -> (factorization module enabled, masking module enabled).
ABLATION_CONFIGS: dict[str, tuple[bool, bool]] = {
    "Baseline (UnivFD)": (False, False),
    "Factorization only": (True, False),
    "Masking only": (False, True),
    "CausalCLIP (factorization + masking)": (True, True),
}

# Dataset folder names (GenImage's top-level and inner release folders, CNNDetection's test folders) and the
# spellings of the paper's column headers -> canonical test-set names. Matched case-insensitively and ignoring
# "_", "-", "." and spaces. GenImage also ships a BigGAN folder; it maps to BigGAN like CNNDetection's, but the
# paper's BigGAN column is CNNDetection's.
FOLDER_NAMES: dict[str, str] = {
    "stable_diffusion_v_1_4": "SD1.4",
    "imagenet_ai_0419_sdv4": "SD1.4",
    "sdv1.4": "SD1.4",
    "stable_diffusion_v_1_5": "SD1.5",
    "imagenet_ai_0424_sdv5": "SD1.5",
    "sdv1.5": "SD1.5",
    "ADM": "ADM",
    "imagenet_ai_0508_adm": "ADM",
    "glide": "GLIDE",
    "imagenet_glide": "GLIDE",
    "Midjourney": "Midjourney",
    "imagenet_midjourney": "Midjourney",
    "Midj": "Midjourney",
    "wukong": "Wukong",
    "imagenet_ai_0424_wukong": "Wukong",
    "VQDM": "VQDM",
    "imagenet_ai_0419_vqdm": "VQDM",
    "progan": "ProGAN",
    "cyclegan": "CycleGAN",
    "biggan": "BigGAN",
    "stylegan": "StyleGAN",
    "stargan": "StarGAN",
    "gaugan": "GauGAN",
    "deepfake": "Deepfake",
    "san": "SAN",
}

# Other spellings (lower case) -> the names used in the data; names are also matched case-insensitively, so the
# paper's "Univfd" and "Lgrad" need no entry.
_METHOD_ALIASES = {"ours": "CausalCLIP", "cnndetection": "CNNSpot"}
_ABLATION_ALIASES = {
    "causalclip": "CausalCLIP (factorization + masking)",
    "ours": "CausalCLIP (factorization + masking)",
    "univfd": "Baseline (UnivFD)",
    "baseline": "Baseline (UnivFD)",
}


def _key(name: str) -> str:
    return re.sub(r"[\s_.\-]", "", name.lower())


_TEST_SET_KEYS: dict[str, str] = {_key(n): n for n in TEST_SETS} | {_key(k): v for k, v in FOLDER_NAMES.items()}


def canonical_test_set(name: str) -> str | None:
    """The paper's name for a test set or dataset folder (``stable_diffusion_v_1_4`` -> ``SD1.4``, ``progan`` ->
    ``ProGAN``), case-insensitive; None when the name is not one of the paper's 15 test sets."""
    return _TEST_SET_KEYS.get(_key(str(name)))


def column_order(setting: str | None = None) -> tuple[str, ...]:
    """The paper's column order: diffusion sets first for ``sd14`` (and by default), CNNDetection's sets first
    for ``progan`` (Tables 3-4)."""
    if setting is None or setting == "sd14":
        return TEST_SETS
    if setting == "progan":
        return (*GP_TEST_SETS, *DIFFUSION_TEST_SETS)
    raise ValueError(f"unknown setting {setting!r}; the paper's results tables are for {['sd14', 'progan']}")


def table_number(setting: str, metric: str) -> int:
    """The table that reports ``metric`` ("ap" or "acc") for ``setting`` ("sd14", "progan", or "ablation")."""
    for number, (s, m) in TABLES.items():
        if s == setting and metric in METRICS and m in (metric, None):
            return number
    raise ValueError(
        f"the paper has no table for setting {setting!r} and metric {metric!r}; settings {list(SETTINGS)}, "
        f"metrics {list(METRICS)}"
    )


@functools.cache
def _data() -> pd.DataFrame:
    source = resources.files("causalclip.paper").joinpath("paper_tables.csv")
    with source.open("r", encoding="utf-8") as f:
        df = pd.read_csv(f, comment="#", dtype={"table": "int64", "value": "float64"})
    expected = ["table", "setting", "metric", "method", "test_set", "value"]
    if list(df.columns) != expected:
        raise RuntimeError(f"{source}: columns {list(df.columns)}, expected {expected}")
    return df


def paper_data() -> pd.DataFrame:
    """All of Tables 1-5 in long format: table, setting, metric, method, test_set, value (percent as printed).
    Rows are in the paper's order. Tables 1-4 include each row's printed ``Avg``."""
    return _data().copy()


def canonical_method(name: str, setting: str = "sd14") -> str:
    """The data's name for a method of ``setting`` (case-insensitive; "Ours" -> "CausalCLIP", "Univfd" ->
    "UnivFD"). For ``ablation`` the methods are the keys of ``ABLATION_CONFIGS``; "CausalCLIP" and "UnivFD"
    name its full and its baseline configuration."""
    data = _data()
    known = list(pd.unique(data.loc[data["setting"] == setting, "method"]))
    if not known:
        raise ValueError(f"unknown setting {setting!r}; known settings {list(SETTINGS)}")
    aliases = _ABLATION_ALIASES if setting == "ablation" else _METHOD_ALIASES
    wanted = aliases.get(name.lower(), name).lower()
    for m in known:
        if m.lower() == wanted:
            return m
    raise ValueError(f"the paper reports no method {name!r} for setting {setting!r}; it reports {known}")


def paper_table(table: int) -> pd.DataFrame:
    """One of the paper's tables, wide, in the paper's row and column order, percent as printed.

    Tables 1-4: one row per method (index ``method``), one column per test set, then ``Avg``. Table 5: one row
    per configuration, columns ``factorization`` and ``masking`` (bool), then ``ACC OP``, ``ACC GP``, ``AP OP``,
    ``AP GP``.
    """
    if table not in TABLES:
        raise ValueError(f"the paper has Tables {list(TABLES)}, not {table!r}")
    part = _data()[_data()["table"] == table]
    methods = list(pd.unique(part["method"]))
    if table == 5:
        wide = part.assign(column=part["metric"].str.upper() + " " + part["test_set"])
        wide = wide.pivot(index="method", columns="column", values="value")
        wide = wide.reindex(index=methods, columns=["ACC OP", "ACC GP", "AP OP", "AP GP"])
        flags = pd.DataFrame.from_dict(ABLATION_CONFIGS, orient="index", columns=["factorization", "masking"])
        wide = pd.concat([flags.reindex(methods), wide], axis=1)
    else:
        columns = list(pd.unique(part["test_set"]))
        wide = part.pivot(index="method", columns="test_set", values="value").reindex(index=methods, columns=columns)
    wide.index.name = "method"
    wide.columns.name = None
    return wide


def paper_results(method: str = "CausalCLIP", setting: str = "sd14", metric: str = "ap") -> pd.Series:
    """One method's row of the paper: test set -> percent as printed, in the paper's column order, ending with
    ``Avg`` (for ``setting="ablation"``: OP and GP of one configuration). Named after the method."""
    method = canonical_method(method, setting)
    row = paper_table(table_number(setting, metric)).loc[method]
    if setting == "ablation":
        prefix = METRICS[metric] + " "
        row = row[[c for c in row.index if c.startswith(prefix)]].rename(lambda c: c.removeprefix(prefix))
    row = row.astype("float64")
    row.name = method
    return row
