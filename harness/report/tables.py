"""Report tables: pure functions from validated run tables (see ``schema``) to summary tables.

Rules of this module:

- Every function takes DataFrames and returns a new DataFrame; nothing is read, written,
  printed or mutated in place. Markdown and HTML are renderings of these tables (``markup``).
- Busy seconds of a stage in one run are the sum over roles. If a run has a row with role
  ``all`` for a stage, that row is the total and the per-role rows of that stage are ignored.
- Not applicable stays distinct from zero: a stage no role of a backend has is
  ``applicable=False`` with NaN numbers in every table; a measured 0.0 stays 0.0.
- Spread over repeats is min..max (repeats are few, usually 3-10; quantiles of 5 numbers say
  little more). Medians summarise.
- The run-level measures ``time_to_first_task`` and ``wall`` (from ``runs.csv``) appear after
  the eight stages wherever a table mixes them (``measures``), so that scaling and comparisons
  cover end-to-end time too, even for runs recorded with stage recording off.
- Wall time, and every ratio of wall times, comes from the runs made with stage recording
  off (``recorded`` false in ``runs.csv``) where a configuration has them; stage times and
  time to first task (a span) from the recorded ones (``speed_runs``, ``recorded_runs``).
  Runs written before record-off repeats existed have only recorded runs: they are used for
  both.
- Ratios are other / reference (> 1 means slower than the reference). A ratio whose
  denominator is 0 or NaN is NaN.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from harness.report.schema import PROFILE_CATEGORIES, RUN_KEY, STAGE_NAMES
from harness.report.stats import fit_exponent

__all__ = [
    "CHANGE_COLUMNS",
    "HEADLINE_COLUMNS",
    "MEASURE_NAMES",
    "ORDER",
    "backend_comparison",
    "biggest_change",
    "choose_reference",
    "growth_exponents",
    "headline",
    "measures",
    "profile_stage_shares",
    "profile_top",
    "ranked_stages",
    "recorded_runs",
    "run_summary",
    "scaling_points",
    "scaling_table",
    "sort_rows",
    "speed_runs",
    "stage_summary",
    "stage_totals",
]

MEASURE_NAMES: tuple[str, ...] = ("time_to_first_task", "wall")
"""Run-level measures shown next to the stages (from ``runs.csv``)."""

ORDER: tuple[str, ...] = STAGE_NAMES + MEASURE_NAMES
"""Row order of the ``stage`` column in every table."""

_CONFIG = ["backend", "workload", "n_tasks"]


def _order_key(col: pd.Series) -> pd.Series:
    if col.name == "stage":
        rank = {name: i for i, name in enumerate(ORDER)}
        return col.map(rank).fillna(len(ORDER))
    return col


def sort_rows(df: pd.DataFrame, by: Iterable[str]) -> pd.DataFrame:
    """``df`` sorted stably by ``by`` (``stage`` in pipeline order), with a fresh index."""
    by = [c for c in by if c in df.columns]
    if df.empty or not by:
        return df.reset_index(drop=True)
    return df.sort_values(by, key=_order_key, kind="mergesort").reset_index(drop=True)


def _runs_of_kind(runs: pd.DataFrame, recorded: bool) -> pd.DataFrame:
    if runs.empty or "recorded" not in runs:
        return runs
    flag = runs["recorded"].astype("boolean").fillna(True).astype(bool)
    want = flag == recorded
    has = want.groupby([runs[c] for c in _CONFIG], sort=False).transform("any")
    return runs[(want | ~has).to_numpy()]


def speed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``runs`` that wall times come from: each configuration's runs made with
    recording off, or all its runs where it has none (recording was never off, or the
    table predates the ``recorded`` column)."""
    return _runs_of_kind(runs, recorded=False)


def recorded_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``runs`` that recorded spans (time to first task comes from them): each
    configuration's recorded runs, or all its runs where it has none."""
    return _runs_of_kind(runs, recorded=True)


