"""Compare two run folders (A = before, B = after): what got slower, what got faster.

Rules of this module:

- Rows match on (backend, workload, n_tasks, stage); ``stage`` covers the eight stages (busy
  seconds, roles summed) and the run-level ``time_to_first_task`` and ``wall``, so runs recorded
  with stage recording off still compare on wall time. Rows present on one side only are left
  out.
- ``ratio`` is median(B) / median(A); ``ratio_min``..``ratio_max`` is the range of B/A over all
  pairs of repeats (min B / max A .. max B / min A), since repeats of two runs are not paired.
- Significance (level ``ALPHA`` = 0.05), decided per row:

  * when both sides have enough repeats for a two-sided Mann-Whitney U test to reach ``ALPHA``
    at all (the smallest possible p, ``2 / C(nA + nB, nA)``, is below ``ALPHA``; e.g. 4 vs 4
    or 3 vs 5 repeats), the test decides: significant when p < ``ALPHA``;
  * otherwise (e.g. 3 vs 3 repeats, where the smallest possible p is 0.1) the ranges must not
    overlap: every B repeat slower than every A repeat, or every one faster. With a single
    repeat on each side this reduces to "the values differ" and the factor alone guards.

- Marks: ``+`` worse (ratio > factor and significant), ``-`` better (ratio < 1 / factor and
  significant), ``~`` otherwise, ``n/a`` when either side lacks the stage (not applicable, or
  an unknown time to first task). Only ``+`` makes the exit code 2 (asv's convention).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.report.figures import ratio_figure, save_figure
from harness.report.markup import (
    Block,
    Heading,
    Image,
    Para,
    Table,
    html_document,
    markdown_document,
    text_table,
)
from harness.report.schema import read_run
from harness.report.stats import mann_whitney_p, min_two_sided_p
from harness.report.tables import measures, sort_rows

__all__ = [
    "ALPHA",
    "COMPARE_COLUMNS",
    "compare_frames",
    "compare_html",
    "compare_markdown",
    "compare_runs",
    "compare_text",
    "exit_code",
    "render_compare",
]

COMPARE_COLUMNS: tuple[str, ...] = (
    "backend", "workload", "n_tasks", "stage", "repeats_a", "repeats_b", "median_a",
    "median_b", "ratio", "ratio_min", "ratio_max", "test", "p_value", "mark")
"""Columns of the comparison table, in order."""

ALPHA = 0.05
"""Significance level of the rank test."""

_KEY = ["backend", "workload", "n_tasks", "stage"]


def _sides(meas: pd.DataFrame) -> pd.DataFrame:
    finite = meas.assign(seconds=meas["seconds"].where(meas["applicable"]))
    return finite.groupby(_KEY, sort=False).agg(
        values=("seconds", lambda s: tuple(float(v) for v in s if not math.isnan(v))),
        applicable=("applicable", "all")).reset_index()


def _judge(a: tuple[float, ...], b: tuple[float, ...], factor: float) -> dict[str, object]:
    med_a, med_b = float(np.median(a)), float(np.median(b))
    lo_a, hi_a, lo_b, hi_b = min(a), max(a), min(b), max(b)
    # 0 -> 0 is no change; x -> y from 0 has no ratio.
    ratio = med_b / med_a if med_a > 0 else (1.0 if med_b == 0 else math.nan)
    r_min = lo_b / hi_a if hi_a > 0 else math.nan
    r_max = hi_b / lo_a if lo_a > 0 else math.nan
    if min_two_sided_p(len(a), len(b)) < ALPHA:
        test, p = "rank", mann_whitney_p(a, b)
        worse_sig = better_sig = p < ALPHA
    else:
        test, p = "range", math.nan
        worse_sig, better_sig = lo_b > hi_a, hi_b < lo_a
    if math.isfinite(ratio) and ratio > factor and worse_sig and med_b > med_a:
        mark = "+"
    elif math.isfinite(ratio) and ratio < 1.0 / factor and better_sig and med_b < med_a:
        mark = "-"
    else:
        mark = "~"
    return {"median_a": med_a, "median_b": med_b, "ratio": ratio, "ratio_min": r_min,
            "ratio_max": r_max, "test": test, "p_value": p, "mark": mark}


def compare_frames(meas_a: pd.DataFrame, meas_b: pd.DataFrame,
                   factor: float = 1.10) -> pd.DataFrame:
    """Compare two ``tables.measures`` tables (A before, B after); see the module rules.

    Raises ``ValueError`` for a ``factor`` below 1 (the caller's mistake).
    """
    if not (factor >= 1.0 and math.isfinite(factor)):
        raise ValueError(f"factor must be a finite number >= 1 (e.g. 1.10), got {factor}")
    both = _sides(meas_a).merge(_sides(meas_b), on=_KEY, suffixes=("_a", "_b"))
    rows = []
    for row in both.itertuples(index=False):
        a, b = row.values_a, row.values_b
        base = {"backend": row.backend, "workload": row.workload, "n_tasks": row.n_tasks,
                "stage": row.stage, "repeats_a": len(a), "repeats_b": len(b)}
        if not (row.applicable_a and row.applicable_b and a and b):
            rows.append({**base, "median_a": float(np.median(a)) if a else math.nan,
                         "median_b": float(np.median(b)) if b else math.nan,
                         "ratio": math.nan, "ratio_min": math.nan, "ratio_max": math.nan,
                         "test": "", "p_value": math.nan, "mark": "n/a"})
            continue
        rows.append({**base, **_judge(a, b, factor)})
    out = pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))
    out["n_tasks"] = out["n_tasks"].astype("int64")
    for c in ("repeats_a", "repeats_b"):
        out[c] = out[c].astype("int64")
    return sort_rows(out, _KEY)


def compare_runs(a_dir: Path | str, b_dir: Path | str, factor: float = 1.10) -> pd.DataFrame:
    """Read two run folders and compare them (A before, B after); columns ``COMPARE_COLUMNS``.

    Raises ``schema.RunFolderError`` if either folder is bad.
    """
    a, b = read_run(a_dir), read_run(b_dir)
    return compare_frames(measures(a.stages, a.runs), measures(b.stages, b.runs),
                          factor=factor)


def exit_code(table: pd.DataFrame) -> int:
    """2 if any row is marked ``+`` (a regression), else 0."""
    return 2 if (table["mark"] == "+").any() else 0


def _display(table: pd.DataFrame) -> pd.DataFrame:
    return table[["mark", "backend", "workload", "n_tasks", "stage", "median_a", "median_b",
                  "ratio", "ratio_min", "ratio_max", "test", "p_value"]].rename(columns={
                      "median_a": "A s (median)", "median_b": "B s (median)",
                      "ratio_min": "ratio min", "ratio_max": "ratio max", "p_value": "p"})


def _tally(table: pd.DataFrame) -> str:
    counts = table["mark"].value_counts()
    return (f"{int(counts.get('+', 0))} worse (+), {int(counts.get('-', 0))} better (-), "
            f"{int(counts.get('~', 0))} not significant (~), "
            f"{int(counts.get('n/a', 0))} not applicable (n/a)")


def compare_text(table: pd.DataFrame) -> str:
    """The comparison as a plain-text table for a terminal, with a tally line."""
    return text_table(_display(table)) + "\n\n" + _tally(table) + "\n"


def _blocks(table: pd.DataFrame, a_name: str, b_name: str, factor: float,
            figure: str | None) -> list[Block]:
    blocks: list[Block] = [
        Heading(f"stagecost compare: {a_name} → {b_name}", 1),
        Para(f"ratio = median(B) / median(A). + worse: ratio > {factor:g} and significant; "
             f"- better: ratio < 1/{factor:g} and significant; ~ not significant; n/a: a side "
             f"lacks the stage. Significance: Mann-Whitney U (p < {ALPHA:g}) when the repeats allow "
             "it, else non-overlapping min..max ranges."),
        Para(_tally(table)),
        Table(_display(table)),
    ]
    if figure:
        blocks.append(Image(figure, "ratios B/A"))
    return blocks


def compare_markdown(table: pd.DataFrame, a_name: str = "A", b_name: str = "B",
                     factor: float = 1.10, figure: str | None = None) -> str:
    """The comparison as a Markdown document (``figure``: relative path of an image, if any)."""
    return markdown_document(_blocks(table, a_name, b_name, factor, figure))


def compare_html(table: pd.DataFrame, a_name: str = "A", b_name: str = "B",
                 factor: float = 1.10, figure: str | None = None) -> str:
    """The comparison as a self-contained HTML page."""
    return html_document(f"stagecost compare: {a_name} → {b_name}",
                         _blocks(table, a_name, b_name, factor, figure))


def render_compare(table: pd.DataFrame, out_dir: Path | str, a_name: str = "A",
                   b_name: str = "B", factor: float = 1.10) -> tuple[Path, Path]:
    """Write ``compare.html``, ``compare.md`` and ``figures/compare-ratio.png`` into
    ``out_dir``; return (html path, md path). Idempotent like ``render_report``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure = None
    if not table.empty:
        frame = table.assign(series=[f"{b} · {w} · n={n:,}" for b, w, n in zip(
            table["backend"], table["workload"], table["n_tasks"], strict=True)])
        save_figure(ratio_figure(frame, title=f"{b_name} / {a_name}", reference_label=a_name),
                    out / "figures" / "compare-ratio.png")
        figure = "figures/compare-ratio.png"
    md_path, html_path = out / "compare.md", out / "compare.html"
    for path, text in ((md_path, compare_markdown(table, a_name, b_name, factor, figure)),
                       (html_path, compare_html(table, a_name, b_name, factor, figure))):
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    return html_path, md_path
