"""Report figures: pure functions from report tables (``tables``) to matplotlib Figures.

Rules of this module:

- Each plot function takes a DataFrame and an optional ``ax``, draws nothing else, and returns
  the Figure (``ax.figure`` when an ``ax`` was given). No file I/O except ``save_figure``,
  which always closes the figure, even when saving fails.
- Agg without touching global state: figures are made with ``matplotlib.figure.Figure`` and
  bound to an Agg canvas; pyplot is never imported, so the process-wide backend is neither
  needed nor changed (``matplotlib.use("Agg")`` would switch it under a notebook or GUI user),
  and no figure is kept alive by pyplot's registry.
- One colour per stage everywhere (``STAGE_COLOURS``), one line style per backend.
- Missing values (not-applicable stages, NaN ratios) are not drawn as zero: they are skipped,
  and ratio bars say ``n/a``.
- Output depends on input only: fixed size and dpi, no dates in PNG metadata.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from harness.report.schema import STAGE_NAMES
from harness.report.tables import ORDER

__all__ = [
    "MARK_COLOURS",
    "STAGE_COLOURS",
    "new_figure",
    "ratio_figure",
    "save_figure",
    "scaling_figure",
    "stacked_stages_figure",
    "timeline_figure",
]

STAGE_COLOURS: Mapping[str, str] = MappingProxyType({
    "generate": "#1f77b4",
    "optimize": "#ff7f0e",
    "serialize": "#2ca02c",
    "communicate": "#d62728",
    "update_graph": "#9467bd",
    "schedule": "#8c564b",
    "dispatch": "#e377c2",
    "execute": "#7f7f7f",
    "time_to_first_task": "#17becf",
    "wall": "#000000",
})
"""Colour of each stage (and run-level measure) in every figure."""

MARK_COLOURS: Mapping[str, str] = MappingProxyType({"+": "#d62728", "-": "#2ca02c"})
"""Colour of the significant comparison marks (worse, better) written beside ratio bars."""

_LINESTYLES = ("-", "--", ":", "-.")
# Series colours leave out the red and green of the marks.
_SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf")
_DPI = 100
_TIMELINE_RESOLUTION = 4000  # spans closer than 1/4000 of the run are drawn as one bar


def new_figure(width: float, height: float, ncols: int = 1,
                sharey: bool = False) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False, sharey=sharey)[0]
    return fig, list(axes)


def _figure_of(ax: Axes) -> Figure:
    fig = ax.figure
    assert isinstance(fig, Figure)  # an Axes' figure may be a SubFigure; its root is a Figure
    return fig


def save_figure(fig: Figure, path: Path | str) -> Path:
    """Write ``fig`` as PNG (or the format of ``path``'s suffix) and close it; return the path.

    The folder is created if needed. The figure is closed whether or not saving succeeds, so a
    failing report never leaks figures.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"Software": None} if path.suffix.lower() == ".png" else None
        fig.savefig(path, dpi=_DPI, metadata=meta)
    finally:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:  # a caller's pyplot figure: drop it from pyplot's registry too
            plt.close(fig)
        fig.clear()
    return path


def _config_label(backend: str, workload: str, n_tasks: int) -> str:
    return f"{backend}\n{workload}\nn={n_tasks:,}"


def _draw_stacked(ax: Axes, summary: pd.DataFrame, runs: pd.DataFrame | None,
                  value: str) -> None:
    configs = summary[["backend", "workload", "n_tasks"]].drop_duplicates()
    configs = list(configs.itertuples(index=False, name=None))
    x = np.arange(len(configs))
    bottom = np.zeros(len(configs))
    for stage in STAGE_NAMES:
        rows = summary[summary["stage"] == stage].set_index(["backend", "workload", "n_tasks"])
        heights = np.array([float(rows[value].get(c, math.nan)) for c in configs])
        if np.all(np.isnan(heights)):
            continue
        h = np.nan_to_num(heights, nan=0.0)
        ax.bar(x, h, bottom=bottom, color=STAGE_COLOURS[stage], label=stage, width=0.7)
        bottom += h
    # Totals on the bars: a bar a hundred times lower than its neighbour still reads.
    for xi, total in zip(x, bottom, strict=True):
        ax.annotate(f"{total:.3g}", (xi, total), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7)
    if runs is not None and not runs.empty:
        per = runs.set_index(["backend", "workload", "n_tasks"])
        col = "wall_us_per_task" if value.startswith("us_per_task") else "wall_s_median"
        walls = [float(per.loc[c, col]) if c in per.index else math.nan for c in configs]
        ax.plot(x, walls, linestyle="none", marker="D", color=STAGE_COLOURS["wall"],
                label="wall (median)")
    ax.set_xticks(x, [_config_label(*c) for c in configs], fontsize=8)
    unit = "µs per task" if value.startswith("us_per_task") else "seconds"
    ax.set_ylabel(f"busy {unit} (median over repeats)")