def stage_totals(stages: pd.DataFrame) -> pd.DataFrame:
    """Roles summed: one row per (backend, workload, n_tasks, repeat, stage).

    Columns: the key, ``seconds``, ``us_per_task``, ``nbytes``, ``messages`` (sums over
    applicable roles; NaN/NA when no role has the stage), ``applicable`` (any role has it),
    ``roles`` (rows that went into the sum).
    """
    key = [*RUN_KEY, "stage"]
    cols = [*key, "seconds", "us_per_task", "nbytes", "messages", "applicable", "roles"]
    if stages.empty:
        return pd.DataFrame({c: pd.Series(dtype=stages[c].dtype if c in stages else "int64")
                             for c in cols})
    is_all = stages["role"].eq("all")
    group_has_all = is_all.groupby([stages[k] for k in key], sort=False).transform("any")
    kept = stages[is_all | ~group_has_all]
    out = kept.groupby(key, sort=False).agg(
        seconds=("seconds", lambda s: s.sum(min_count=1)),
        us_per_task=("us_per_task", lambda s: s.sum(min_count=1)),
        nbytes=("nbytes", lambda s: s.sum(min_count=1)),
        messages=("messages", lambda s: s.sum(min_count=1)),
        applicable=("applicable", "any"),
        roles=("role", "size"),
    ).reset_index()
    for name in ("nbytes", "messages"):
        out[name] = out[name].astype("Int64")
    return sort_rows(out[cols], key)


