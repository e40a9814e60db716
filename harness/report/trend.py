"""Trends: the stage costs of one configuration over the runs the results store holds.

Rules of this module:

- A trend is one configuration (``store.configs``) on one machine, its runs in store order
  (oldest first), optionally only up to a given run, so that the report of a run shows the
  history that led to it and re-rendering it later gives the same figure.
- Each point is the median over repeats of a stage (the eight stages, time to first task,
  wall); each point is marked as ``compare`` marks it against the point before it (``+``
  worse, ``-`` better, ``~`` not significant), with ``compare_frames`` itself.
- ``trend_figure`` is pure (DataFrame -> Figure, on an Agg canvas, like ``figures``): a line
  per stage on a log axis, the runs along x labelled by run and commit, ``+`` and ``-``
  points ringed in the marks' colours.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.report.compare import compare_frames
from harness.report.figures import MARK_COLOURS, STAGE_COLOURS, new_figure
from harness.report.tables import ORDER
from harness.store.db import ResultsStore

__all__ = ["TREND_COLUMNS", "trend_figure", "trend_table"]

TREND_COLUMNS: tuple[str, ...] = ("run_id", "git_commit", "created_utc", "stage",
                                  "median_s", "mark", "ratio")
"""Columns of ``trend_table``: one row per (run, stage); ``mark`` and ``ratio`` are against
the run before (empty / NaN for the first)."""

_CFG = ["backend", "workload", "n_tasks"]


def trend_table(store: ResultsStore, config_id: int, machine: str, *,
                upto: int | None = None, factor: float = 1.10) -> pd.DataFrame:
    """The trend of configuration ``config_id`` on ``machine`` (see the module rules)."""
    runs = store.config_runs(config_id, machine, upto=upto)
    if not runs:
        return pd.DataFrame(columns=list(TREND_COLUMNS))
    labels = store.listing()
    labels = labels[labels["config_id"] == config_id].set_index("id")
    meas = store.measures([r.id for r in runs])
    parts: list[pd.DataFrame] = []
    for r in runs:
        b, w, n = labels.loc[r.id, _CFG] if r.id in labels.index else (None, None, None)
        mine = meas[(meas["run_id"] == r.id) & (meas["backend"] == b)
                    & (meas["workload"] == w) & (meas["n_tasks"] == n)]
        parts.append(mine.drop(columns="run_id").assign(run_id=r.id))
    rows = []
    prev: pd.DataFrame | None = None
    info = {r.id: r for r in runs}
    for part in parts:
        run_id = int(part["run_id"].iloc[0]) if not part.empty else None
        if run_id is None:
            continue
        med = part[part["applicable"]].groupby("stage")["seconds"].median()
        marks: dict[str, tuple[str, float]] = {}
        if prev is not None:
            table = compare_frames(prev.drop(columns="run_id"), part.drop(columns="run_id"),
                                   factor=factor)
            marks = {str(t.stage): (str(t.mark), float(t.ratio))
                     for t in table.itertuples(index=False)}
        for stage, value in med.items():
            mark, ratio = marks.get(str(stage), ("", math.nan))
            rows.append({"run_id": run_id, "git_commit": info[run_id].git_commit,
                         "created_utc": info[run_id].created_utc, "stage": str(stage),
                         "median_s": float(value), "mark": mark, "ratio": ratio})
        prev = part
    return pd.DataFrame(rows, columns=list(TREND_COLUMNS))


def _run_label(run_id: int, commit: object) -> str:
    short = str(commit)[:8] if isinstance(commit, str) and commit else "no commit"
    return f"@{run_id}\n{short}"


def trend_figure(trend: pd.DataFrame, title: str = "") -> Figure:
    """Median seconds per stage over the runs of ``trend_table``, on a log y axis; ``+`` and
    ``-`` points ringed. Raises ``ValueError`` for an empty trend."""
    if trend.empty:
        raise ValueError("no stored runs of this configuration: nothing to draw")
    run_ids = list(dict.fromkeys(trend["run_id"]))
    x_of = {r: i for i, r in enumerate(run_ids)}
    fig, (ax,) = new_figure(min(4.0 + 0.6 * len(run_ids), 16.0) + 3.0, 5.0)
    for stage in ORDER:
        part = trend[(trend["stage"] == stage) & (trend["median_s"] > 0)]
        if part.empty:
            continue
        xs = np.array([x_of[r] for r in part["run_id"]])
        ax.plot(xs, part["median_s"], marker="o", markersize=4, label=stage,
                color=STAGE_COLOURS.get(stage, "k"),
                linestyle="--" if stage in ("time_to_first_task", "wall") else "-")
        for mark, colour in MARK_COLOURS.items():
            hit = part[part["mark"] == mark]
            if not hit.empty:
                ax.scatter([x_of[r] for r in hit["run_id"]], hit["median_s"], s=110,
                           facecolors="none", edgecolors=colour, linewidths=2, zorder=3)
    for mark, colour in MARK_COLOURS.items():
        word = "worse" if mark == "+" else "better"
        ax.scatter([], [], s=110, facecolors="none", edgecolors=colour, linewidths=2,
                   label=f"{mark} {word} than the run before")
    commits = trend.drop_duplicates("run_id").set_index("run_id")["git_commit"]
    ax.set_xticks(range(len(run_ids)), [_run_label(r, commits.get(r)) for r in run_ids],
                  fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (median over repeats, log scale)")
    ax.set_xlabel("stored runs, oldest first (run · commit)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if len(run_ids) == 1:
        ax.set_xlim(-0.5, 0.5)
    ax.set_title(title, fontsize=10)
    return fig