def stacked_stages_figure(summary: pd.DataFrame, run_summary: pd.DataFrame | None = None,
                          ax: Axes | None = None,
                          value: str = "us_per_task_median") -> Figure:
    """Stacked bars of stage cost per (backend, workload, n_tasks) from ``stage_summary``.

    ``value`` is a summary column (default µs per task, so sizes compare). With a
    ``run_summary`` a diamond marks the median wall time (stages 6-8 overlap, so busy time can
    exceed it). Each bar's total is written on it. Without ``ax`` each backend gets its own
    panel, all panels sharing one y axis so that heights compare across backends; with ``ax``
    everything is drawn on it.
    """
    if summary.empty:
        raise ValueError("no stage rows to plot: the run recorded no stage costs")
    if ax is not None:
        _draw_stacked(ax, summary, run_summary, value)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _figure_of(ax)
    backends = list(dict.fromkeys(summary["backend"]))
    n_bars = len(summary[["backend", "workload", "n_tasks"]].drop_duplicates())
    fig, axes = new_figure(min(4.0 + 1.1 * n_bars + 1.5 * len(backends), 20.0), 5.0,
                            ncols=len(backends), sharey=True)
    for b_ax, backend in zip(axes, backends, strict=True):
        part = summary[summary["backend"] == backend]
        runs = None if run_summary is None else run_summary[run_summary["backend"] == backend]
        _draw_stacked(b_ax, part, runs, value)
        b_ax.set_title(backend, fontsize=10)
        if b_ax is not axes[0]:
            b_ax.set_ylabel("")
            b_ax.tick_params(labelleft=False)
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    for a in axes[1:]:
        h, lab = a.get_legend_handles_labels()
        seen.update({k: v for k, v in zip(lab, h, strict=True) if k not in seen})
    order = [s for s in (*ORDER, "wall (median)") if s in seen]
    axes[-1].legend([seen[s] for s in order], order, fontsize=8, loc="upper left",
                    bbox_to_anchor=(1.01, 1.0))
    return fig


def _role_key(role: str) -> tuple[int, int, str]:
    fixed = {"client": 0, "scheduler": 1}
    if role in fixed:
        return (fixed[role], 0, role)
    m = re.fullmatch(r"worker-(\d+)", role)
    if m:
        return (2, int(m.group(1)), role)
    return (3, 0, role)


def coalesce_spans(starts: np.ndarray, ends: np.ndarray,
              min_gap: float) -> list[tuple[float, float]]:
    """(start, width) bars covering the spans, with spans closer than ``min_gap`` joined.

    Tens of thousands of per-batch spans would otherwise be drawn one by one although they
    cover a few hundred pixels; joining gaps narrower than a pixel changes nothing visible.
    """
    if starts.size == 0:
        return []
    order = np.argsort(starts, kind="mergesort")
    s, e = starts[order], np.maximum.accumulate(ends[order])
    new_group = np.concatenate([[True], s[1:] > e[:-1] + min_gap])
    first = np.flatnonzero(new_group)
    last = np.concatenate([first[1:] - 1, [s.size - 1]])
    return [(float(a), float(b - a)) for a, b in zip(s[first], e[last], strict=True)]