def measures(stages: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Seconds per (run, measure): the eight stages (roles summed) then, if ``runs`` is given,
    ``time_to_first_task`` (from ``recorded_runs``) and ``wall`` (from ``speed_runs``).
    Columns: RUN_KEY, ``stage``, ``seconds``, ``applicable``. An unknown time to first task
    is ``applicable=False``.
    """
    totals = stage_totals(stages)[[*RUN_KEY, "stage", "seconds", "applicable"]]
    parts = [totals]
    if runs is not None and not runs.empty:
        for name, col, rows in (("time_to_first_task", "time_to_first_task_s",
                                 recorded_runs(runs)), ("wall", "wall_s", speed_runs(runs))):
            part = rows[list(RUN_KEY)].copy()
            part["stage"] = name
            part["seconds"] = rows[col].astype(float)
            part["applicable"] = rows[col].notna()
            parts.append(part)
    parts = [p for p in parts if not p.empty]
    if not parts:
        return totals
    out = pd.concat(parts, ignore_index=True)
    out["applicable"] = out["applicable"].astype(bool)
    return sort_rows(out, [*_CONFIG, "stage", "repeat"])


def stage_summary(stages: pd.DataFrame) -> pd.DataFrame:
    """Per (backend, workload, n_tasks, stage): median and min..max over repeats.

    Columns: the key, ``applicable``, ``repeats``, ``seconds_median``, ``seconds_min``,
    ``seconds_max``, ``us_per_task_median``, ``us_per_task_min``, ``us_per_task_max``,
    ``nbytes_median``, ``messages_median``. Not-applicable stages have NaN numbers.
    """
    totals = stage_totals(stages)
    key = [*_CONFIG, "stage"]
    if totals.empty:
        cols = [*key, "applicable", "repeats"] + [
            f"{v}_{s}" for v in ("seconds", "us_per_task") for s in ("median", "min", "max")
        ] + ["nbytes_median", "messages_median"]
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    for name in ("nbytes", "messages"):
        totals[name] = totals[name].astype("float64")
    out = totals.groupby(key, sort=False).agg(
        applicable=("applicable", "any"),
        repeats=("repeat", "nunique"),
        seconds_median=("seconds", "median"),
        seconds_min=("seconds", "min"),
        seconds_max=("seconds", "max"),
        us_per_task_median=("us_per_task", "median"),
        us_per_task_min=("us_per_task", "min"),
        us_per_task_max=("us_per_task", "max"),
        nbytes_median=("nbytes", "median"),
        messages_median=("messages", "median"),
    ).reset_index()
    return sort_rows(out, key)


def run_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (backend, workload, n_tasks): wall time and time to first task over repeats.

    Columns: the key, ``repeats`` (the runs wall time comes from: ``speed_runs``),
    ``wall_s_median``, ``wall_s_min``, ``wall_s_max`` (of those runs),
    ``time_to_first_task_s_median`` (``_min``, ``_max``; of ``recorded_runs``),
    ``tasks_run_median``, ``wall_us_per_task`` (median wall time per task),
    ``overhead_us_per_task`` (median wall time per task above the ``floor`` backend's on the
    same workload and size, from the same run when several are combined; empty without a
    floor row), ``peak_rss_{client,scheduler,worker}_mib`` (median peak resident MiB of that
    role, the largest worker's for ``worker``, over the same runs as wall time; empty where not
    measured), ``recorded_repeats`` and ``wall_recorded_s_median`` (the runs that recorded
    stages), ``record_overhead`` (``wall_recorded_s_median / wall_s_median - 1``: what
    recording cost; empty unless the configuration has runs of both kinds),
    ``record_overhead_cpu`` (the same of the CPU seconds the run's processes used,
    ``cpu_s``: less disturbed by other work on the machine; empty without them).
    """
    cols = [*_CONFIG, "repeats"] + [f"{v}_{s}" for v in ("wall_s", "time_to_first_task_s")
                                    for s in ("median", "min", "max")]
    cols += ["tasks_run_median", "wall_us_per_task", "overhead_us_per_task"]
    cols += [f"peak_rss_{role}_mib" for role in _RSS_ROLES]
    cols += ["recorded_repeats", "wall_recorded_s_median", "record_overhead",
             "record_overhead_cpu"]
    if runs.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    df = speed_runs(runs)
    df = df.assign(tasks_run=df["tasks_run"].astype("float64"))
    out = df.groupby(_CONFIG, sort=False).agg(
        repeats=("repeat", "nunique"),
        wall_s_median=("wall_s", "median"),
        wall_s_min=("wall_s", "min"),
        wall_s_max=("wall_s", "max"),
        tasks_run_median=("tasks_run", "median"),
    ).reset_index()
    index = pd.MultiIndex.from_frame(out[_CONFIG])
    rec = recorded_runs(runs)
    rec = rec.assign(tasks_run=rec["tasks_run"].astype("float64"))
    by = rec.groupby(_CONFIG, sort=False)
    first = by["time_to_first_task_s"]
    for stat in ("median", "min", "max"):
        out[f"time_to_first_task_s_{stat}"] = getattr(first, stat)().reindex(index).to_numpy()
    # tasks are counted where spans were recorded (Dask's backends count nothing otherwise)
    counted = by["tasks_run"].median().reindex(index).to_numpy()
    out["tasks_run_median"] = out["tasks_run_median"].where(
        out["tasks_run_median"].notna(), pd.Series(counted, index=out.index))
    out["wall_us_per_task"] = out["wall_s_median"] / out["n_tasks"] * 1e6
    out["overhead_us_per_task"] = _above_floor(out)
    for role in _RSS_ROLES:  # runs written before peaks were measured lack these columns
        col = f"peak_rss_{role}_bytes"
        peak = (pd.to_numeric(df[col], errors="coerce").groupby([df[c] for c in _CONFIG], sort=False)
                .median().reindex(index).to_numpy()
                if col in df else np.nan)
        out[f"peak_rss_{role}_mib"] = peak / 2**20
    flag = (runs["recorded"].astype("boolean").fillna(True).astype(bool) if "recorded" in runs
            else pd.Series(True, index=runs.index))
    on = runs[flag.to_numpy()].groupby(_CONFIG, sort=False)["wall_s"]
    off = runs[~flag.to_numpy()].groupby(_CONFIG, sort=False)["wall_s"]
    out["recorded_repeats"] = on.size().reindex(index).fillna(0).astype("int64").to_numpy()
    out["wall_recorded_s_median"] = on.median().reindex(index).to_numpy()
    out["record_overhead"] = _safe_ratio(out["wall_recorded_s_median"],
                                         pd.Series(off.median().reindex(index).to_numpy(),
                                                   index=out.index)) - 1
    out["record_overhead_cpu"] = np.nan
    if "cpu_s" in runs:
        cpu = pd.to_numeric(runs["cpu_s"], errors="coerce")
        by_kind = [cpu[mask].groupby([runs.loc[mask, c] for c in _CONFIG], sort=False)
                   .median().reindex(index).to_numpy() for mask in (flag, ~flag)]
        out["record_overhead_cpu"] = _safe_ratio(pd.Series(by_kind[0], index=out.index),
                                                 pd.Series(by_kind[1], index=out.index)) - 1
    return sort_rows(out[cols], _CONFIG)


_RSS_ROLES = ("client", "scheduler", "worker")


def _above_floor(summary: pd.DataFrame) -> pd.Series:
    """Median wall µs/task minus the floor's for the same (workload, n_tasks, run label)."""
    label = summary["backend"].str.extract(r"^(?P<base>[^ ]+)(?P<run>( \[.*\])?)$")
    key = [summary["workload"], summary["n_tasks"], label["run"].fillna("")]
    floor = summary[(label["base"] == "floor").to_numpy()]
    floor_key = [k[floor.index] for k in key]
    per_task = pd.Series(floor["wall_us_per_task"].to_numpy(),
                         index=pd.MultiIndex.from_arrays(floor_key))
    wanted = pd.MultiIndex.from_arrays(key)
    base = per_task.reindex(wanted).to_numpy() if per_task.index.is_unique else np.nan
    return summary["wall_us_per_task"] - pd.Series(base, index=summary.index, dtype=float)


def choose_reference(backends: Iterable[str], preferred: str | None = None) -> str:
    """The backend others are compared with: ``preferred`` if given (it must be present), else
    ``reference`` if present, else the first name in sorted order."""
    names = sorted(set(backends))
    if not names:
        raise ValueError("no backends to compare: the runs have no rows")
    if preferred is not None:
        if preferred not in names:
            raise ValueError(f"reference backend {preferred!r} is not in these runs "
                             f"(they have {', '.join(names)}); pick one of those")
        return preferred
    return "reference" if "reference" in names else names[0]


def _safe_ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    num = num.astype(float)
    den = den.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den.where(den > 0)
    return r.where(np.isfinite(r))


def backend_comparison(meas: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each other backend against ``reference``, per (workload, n_tasks, stage).

    ``meas`` is a ``measures`` table. ``ratio`` is median(other) / median(reference) over all
    repeats of each; ``ratio_min``..``ratio_max`` span the per-repeat ratios, pairing repeat i
    of one backend with repeat i of the other (the runner interleaves backends, so a pair shares
    the machine's conditions); ``pairs`` counts them. Columns: ``workload``, ``n_tasks``,
    ``stage``, ``reference``, ``backend``, ``ref_median_s``, ``median_s``, ``ratio``,
    ``ratio_min``, ``ratio_max``, ``pairs``, ``ref_applicable``, ``applicable``. Rows exist
    where both backends have the (workload, n_tasks, stage).
    """
    cols = ["workload", "n_tasks", "stage", "reference", "backend", "ref_median_s",
            "median_s", "ratio", "ratio_min", "ratio_max", "pairs", "ref_applicable",
            "applicable"]
    cfg = ["workload", "n_tasks", "stage"]
    med = meas.groupby(["backend", *cfg], sort=False).agg(
        median_s=("seconds", "median"), applicable=("applicable", "any")).reset_index()
    ref = med[med["backend"] == reference].drop(columns="backend").rename(
        columns={"median_s": "ref_median_s", "applicable": "ref_applicable"})
    other = med[med["backend"] != reference]
    out = other.merge(ref, on=cfg, how="inner")
    if out.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    rep_ref = meas.loc[meas["backend"] == reference, [*cfg, "repeat", "seconds"]]
    pairs = meas[meas["backend"] != reference].merge(rep_ref, on=[*cfg, "repeat"],
                                                     suffixes=("", "_ref"))
    pairs["pair_ratio"] = _safe_ratio(pairs["seconds"], pairs["seconds_ref"])
    spread = pairs.groupby(["backend", *cfg], sort=False).agg(
        ratio_min=("pair_ratio", "min"), ratio_max=("pair_ratio", "max"),
        pairs=("pair_ratio", "count")).reset_index()
    out = out.merge(spread, on=["backend", *cfg], how="left")
    out["pairs"] = out["pairs"].fillna(0).astype("int64")
    out["reference"] = reference
    out["ratio"] = _safe_ratio(out["median_s"], out["ref_median_s"])
    return sort_rows(out[cols], ["workload", "n_tasks", "stage", "backend"])


def scaling_points(meas: pd.DataFrame) -> pd.DataFrame:
    """Median seconds per (backend, workload, stage, n_tasks), from a ``measures`` table.

    Columns: ``backend``, ``workload``, ``stage``, ``n_tasks``, ``seconds_median``,
    ``applicable``, ``repeats``.
    """
    key = ["backend", "workload", "stage", "n_tasks"]
    out = meas.groupby(key, sort=False).agg(
        seconds_median=("seconds", "median"), applicable=("applicable", "any"),
        repeats=("repeat", "nunique")).reset_index()
    return sort_rows(out, key)


def growth_exponents(points: pd.DataFrame) -> pd.DataFrame:
    """Fitted growth exponent per (backend, workload, stage) from ``scaling_points``.

    ``exponent`` is the least-squares slope of log(median seconds) against log(n_tasks) over the
    sizes with a positive median (``sizes`` counts them); NaN with fewer than two such sizes.
    Columns: ``backend``, ``workload``, ``stage``, ``sizes``, ``n_min``, ``n_max``,
    ``exponent``.
    """
    rows = []
    for (backend, workload, stage), g in points.groupby(["backend", "workload", "stage"],
                                                        sort=False):
        ok = g[g["seconds_median"].gt(0)]
        rows.append({
            "backend": backend, "workload": workload, "stage": stage,
            "sizes": int(ok["n_tasks"].nunique()),
            "n_min": int(ok["n_tasks"].min()) if len(ok) else pd.NA,
            "n_max": int(ok["n_tasks"].max()) if len(ok) else pd.NA,
            "exponent": fit_exponent(g["n_tasks"].tolist(), g["seconds_median"].tolist()),
        })
    cols = ["backend", "workload", "stage", "sizes", "n_min", "n_max", "exponent"]
    out = pd.DataFrame(rows, columns=cols)
    for name in ("n_min", "n_max"):
        out[name] = out[name].astype("Int64")
    return sort_rows(out, ["backend", "workload", "stage"])


def scaling_table(points: pd.DataFrame) -> pd.DataFrame:
    """Wide scaling table: one row per (backend, workload, stage), one column of median
    seconds per size (named ``n=<n_tasks>``, sizes ascending), then ``exponent``."""
    key = ["backend", "workload", "stage"]
    if points.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in [*key, "exponent"]})
    wide = points.pivot_table(index=key, columns="n_tasks", values="seconds_median",
                              aggfunc="first", dropna=False, sort=True)
    sizes = sorted(wide.columns)
    wide = wide[sizes]
    wide.columns = [f"n={int(n)}" for n in sizes]
    wide = wide.reset_index()
    wide.columns.name = None
    exps = growth_exponents(points)[[*key, "exponent"]]
    out = wide.merge(exps, on=key, how="left")
    return sort_rows(out, key)


def profile_stage_shares(profile_stages: pd.DataFrame) -> pd.DataFrame:
    """Self samples and share of all samples per stage, then ``idle``, ``import`` and
    ``unattributed`` as rows of their own (those with samples): over a whole profile the
    shares add up to 1."""
    out = profile_stages.groupby("stage", sort=False).agg(
        self_samples=("self_samples", "sum"), share=("share", "sum"),
        functions=("function", "nunique")).reset_index()
    return _by_category(out)


def _by_category(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` sorted stably by its ``stage`` column in ``PROFILE_CATEGORIES`` order."""
    rank = {name: i for i, name in enumerate(PROFILE_CATEGORIES)}
    return df.sort_values("stage", key=lambda c: c.map(rank).fillna(len(rank)),
                          kind="mergesort").reset_index(drop=True)


def profile_top(profile_stages: pd.DataFrame, per_stage: int = 5) -> pd.DataFrame:
    """The ``per_stage`` functions with most self samples in each stage (ties by name)."""
    if per_stage < 1:
        raise ValueError(f"per_stage must be >= 1, got {per_stage}")
    df = profile_stages.sort_values(["self_samples", "function"], ascending=[False, True],
                                    kind="mergesort")
    df = _by_category(df.groupby("stage", sort=False).head(per_stage))
    return df[["stage", "function", "self_samples", "share"]]



HEADLINE_COLUMNS: tuple[str, ...] = (
    "backend", "workload", "n_tasks", "repeats", "time_to_first_task_s", "wall_s",
    "top_stage", "top_stage_s", "top_share_of_wall", "previous", "change_stage",
    "change_ratio", "change_mark", "record_overhead", "record_overhead_cpu")
"""Columns of ``headline``, in order."""

CHANGE_COLUMNS: tuple[str, ...] = ("backend", "workload", "n_tasks", "previous", "stage",
                                   "ratio", "mark")
"""Columns of the ``changes`` table ``headline`` takes (one row per configuration)."""


def ranked_stages(summary: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``stage_summary`` ranked within each (backend, workload, n_tasks): the stage with the
    most busy seconds first (rank 1), not-applicable stages last (no rank), and each stage's
    ``share_of_wall`` (median busy seconds / median wall time of ``run_summary``; above 1 when
    parallel roles together are busy longer than the run lasted)."""
    if summary.empty:
        return summary.assign(rank=pd.Series(dtype="Int64"),
                              share_of_wall=pd.Series(dtype=float))
    walls = runs.set_index(_CONFIG)["wall_s_median"] if not runs.empty else pd.Series(
        dtype=float)
    out = summary.copy()
    keys = list(out[_CONFIG].itertuples(index=False, name=None))
    wall = np.array([float(walls.get(k, np.nan)) for k in keys], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["share_of_wall"] = out["seconds_median"].astype(float).to_numpy() / np.where(
            wall > 0, wall, np.nan)
    measured = out["applicable"].astype(bool) & out["seconds_median"].notna()
    rank = out["seconds_median"].where(measured).groupby(
        [out[c] for c in _CONFIG], sort=False).rank(method="first", ascending=False)
    out["rank"] = rank.astype("Int64")
    order = out.assign(_unranked=out["rank"].isna(), _r=out["rank"].fillna(0))
    order = sort_rows(order, [*_CONFIG]).sort_values(
        [*_CONFIG, "_unranked", "_r"], key=lambda c: _order_key(c) if c.name == "stage"
        else c, kind="mergesort")
    return order.drop(columns=["_unranked", "_r"]).reset_index(drop=True)


def headline(summary: pd.DataFrame, runs: pd.DataFrame,
             changes: pd.DataFrame | None = None) -> pd.DataFrame:
    """The answer first: one row per (backend, workload, n_tasks) of ``run_summary``.

    ``time_to_first_task_s`` and ``wall_s`` are the run summary's medians; ``top_stage`` is
    rank 1 of ``ranked_stages`` with its median busy seconds (``top_stage_s``) and
    ``top_share_of_wall``; NaN / empty when stages were not recorded. ``changes``
    (``CHANGE_COLUMNS``: the biggest change against the previous run of the same
    configuration, see ``biggest_change``) fills ``previous``, ``change_stage``,
    ``change_ratio`` and ``change_mark``; configurations without one have them empty.
    ``record_overhead`` is the run summary's (NaN without record-off runs).
    """
    ranked = ranked_stages(summary, runs)
    top = ranked[ranked["rank"] == 1].set_index(_CONFIG) if not ranked.empty else None
    ch = changes.set_index(_CONFIG) if changes is not None and not changes.empty else None
    rows = []
    for r in runs.itertuples(index=False):
        k = (r.backend, r.workload, r.n_tasks)
        row: dict[str, object] = {
            "backend": r.backend, "workload": r.workload, "n_tasks": int(r.n_tasks),
            "repeats": int(r.repeats), "time_to_first_task_s": r.time_to_first_task_s_median,
            "wall_s": r.wall_s_median, "top_stage": "", "top_stage_s": np.nan,
            "top_share_of_wall": np.nan, "previous": "", "change_stage": "",
            "change_ratio": np.nan, "change_mark": "",
            "record_overhead": float(getattr(r, "record_overhead", np.nan)),
            "record_overhead_cpu": float(getattr(r, "record_overhead_cpu", np.nan))}
        if top is not None and k in top.index:
            t = top.loc[k]
            row.update(top_stage=str(t["stage"]), top_stage_s=float(t["seconds_median"]),
                       top_share_of_wall=float(t["share_of_wall"]))
        if ch is not None and k in ch.index:
            c = ch.loc[k]
            row.update(previous=str(c["previous"]), change_stage=str(c["stage"]),
                       change_ratio=float(c["ratio"]), change_mark=str(c["mark"]))
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(HEADLINE_COLUMNS))
    for name in ("time_to_first_task_s", "wall_s", "top_stage_s", "top_share_of_wall",
                 "change_ratio", "record_overhead", "record_overhead_cpu"):
        out[name] = out[name].astype(float)
    return out


def biggest_change(compared: pd.DataFrame) -> pd.Series | None:
    """The row of a ``compare`` table (previous run A, this run B) with the biggest change:
    the largest |log ratio| among significant rows (``+`` or ``-``), else among all rows
    with a finite positive ratio; None when no row has one."""
    ok = compared[np.isfinite(compared["ratio"].astype(float)) & (compared["ratio"] > 0)]
    if ok.empty:
        return None
    marked = ok[ok["mark"].isin(["+", "-"])]
    pool = marked if not marked.empty else ok
    size = np.abs(np.log(pool["ratio"].astype(float)))
    return pool.loc[size.idxmax()]
