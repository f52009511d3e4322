"""Results tables in the format of the paper's Tables 1-4, our runs beside the paper's rows.

``results_table`` turns per-generator metrics frames (``evaluate``'s ``metrics``: generator, ..., ap, acc, ...,
fractions in [0, 1], with or without the ``mean`` row) into one row per method and one column per test set, in
the paper's canonical names and order, plus ``Avg``. Generator names are mapped with
``paper_tables.canonical_test_set`` (``stable_diffusion_v_1_4`` -> ``SD1.4``); sets a run lacks are shown as
"–". Each row's Avg is the mean over the test sets it has, so a run evaluated on fewer sets than the paper's 15
says so in a note. The ``ResultsTable`` renders as Markdown, CSV and LaTeX (booktabs), the best value of each
column in bold and the second best underlined, as in the paper.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .tables import AVG, SETTINGS, TEST_SETS, canonical_test_set, column_order, paper_results, paper_table, table_number

__all__ = ["METRIC_LABELS", "MISSING", "ResultsTable", "latex_escape", "results_table"]

MISSING = "–"  # en dash: a test set the row was not evaluated on (LaTeX: "--")
METRIC_LABELS = {"ap": "AP", "acc": "ACC", "real_acc": "Real ACC", "fake_acc": "Fake ACC"}

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_MARKDOWN_SPECIALS = set("\\`*_[]<>|")


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (one pass, so escapes are never escaped again)."""
    return "".join(_LATEX_ESCAPES.get(c, c) for c in text)


def _markdown_escape(text: str) -> str:
    return "".join("\\" + c if c in _MARKDOWN_SPECIALS else c for c in text)