def timeline_figure(spans: pd.DataFrame, ax: Axes | None = None, title: str = "") -> Figure:
    """Gantt chart of the spans of one run: a band per role, a lane per stage within it.

    Spans of one (role, stage) separated by less than 1/4000 of the run are drawn as one bar.

    ``spans`` must hold exactly one (backend, workload, n_tasks, repeat): filter first.
    Raises ``ValueError`` when it holds none or several.
    """
    keys = spans[["backend", "workload", "n_tasks", "repeat"]].drop_duplicates()
    if len(keys) != 1:
        raise ValueError(f"timeline_figure draws one run, got {len(keys)}: filter spans to "
                         "one (backend, workload, n_tasks, repeat) first")
    roles = sorted(spans["role"].unique(), key=_role_key)
    if ax is None:
        fig, (ax,) = new_figure(11.0, max(2.5, 0.6 * len(roles) + 1.5))
    else:
        fig = _figure_of(ax)
    stages_seen: list[str] = []
    t0, t1 = float(spans["start_s"].min()), float(spans["end_s"].max())
    min_gap = (t1 - min(0.0, t0)) / _TIMELINE_RESOLUTION
    for i, role in enumerate(roles):
        mine = spans[spans["role"] == role]
        lanes = [s for s in ORDER if s in set(mine["stage"])]
        height = 0.8 / max(1, len(lanes))
        for j, stage in enumerate(lanes):
            part = mine[mine["stage"] == stage]
            bars = coalesce_spans(part["start_s"].to_numpy(float), part["end_s"].to_numpy(float),
                             min_gap)
            y = i - 0.4 + j * height
            ax.broken_barh(bars, (y, height * 0.9), facecolors=STAGE_COLOURS.get(stage, "k"))
            if stage not in stages_seen:
                stages_seen.append(stage)
    ax.set_yticks(range(len(roles)), roles)
    ax.set_ylim(len(roles) - 0.5, -0.5)
    ax.set_xlabel("seconds since compute()")
    ax.set_xlim(min(0.0, t0), t1 + 0.02 * max(t1 - min(0.0, t0), 1e-9))
    ordered = [s for s in ORDER if s in stages_seen]
    ax.legend([Patch(color=STAGE_COLOURS.get(s, "k")) for s in ordered], ordered, fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    b, w, n, r = next(keys.itertuples(index=False, name=None))
    ax.set_title(title or f"{b} · {w} · n={n:,} · repeat {r}", fontsize=10)
    return fig


def _exponent_text(exp: float) -> str:
    return "n/a" if not math.isfinite(exp) else f"{exp:.2f}"


def scaling_figure(points: pd.DataFrame, exponents: pd.DataFrame | None = None,
                   ax: Axes | None = None, title: str = "") -> Figure:
    """Log-log curves of median seconds against n_tasks, per (backend, stage), one workload.

    ``points`` is ``scaling_points`` output for a single workload (filter first; ``ValueError``
    otherwise); ``exponents`` (``growth_exponents``) adds the fitted exponent to each legend
    entry: that workload's, from a table that may hold several. Non-positive or missing
    medians are not drawn.
    """
    workloads = points["workload"].unique()
    if len(workloads) != 1:
        raise ValueError(f"scaling_figure draws one workload, got {len(workloads)}: filter "
                         "points to one workload first")
    if ax is None:
        fig, (ax,) = new_figure(11.0, 6.0)
    else:
        fig = _figure_of(ax)
    # keyed by workload too: ``exponents`` may hold every workload's (the report passes all)
    exp_of: dict[tuple[str, str, str], float] = {}
    if exponents is not None:
        for row in exponents.itertuples(index=False):
            exp_of[(str(row.backend), str(row.workload), str(row.stage))] = float(row.exponent)
    workload = str(workloads[0])
    backends = list(dict.fromkeys(points["backend"]))
    drawn = 0
    for b_i, backend in enumerate(backends):
        for stage in ORDER:
            g = points[(points["backend"] == backend) & (points["stage"] == stage)]
            g = g[g["seconds_median"].gt(0)].sort_values("n_tasks")
            if g.empty:
                continue
            label = f"{stage} [{backend}]"
            if exponents is not None:
                exp = exp_of.get((backend, workload, stage), math.nan)
                label += f" n^{_exponent_text(exp)}"
            ax.plot(g["n_tasks"].astype(float), g["seconds_median"].astype(float),
                    marker="o", markersize=4, color=STAGE_COLOURS.get(stage, "k"),
                    linestyle=_LINESTYLES[b_i % len(_LINESTYLES)], label=label)
            drawn += 1
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        n_all = points.loc[points["seconds_median"].gt(0), "n_tasks"].astype(float)
        _plain_log_ticks(ax.xaxis, float(n_all.min()), float(n_all.max()))
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlabel("n_tasks")
    ax.set_ylabel("seconds (median over repeats)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or f"scaling · {workloads[0]}", fontsize=10)
    return fig


def _plain_log_ticks(axis: object, lo: float, hi: float) -> None:
    """Log-axis tick labels as plain numbers (0.5, 2, 100, 1e+06) rather than 5x10^-1; minor
    ticks are labelled only when the axis spans less than about a decade and a half."""
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    axis.set_major_formatter(plain)  # type: ignore[attr-defined]
    few = lo > 0 and hi > 0 and math.log10(hi / lo) <= 1.5
    axis.set_minor_formatter(plain if few else NullFormatter())  # type: ignore[attr-defined]


def ratio_figure(frame: pd.DataFrame, ax: Axes | None = None, title: str = "",
                 reference_label: str = "reference") -> Figure:
    """Horizontal bars of ratios (other / reference) per stage, on a log axis around 1.

    ``frame`` columns: ``stage``, ``series`` (one bar per series within a stage, coloured by
    series), ``ratio``, ``ratio_min``, ``ratio_max`` (whiskers), and optionally ``mark``
    (``+ - ~ n/a``): ``+`` and ``-`` are then written beside their bar. A NaN ratio is written
    ``n/a`` instead of a bar. (stage, series) pairs must be unique (``ValueError``
    otherwise): a series that does not name everything its rows differ by (the workload, the
    size) would draw one of them under the other's label.
    """
    need = {"stage", "series", "ratio", "ratio_min", "ratio_max"}
    if not need <= set(frame.columns):
        raise ValueError(f"ratio_figure needs columns {sorted(need)}, got {list(frame.columns)}")
    dup = frame.duplicated(["stage", "series"])
    if dup.any():
        first = frame[dup].iloc[0]
        raise ValueError(f"ratio_figure got several rows for series {first['series']!r} and "
                         f"stage {first['stage']!r}: name the series by everything that tells "
                         "them apart (or filter to one workload)")
    stages = [s for s in ORDER if s in set(frame["stage"])]
    stages += sorted(set(frame["stage"]) - set(stages))
    series: Sequence[str] = list(dict.fromkeys(frame["series"]))
    if ax is None:
        fig, (ax,) = new_figure(10.0, min(40.0, max(3.0, 0.25 * len(stages) * len(series)
                                                       + 1.5)))
    else:
        fig = _figure_of(ax)
    height = 0.8 / max(1, len(series))
    values = frame[["ratio", "ratio_min", "ratio_max"]].to_numpy(dtype=float).ravel()
    finite = values[np.isfinite(values) & (values > 0)]
    lo = min(0.5, float(finite.min()) / 1.3) if finite.size else 0.5
    hi = max(2.0, float(finite.max()) * 1.3) if finite.size else 2.0
    has_mark = "mark" in frame.columns
    for s_i, name in enumerate(series):
        colour = _SERIES_COLOURS[s_i % len(_SERIES_COLOURS)]
        part = frame[frame["series"] == name].set_index("stage")
        for st_i, stage in enumerate(stages):
            if stage not in part.index:
                continue
            row = part.loc[stage]
            y = st_i - 0.4 + (s_i + 0.5) * height
            ratio = float(row["ratio"])
            if not (math.isfinite(ratio) and ratio > 0):
                ax.text(1.0, y, " n/a", va="center", fontsize=7)
                continue
            r_min, r_max = float(row["ratio_min"]), float(row["ratio_max"])
            err = [[max(0.0, ratio - r_min) if math.isfinite(r_min) else 0.0],
                   [max(0.0, r_max - ratio) if math.isfinite(r_max) else 0.0]]
            ax.barh([y], [ratio - 1.0], left=1.0, height=height * 0.9, color=colour,
                    xerr=err, ecolor="#333333", capsize=2)
            mark = str(row["mark"]) if has_mark else ""
            if mark in ("+", "-"):
                end = ratio + err[1][0] if ratio >= 1.0 else ratio - err[0][0]
                ax.text(end, y, f" {mark} ", va="center",
                        ha="left" if ratio >= 1.0 else "right", fontsize=9,
                        fontweight="bold", color=MARK_COLOURS[mark])
    ax.axvline(1.0, color="#333333", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    _plain_log_ticks(ax.xaxis, lo, hi)
    ax.set_yticks(range(len(stages)), stages)
    ax.set_ylim(len(stages) - 0.5, -0.5)
    label = f"ratio to {reference_label} (median; whiskers: min..max; > 1 is slower)"
    if has_mark:
        label += "\nmarked: + worse, - better (significant)"
    ax.set_xlabel(label)
    ax.legend([Patch(color=_SERIES_COLOURS[i % len(_SERIES_COLOURS)])
               for i in range(len(series))], list(series), fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="x", which="both", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig
