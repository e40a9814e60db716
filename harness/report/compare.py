"""Compare two runs (A = before, B = after): what got slower, what got faster, what cannot
be told yet.

Rules of this module:

- Rows match on (backend, workload, n_tasks, stage); ``stage`` covers the eight stages (busy
  seconds, roles summed, from the repeats recorded with stage recording on) and the run-level
  ``time_to_first_task`` and ``wall`` (wall time from the repeats with recording off, see
  ``tables.measures``). Rows present on one side only are left out; two runs with no row in
  common cannot be compared (``NothingToCompare``).
- ``ratio`` is median(B) / median(A); ``ci_low``..``ci_high`` is a ``1 - ALPHA`` (99 %)
  confidence interval for the factor B/A (``stats.ratio_interval``); ``ratio_min`` ..
  ``ratio_max`` is the range of B/A over all pairs of repeats (min B / max A .. max B / min A).
- Significance: two-sided Mann-Whitney U at ``ALPHA`` = 0.01 (``stats.mann_whitney_p``).
  A rank test assumes nothing about the shape of the noise, and a strict level keeps the
  false alarms of a comparison with ten rows or so rare. The test can reach that level only
  with enough repeats (``stats.min_two_sided_p`` < ``ALPHA``: 5 vs 5, 4 vs 6, 3 vs 9, ...);
  with fewer the row says "not enough repeats" and how many are needed (``repeats_needed``),
  instead of a verdict.
- Marks: ``+`` worse (ratio > factor, significant, and for a stage a change of at least
  ``MIN_CHANGE_OF_WALL`` of the wall time), ``-`` better (the same the other way), ``~``
  otherwise, ``?`` not enough repeats to decide, ``n/a`` when either side
  lacks the stage (not applicable, or an unknown time to first task). ``verdict`` says the
  same in words.
- The machine: when the runs' calibrations or the other processes' load (``machine_check``)
  show that the machine itself changed between A and B, a ``+`` or ``-`` could be the
  machine's, so ``withhold_for_machine`` turns it into ``!`` (machine changed: rerun both
  close together), saying how the machine changed.
- ``exit_code``: 2 (regression) if any row is ``+``; else 3 (incomplete) if any row is ``?``
  or ``!``; else 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.exit_codes import ExitCode
from harness.machine_check import load_change, machine_change
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
from harness.report.stats import (
    mann_whitney_p,
    min_two_sided_p,
    ratio_interval,
    repeats_needed,
)
from harness.report.tables import measures, sort_rows

__all__ = [
    "ALPHA",
    "COMPARE_COLUMNS",
    "MIN_CHANGE_OF_WALL",
    "MARK_WORDS",
    "NothingToCompare",
    "compare_frames",
    "compare_html",
    "compare_markdown",
    "compare_runs",
    "compare_text",
    "exit_code",
    "machine_of",
    "render_compare",
    "withhold_for_machine",
]

COMPARE_COLUMNS: tuple[str, ...] = (
    "backend", "workload", "n_tasks", "stage", "repeats_a", "repeats_b", "median_a",
    "median_b", "ratio", "ci_low", "ci_high", "ratio_min", "ratio_max", "p_value", "mark",
    "verdict", "repeats_needed")
"""Columns of the comparison table, in order. ``repeats_needed`` is the fewest repeats per
side that could decide a ``?`` row (0 on other rows)."""

ALPHA = 0.01
"""Significance level of the rank test, and 1 - confidence of the ratio interval."""

MIN_CHANGE_OF_WALL = 0.005
"""A stage whose median changed by less than this share of the configuration's wall time
(median of A) is never ``+`` or ``-``: a stage that takes 85 µs of a 4 s run and now takes
112 µs is no regression anyone should chase, and on a shared machine such small stages are
the rows that drift most. Wall time itself is never below it."""

MARK_WORDS = {"+": "worse", "-": "better", "~": "not significant",
              "?": "not enough repeats", "!": "machine changed", "n/a": "not applicable"}
"""What each mark means, in words."""

_KEY = ["backend", "workload", "n_tasks", "stage"]


class NothingToCompare(ValueError):
    """Two runs share no configuration (backend, workload, task count) and measure."""


def _sides(meas: pd.DataFrame) -> pd.DataFrame:
    finite = meas.assign(seconds=meas["seconds"].where(meas["applicable"]))
    return finite.groupby(_KEY, sort=False).agg(
        values=("seconds", lambda s: tuple(float(v) for v in s if not math.isnan(v))),
        applicable=("applicable", "all")).reset_index()


def _spread(a: tuple[float, ...], b: tuple[float, ...]) -> dict[str, float]:
    med_a, med_b = float(np.median(a)), float(np.median(b))
    lo_a, hi_a, lo_b, hi_b = min(a), max(a), min(b), max(b)
    # 0 -> 0 is no change; x -> y from 0 has no ratio.
    ratio = med_b / med_a if med_a > 0 else (1.0 if med_b == 0 else math.nan)
    return {"median_a": med_a, "median_b": med_b, "ratio": ratio,
            "ratio_min": lo_b / hi_a if hi_a > 0 else math.nan,
            "ratio_max": hi_b / lo_a if lo_a > 0 else math.nan}


def _judge(a: tuple[float, ...], b: tuple[float, ...], factor: float,
           floor: float = 0.0) -> dict[str, object]:
    spread = _spread(a, b)
    out: dict[str, object] = {**spread, "ci_low": math.nan, "ci_high": math.nan,
                              "p_value": math.nan, "repeats_needed": 0}
    if min_two_sided_p(len(a), len(b)) >= ALPHA:
        need = repeats_needed(ALPHA, len(a), len(b))
        out.update(mark="?", repeats_needed=need,
                   verdict=f"not enough repeats ({len(a)} vs {len(b)}): "
                           f"{need} per side can decide")
        return out
    p = mann_whitney_p(a, b)
    out["p_value"] = p
    out["ci_low"], out["ci_high"] = ratio_interval(a, b, ALPHA)
    ratio, med_a, med_b = spread["ratio"], spread["median_a"], spread["median_b"]
    significant = p < ALPHA
    material = abs(med_b - med_a) >= floor
    if math.isfinite(ratio) and ratio > factor and significant and material and med_b > med_a:
        mark = "+"
    elif (math.isfinite(ratio) and ratio < 1.0 / factor and significant and material
          and med_b < med_a):
        mark = "-"
    else:
        mark = "~"
    if mark == "~" and significant and not material and (ratio > factor or
                                                          ratio < 1.0 / factor):
        verdict = (f"significant, but a change of under {MIN_CHANGE_OF_WALL:.1%} of the wall "
                   f"time")
    elif mark == "~" and significant:
        verdict = f"significant, but within the factor {factor:g}"
    else:
        verdict = MARK_WORDS[mark]
    out.update(mark=mark, verdict=verdict)
    return out


def compare_frames(meas_a: pd.DataFrame, meas_b: pd.DataFrame,
                   factor: float = 1.10) -> pd.DataFrame:
    """Compare two ``tables.measures`` tables (A before, B after); see the module rules.

    An empty result means the tables share no row (callers with whole runs raise
    ``NothingToCompare``; ``compare_runs`` does). Raises ``ValueError`` for a ``factor``
    below 1 (the caller's mistake).
    """
    if not (factor >= 1.0 and math.isfinite(factor)):
        raise ValueError(f"factor must be a finite number >= 1 (e.g. 1.10), got {factor}")
    both = _sides(meas_a).merge(_sides(meas_b), on=_KEY, suffixes=("_a", "_b"))
    walls = meas_a[meas_a["stage"] == "wall"].groupby(_KEY[:3])["seconds"].median()
    rows = []
    for row in both.itertuples(index=False):
        a, b = row.values_a, row.values_b
        base = {"backend": row.backend, "workload": row.workload, "n_tasks": row.n_tasks,
                "stage": row.stage, "repeats_a": len(a), "repeats_b": len(b)}
        if not (row.applicable_a and row.applicable_b and a and b):
            rows.append({**base, "median_a": float(np.median(a)) if a else math.nan,
                         "median_b": float(np.median(b)) if b else math.nan,
                         "ratio": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                         "ratio_min": math.nan, "ratio_max": math.nan, "p_value": math.nan,
                         "mark": "n/a", "verdict": MARK_WORDS["n/a"], "repeats_needed": 0})
            continue
        wall = float(walls.get((row.backend, row.workload, row.n_tasks), 0.0))
        floor = 0.0 if row.stage == "wall" or math.isnan(wall) else MIN_CHANGE_OF_WALL * wall
        rows.append({**base, **_judge(a, b, factor, floor)})
    out = pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))
    for c in ("n_tasks", "repeats_a", "repeats_b", "repeats_needed"):
        out[c] = out[c].astype("int64")
    return sort_rows(out, _KEY)


def _configs(meas: pd.DataFrame) -> str:
    cfgs = sorted({f"{b} · {w} · n={int(n):,}" for b, w, n in
                   meas[["backend", "workload", "n_tasks"]].itertuples(index=False)})
    return "; ".join(cfgs) if cfgs else "no measured configuration"


def compare_measures(meas_a: pd.DataFrame, meas_b: pd.DataFrame, factor: float = 1.10,
                     names: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
    """``compare_frames`` of two whole runs; raises ``NothingToCompare`` (naming what each
    run holds) when they share no row."""
    table = compare_frames(meas_a, meas_b, factor=factor)
    if table.empty:
        raise NothingToCompare(
            f"{names[0]} and {names[1]} have no configuration in common, so there is nothing "
            f"to compare. {names[0]} has: {_configs(meas_a)}. {names[1]} has: "
            f"{_configs(meas_b)}. Compare runs of the same backend, workload and task count")
    return table


def compare_runs(a_dir: Path | str, b_dir: Path | str, factor: float = 1.10) -> pd.DataFrame:
    """Read two run folders and compare them (A before, B after); columns ``COMPARE_COLUMNS``.

    Raises ``schema.RunFolderError`` if either folder is bad, ``NothingToCompare`` if they
    share no configuration. Verdicts the machine's own change could explain are withheld
    (``withhold_for_machine``).
    """
    a, b = read_run(a_dir), read_run(b_dir)
    table = compare_measures(measures(a.stages, a.runs), measures(b.stages, b.runs),
                             factor=factor, names=(a.name, b.name))
    return withhold_for_machine(table, machine_of(a.runs, b.runs, factor))


GUARD_ALPHA = 0.05
"""Level of the tests on the machine (calibration, other processes' load): a guard that
withholds verdicts errs on the side of withholding."""


def machine_of(a_runs: pd.DataFrame, b_runs: pd.DataFrame,
               factor: float = 1.10) -> list[str]:
    """How the machine changed between two runs (``runs.csv`` of A and B): a sentence per
    sign of change (``machine_check``: the calibration beyond the factor, the other
    processes' load by ``LOAD_STEP`` cores; both tested at ``GUARD_ALPHA``); empty when neither changed or the runs lack
    the columns (written before them)."""
    def column(runs: pd.DataFrame, name: str) -> list[float]:
        if name not in runs:
            return []
        return pd.to_numeric(runs[name], errors="coerce").dropna().tolist()

    out = []
    calib = machine_change(column(a_runs, "calibration_s"), column(b_runs, "calibration_s"),
                           factor, GUARD_ALPHA)
    if calib is not None and calib.changed:
        out.append(calib.describe())
    load = load_change(column(a_runs, "other_load"), column(b_runs, "other_load"),
                       GUARD_ALPHA)
    if load is not None and load.changed:
        out.append(load.describe())
    return out


def withhold_for_machine(table: pd.DataFrame, changes: list[str]) -> pd.DataFrame:
    """``table`` with its ``+`` and ``-`` rows marked ``!`` when ``changes`` (``machine_of``)
    says the machine itself changed (unchanged otherwise)."""
    if not changes:
        return table
    why = "; ".join(changes)
    out = table.copy()
    decided = out["mark"].isin(["+", "-"])
    out.loc[decided, "verdict"] = [
        f"{MARK_WORDS[m]} by x{r:.3g}, but the machine changed: {why}; not decided, rerun "
        f"both close together" for m, r in zip(out.loc[decided, "mark"],
                                               out.loc[decided, "ratio"], strict=True)]
    out.loc[decided, "mark"] = "!"
    return out


def exit_code(table: pd.DataFrame) -> int:
    """``ExitCode.REGRESSION`` (2) if any row is marked ``+``; else ``ExitCode.INCOMPLETE``
    (3) if any row is ``?`` (not enough repeats to decide) or ``!`` (the machine changed);
    else ``ExitCode.OK`` (0)."""
    if (table["mark"] == "+").any():
        return int(ExitCode.REGRESSION)
    if table["mark"].isin(["?", "!"]).any():
        return int(ExitCode.INCOMPLETE)
    return int(ExitCode.OK)


def _display(table: pd.DataFrame) -> pd.DataFrame:
    return table[["mark", "backend", "workload", "n_tasks", "stage", "repeats_a", "repeats_b",
                  "median_a", "median_b", "ratio", "ci_low", "ci_high", "ratio_min",
                  "ratio_max", "p_value", "verdict"]].rename(columns={
                      "repeats_a": "A n", "repeats_b": "B n",
                      "median_a": "A s (median)", "median_b": "B s (median)",
                      "ci_low": "ci low", "ci_high": "ci high", "ratio_min": "ratio min",
                      "ratio_max": "ratio max", "p_value": "p"})


def _tally(table: pd.DataFrame) -> str:
    counts = table["mark"].value_counts()
    text = ", ".join(f"{int(counts.get(m, 0))} {w} ({m})" for m, w in MARK_WORDS.items())
    undecided = table[table["mark"] == "?"]
    if not undecided.empty:
        text += (f". {len(undecided)} row(s) cannot be decided with these repeats: run at "
                 f"least {int(undecided['repeats_needed'].max())} repeats per side (-r) for "
                 "a verdict")
    withheld = table[table["mark"] == "!"]
    if not withheld.empty:
        text += (f". {len(withheld)} verdict(s) withheld: "
                 f"{str(withheld['verdict'].iloc[0]).split(', but ', 1)[-1]}")
    return text


def compare_text(table: pd.DataFrame) -> str:
    """The comparison as a plain-text table for a terminal, with a tally line."""
    return text_table(_display(table)) + "\n\n" + _tally(table) + "\n"


def _blocks(table: pd.DataFrame, a_name: str, b_name: str, factor: float,
            figure: str | None) -> list[Block]:
    blocks: list[Block] = [
        Heading(f"stagecost compare: {a_name} → {b_name}", 1),
        Para(f"ratio = median(B) / median(A), with its {1 - ALPHA:.0%} confidence interval "
             f"(ci) and the range over all pairs of repeats. + worse: ratio > {factor:g} and "
             f"significant; - better: ratio < 1/{factor:g} and significant; ~ not "
             f"significant (or within the factor); ? not enough repeats to decide; ! the "
             f"machine itself changed (a fixed calibration loop timed before every repeat, "
             f"or the CPU other processes used during the repeats), so a verdict is "
             f"withheld; n/a: a "
             f"side lacks the stage. Significance: two-sided Mann-Whitney U, p < {ALPHA:g}. "
             "Wall times come from the repeats run with stage recording off, stages from "
             "those with it on."),
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