@dataclass(frozen=True)
class ResultsTable:
    """A results table: ``frame`` holds the numbers, the ``to_*`` methods render it."""

    frame: pd.DataFrame  # index "method"; columns test sets then "Avg"; percent, 2 decimals; NaN = not evaluated
    metric: str  # the metrics-frame column shown: "ap", "acc", "real_acc" or "fake_acc"
    paper_rows: tuple[str, ...] = ()  # rows copied from the paper (they come first)
    notes: tuple[str, ...] = ()  # footnotes: partial Avg, generators left out, where the paper's rows come from

    @property
    def label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric)

    def marks(self) -> pd.DataFrame:
        """Per cell: "best" (bold), "second" (underlined) or "". Ties share a mark; the second best is the
        next distinct value. A column with fewer than two values has no marks. In the Avg column only rows that
        have every test set shown take part: an Avg over fewer sets is not comparable."""
        marks = pd.DataFrame("", index=self.frame.index, columns=self.frame.columns)
        complete = self.frame.drop(columns=AVG).notna().all(axis=1)
        for col in self.frame.columns:
            values = self.frame[col].dropna()
            if col == AVG:
                values = values[complete.reindex(values.index)]
            if len(values) < 2:
                continue
            ranked = sorted(set(values), reverse=True)
            marks.loc[values.index[values == ranked[0]], col] = "best"
            if len(ranked) > 1:
                marks.loc[values.index[values == ranked[1]], col] = "second"
        return marks

    def display(self) -> pd.DataFrame:
        """The table as strings: ``"99.12"``, or ``MISSING`` where a row has no value."""
        text = {c: [MISSING if pd.isna(v) else f"{v:.2f}" for v in self.frame[c]] for c in self.frame.columns}
        return pd.DataFrame(text, index=self.frame.index, columns=self.frame.columns)

    def default_caption(self) -> str:
        return f"{self.label} (%) per test set; best in bold, second best underlined."

    def to_markdown(self, *, caption: str | None = None) -> str:
        """A Markdown pipe table (bold ``**x**``, second best ``<u>x</u>`` as in the paper's Markdown), with the
        caption above (default ``default_caption()``; ``""`` for none) and the notes below as a list."""
        caption = self.default_caption() if caption is None else caption
        cells, marks = self.display(), self.marks()
        wrap = {"best": "**{}**", "second": "<u>{}</u>", "": "{}"}
        lines = [caption, ""] if caption else []
        lines.append("| " + " | ".join(["Method", *map(_markdown_escape, self.frame.columns)]) + " |")
        lines.append("|" + "|".join([":---", *["---:"] * len(self.frame.columns)]) + "|")
        for method in self.frame.index:
            row = [wrap[marks.at[method, c]].format(cells.at[method, c]) for c in self.frame.columns]
            lines.append("| " + " | ".join([_markdown_escape(str(method)), *row]) + " |")
        if self.notes:
            lines.append("")
            lines.extend(f"- {_markdown_escape(note)}" for note in self.notes)
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """CSV of ``frame`` (index column ``method``, 2 decimals, empty where not evaluated); no marks, no notes.
        ``pd.read_csv(io.StringIO(text), index_col="method")`` gives ``frame`` back."""
        return self.frame.to_csv(float_format="%.2f", index_label="method", lineterminator="\n")

    def to_latex(self, *, caption: str | None = None, label: str | None = None, env: str | None = "table") -> str:
        """A booktabs table (needs ``\\usepackage{booktabs}``): ``\\textbf`` best, ``\\underline`` second best,
        ``--`` where not evaluated, a rule between the paper's rows and ours, the notes below the tabular.
        ``env`` is the float ("table", "table*") or None for a bare tabular (caption and label then unused);
        ``caption`` defaults to ``default_caption()``. Method names and the caption are escaped."""
        if env not in ("table", "table*", None):
            raise ValueError(f"env must be 'table', 'table*' or None, not {env!r}")
        marks = self.marks()
        wrap = {"best": r"\textbf{{{}}}", "second": r"\underline{{{}}}", "": "{}"}
        lines = []
        if env is not None:
            lines += [rf"\begin{{{env}}}[t]", r"\centering"]
            lines.append(rf"\caption{{{latex_escape(self.default_caption() if caption is None else caption)}}}")
            if label:
                lines.append(rf"\label{{{label}}}")
        lines.append(r"\begin{tabular}{l" + "r" * len(self.frame.columns) + "}")
        lines.append(r"\toprule")
        lines.append(" & ".join(["Method", *map(latex_escape, self.frame.columns)]) + r" \\")
        lines.append(r"\midrule")
        for i, method in enumerate(self.frame.index):
            if i == len(self.paper_rows) and 0 < i < len(self.frame.index):
                lines.append(r"\midrule")
            row = []
            for col in self.frame.columns:
                value = self.frame.at[method, col]
                row.append("--" if pd.isna(value) else wrap[marks.at[method, col]].format(f"{value:.2f}"))
            lines.append(" & ".join([latex_escape(str(method)), *row]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        if self.notes:
            lines.append(r"\par\smallskip")
            lines.append(r"{\footnotesize " + r"\par ".join(latex_escape(note) for note in self.notes) + r"\par}")
        if env is not None:
            lines.append(rf"\end{{{env}}}")
        return "\n".join(lines) + "\n"


def _read_metrics(name: str, metrics: pd.DataFrame | str | os.PathLike[str]) -> pd.DataFrame:
    if isinstance(metrics, pd.DataFrame):
        return metrics
    try:
        return pd.read_csv(metrics)
    except (OSError, pd.errors.ParserError) as e:
        raise ValueError(f"run {name!r}: cannot read metrics file {os.fspath(metrics)}: {e}") from e


def _run_values(
    name: str, metrics: pd.DataFrame, metric: str, aliases: Mapping[str, str]
) -> tuple[dict[str, float], list[str]]:
    """Test set -> metric (fraction) for one run, and the generators that are not among the paper's test sets."""
    for column in ("generator", metric):
        if column not in metrics.columns:
            raise ValueError(f"run {name!r}: metrics frame has no column {column!r}; columns {list(metrics.columns)}")
    values: dict[str, float] = {}
    source: dict[str, str] = {}
    dropped = []
    for generator, value in zip(metrics["generator"].astype(str), metrics[metric], strict=True):
        if generator == "mean":  # per_generator_metrics' summary row; Avg is recomputed over the columns kept
            continue
        test_set = aliases.get(generator.lower()) or canonical_test_set(generator)
        if test_set is None:
            dropped.append(generator)
            continue
        if test_set in source:
            raise ValueError(f"run {name!r}: generators {source[test_set]!r} and {generator!r} both map to {test_set}")
        value = float(value)
        if not (0.0 <= value <= 1.0):
            raise ValueError(
                f"run {name!r}: {metric} of {generator!r} is {value}; metrics frames hold fractions in [0, 1] "
                "(NaN means the metric was not computed)"
            )
        values[test_set] = value
        source[test_set] = generator
    return values, dropped


def _mean_percent(values: Sequence[float], scale: float) -> float:
    return round(float(np.mean(values)) * scale, 2) if values else math.nan


def results_table(
    runs: Mapping[str, pd.DataFrame | str | os.PathLike[str]],
    *,
    metric: str = "ap",
    setting: str | None = None,
    paper_methods: Sequence[str] | None = None,
    test_sets: Sequence[str] | None = None,
    aliases: Mapping[str, str] | None = None,
    paper_label: str = "{method} (paper)",
) -> ResultsTable:
    """Our runs (name -> metrics frame or path of a ``metrics.csv``), in the format of the paper's Tables 1-4.

    With ``setting`` ("sd14" or "progan") the paper's rows for that setting and ``metric`` ("ap" or "acc") come
    first (all its methods, or ``paper_methods``), labelled by ``paper_label``, and the columns are the paper's
    15 test sets in its order. Without it the columns are the test sets any run has, in canonical order.
    ``test_sets`` picks columns explicitly. ``aliases`` maps extra generator names to canonical test sets.
    Generators that are not among the paper's test sets are left out (and listed in a note).

    Avg: for our rows the mean over the shown test sets the row has (of the unrounded values); for the paper's
    rows the printed Avg when all 15 sets are shown, else the mean of the shown printed cells.
    """
    if metric not in METRIC_LABELS:
        raise ValueError(f"metric must be one of {list(METRIC_LABELS)}, not {metric!r}")
    if setting is not None and setting not in ("sd14", "progan"):
        raise ValueError(f"setting must be 'sd14' or 'progan' (the paper's Tables 1-4), not {setting!r}")
    if paper_methods is not None and setting is None:
        raise ValueError("paper_methods needs setting= ('sd14' or 'progan') to say which of the paper's tables")
    alias_map = {}
    for generator, test_set in (aliases or {}).items():
        if test_set not in TEST_SETS:
            raise ValueError(f"aliases: {generator!r} -> {test_set!r} is not one of the paper's test sets {TEST_SETS}")
        alias_map[generator.lower()] = test_set

    notes: list[str] = []
    ours: dict[str, dict[str, float]] = {}
    for name, metrics in runs.items():
        values, dropped = _run_values(name, _read_metrics(name, metrics), metric, alias_map)
        ours[name] = values
        if dropped:
            notes.append(
                f"{name}: not among the paper's test sets, left out of the table and its Avg: {', '.join(dropped)}."
            )

    if test_sets is not None:
        columns = []
        for t in test_sets:
            canonical = alias_map.get(t.lower()) or canonical_test_set(t)
            if canonical is None:
                raise ValueError(f"test_sets: {t!r} is not one of the paper's test sets {TEST_SETS}")
            columns.append(canonical)
    elif setting is not None:
        columns = list(column_order(setting))
    else:
        columns = [t for t in column_order(None) if any(t in values for values in ours.values())]
    if len(set(columns)) != len(columns):
        raise ValueError(f"test_sets: a test set is listed twice in {columns}")

    rows: dict[str, dict[str, float]] = {}
    paper_rows: list[str] = []
    if setting is not None:
        if metric not in ("ap", "acc"):
            raise ValueError(f"the paper reports AP and ACC only; cannot show its rows for {metric!r}")
        number = table_number(setting, metric)
        methods = list(paper_table(number).index) if paper_methods is None else paper_methods
        full = set(columns) == set(TEST_SETS)
        for method in methods:
            printed = paper_results(method, setting, metric)
            row = {t: float(printed[t]) for t in columns}
            row[AVG] = float(printed[AVG]) if full else _mean_percent([row[t] for t in columns], 1.0)
            label = paper_label.format(method=printed.name)
            if label in rows:
                raise ValueError(f"paper_methods: {method!r} names the paper's row {label!r} twice")
            rows[label] = row
            paper_rows.append(label)
        example = paper_label.format(method="…")
        where = f"Rows labelled “{example}” are the paper's Table {number} ({SETTINGS[setting]})"
        if full:
            notes.insert(0, f"{where}, values and Avg as printed.")
        else:
            notes.insert(
                0,
                f"{where}; their Avg is recomputed over the {len(columns)} test sets shown (the printed Avg covers "
                f"all {len(TEST_SETS)}).",
            )

    for name, values in ours.items():
        if name in rows:
            raise ValueError(f"run name {name!r} is also the label of one of the paper's rows; rename the run")
        kept = [t for t in columns if t in values]
        row = {t: round(values[t] * 100.0, 2) if t in values else math.nan for t in columns}
        row[AVG] = _mean_percent([values[t] for t in kept], 100.0)
        rows[name] = row
        if len(kept) < len(TEST_SETS):
            notes.append(
                f"Avg of {name} is the mean over {len(kept)} of the paper's {len(TEST_SETS)} test sets "
                f"({', '.join(kept) or 'none'}), so it is not comparable with the paper's Avg."
            )
    if not rows:
        raise ValueError("nothing to show: no runs given and no setting= for the paper's rows")

    frame = pd.DataFrame.from_dict(rows, orient="index", columns=[*columns, AVG]).astype("float64")
    frame.index.name = "method"
    return ResultsTable(frame=frame, metric=metric, paper_rows=tuple(paper_rows), notes=tuple(notes))
