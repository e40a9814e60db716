"""Render ``report.html``, ``report.md`` and ``figures/*.png`` from stored runs.

Rules of this module:

- The report leads with the answer: a headline per configuration (time to first task, wall
  time, the stage that dominates and its share of wall, the biggest change against the
  previous run of the same configuration in the results store), then the stage table ranked,
  then the run summary and the figures, and the metadata last.
- ``report.html`` is one self-contained file: every figure is embedded (``data:`` URI), so
  the page reads the same mailed on its own. ``report.md`` links ``figures/*.png``.
- Reports are rendered from stored data only (run folders, and the results store for the
  history: only runs stored up to the one reported, so a later run does not change an
  earlier report); rendering never measures and never reads the clock. Rendering the same
  runs into the same place again gives byte-identical Markdown, HTML and PNG files.
- Figures this module owns in ``figures/`` (names starting ``stacked``, ``timeline-``,
  ``scaling-``, ``ratio-``, ``trend-``) that a render did not produce are deleted, so a folder
  never shows a stale figure. Other files there are left alone.
- Several runs are combined into one report. Runs holding the same (backend, workload,
  n_tasks) are told apart by their name: each backend is then labelled ``backend [run]``,
  so two runs of one configuration are compared side by side like two backends.
- Sections appear when their data does: scaling needs two sizes of one (backend, workload);
  comparisons need two backends; the profile section needs ``profile_stages.csv``; trends
  need two stored runs of a configuration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from harness.report import figures as F
from harness.report import tables as T
from harness.report.markup import (
    Block,
    Bullets,
    Details,
    Heading,
    Image,
    Para,
    Table,
    flat_items,
    format_value,
    html_document,
    markdown_document,
    slug,
    text_table,
)
from harness.report.schema import Run, read_run

__all__ = ["FIGURES_DIR", "HTML_FILE", "MAX_TRENDS", "MD_FILE", "combine_runs",
           "headline_text", "profile_summary", "render_report", "report_blocks"]

HTML_FILE = "report.html"
MD_FILE = "report.md"
FIGURES_DIR = "figures"
MAX_TRENDS = 12
"""At most this many trend figures in one report (the configurations with most runs)."""
_OWNED_FIGURE = re.compile(r"^(stacked|timeline-|scaling-|ratio-|trend-).*\.png$")
_CFG = ["backend", "workload", "n_tasks"]

FigureJob = tuple[str, Callable[[], Figure]]


def _labelled(runs: Sequence[Run]) -> list[Run]:
    """The runs, with backends relabelled ``backend [run]`` when two runs share a
    configuration (see the module rules)."""
    owner: dict[tuple[object, ...], str] = {}
    clash = False
    for run in runs:
        for key in run.runs[_CFG].drop_duplicates().itertuples(index=False, name=None):
            if key in owner and owner[key] != run.name:
                clash = True
            owner[key] = run.name
    if not clash:
        return list(runs)

    def rename(df: pd.DataFrame, name: str) -> pd.DataFrame:
        return df.assign(backend=[f"{b} [{name}]" for b in df["backend"]]) if len(df) else df

    out = []
    for run in runs:
        ref = run.meta.get("reference_backend")
        meta = {**run.meta, "reference_backend": f"{ref} [{run.name}]"} if ref else run.meta
        out.append(replace(run, meta=meta, stages=rename(run.stages, run.name),
                           runs=rename(run.runs, run.name), spans=rename(run.spans, run.name)))
    return out


def combine_runs(runs: Sequence[Run]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(stages, runs, spans)`` of all runs concatenated (backends relabelled where two runs
    share a configuration)."""
    if not runs:
        raise ValueError("no runs given: pass at least one")

    def cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        non_empty = [f for f in frames if not f.empty]
        return pd.concat(non_empty, ignore_index=True) if non_empty else frames[0]

    runs = _labelled(runs)
    return (cat([r.stages for r in runs]), cat([r.runs for r in runs]),
            cat([r.spans for r in runs]))


# --- headline ------------------------------------------------------------------------------


def _pct(share: float) -> str:
    return f"{format_value(share * 100.0)} %"


def _signed_pct(share: float) -> str:
    return f"{'+' if share >= 0 else '-'}{format_value(abs(share) * 100.0)} %"


_MARK_WORDS = {"+": "worse", "-": "better", "~": "not significant", "n/a": "n/a"}


def headline_text(row: pd.Series, history: bool) -> str:
    """One sentence of the headline (``tables.headline`` row), numbers as the tables print
    them."""
    cfg = f"{row['backend']} · {row['workload']} · n={int(row['n_tasks']):,}"
    overhead = row.get("record_overhead", float("nan"))
    both = overhead == overhead  # not NaN: repeats with recording on and off
    parts = [f"first task after {format_value(row['time_to_first_task_s'])} s"
             + (" (recording on)" if both else ""),
             f"last result after {format_value(row['wall_s'])} s"
             + (" (recording off)" if both else "")]
    if row["top_stage"]:
        parts.append(f"{row['top_stage']} dominates with {format_value(row['top_stage_s'])} s "
                     f"busy, {_pct(row['top_share_of_wall'])} of wall")
    else:
        parts.append("stage recording was off")
    if both:
        cpu = row.get("record_overhead_cpu", float("nan"))
        parts.append(f"recording overhead {_signed_pct(overhead)} (median wall time with "
                     f"recording on / off - 1)" + (f", {_signed_pct(cpu)} of CPU time"
                                                  if cpu == cpu else ""))
    text = f"{cfg}: " + "; ".join(parts) + "."
    if row["previous"]:
        text += (f" Biggest change against {row['previous']}: {row['change_stage']} "
                 f"×{format_value(row['change_ratio'])} "
                 f"({row['change_mark']} {_MARK_WORDS.get(row['change_mark'], '')}).")
    elif history:
        text += " No earlier run of this configuration on this machine in the results store."
    return text


def _headline_display(head: pd.DataFrame, history: bool) -> pd.DataFrame:
    out = pd.DataFrame({
        "backend": head["backend"], "workload": head["workload"], "n_tasks": head["n_tasks"],
        "first task s": head["time_to_first_task_s"], "wall s": head["wall_s"],
        "top stage": head["top_stage"].replace("", "n/a"), "top stage busy s": head[
            "top_stage_s"], "% of wall": head["top_share_of_wall"] * 100.0,
        "recording overhead %": head["record_overhead"] * 100.0})
    if history:
        out["against"] = head["previous"].replace("", "n/a")
        out["biggest change"] = head["change_stage"].replace("", "n/a")
        out["ratio"] = head["change_ratio"]
        out["mark"] = head["change_mark"].replace("", "n/a")
    return out


def _stage_display(ranked: pd.DataFrame) -> pd.DataFrame:
    return ranked[["backend", "workload", "n_tasks", "rank", "stage", "repeats",
                   "seconds_median", "seconds_min", "seconds_max", "share_of_wall",
                   "us_per_task_median", "nbytes_median", "messages_median"]].assign(
        share_of_wall=lambda d: d["share_of_wall"] * 100.0).rename(columns={
            "seconds_median": "busy s (median)", "seconds_min": "min",
            "seconds_max": "max", "share_of_wall": "% of wall",
            "us_per_task_median": "µs/task", "nbytes_median": "bytes",
            "messages_median": "messages"})


def _run_display(summary: pd.DataFrame) -> pd.DataFrame:
    return summary.assign(record_overhead=summary["record_overhead"] * 100.0,
                          record_overhead_cpu=summary["record_overhead_cpu"] * 100.0).rename(
                              columns={
        "repeats": "repeats (wall)", "recorded_repeats": "recorded repeats",
        "wall_recorded_s_median": "wall s recorded (median)",
        "record_overhead": "recording overhead %",
        "record_overhead_cpu": "recording overhead % (CPU)",
        "wall_s_median": "wall s (median)", "wall_s_min": "wall min", "wall_s_max": "wall max",
        "time_to_first_task_s_median": "first task s (median)",
        "time_to_first_task_s_min": "first task min",
        "time_to_first_task_s_max": "first task max", "tasks_run_median": "tasks run",
        "wall_us_per_task": "wall µs/task", "overhead_us_per_task": "µs/task above floor",
        "peak_rss_client_mib": "client peak MiB", "peak_rss_scheduler_mib": "scheduler peak MiB",
        "peak_rss_worker_mib": "worker peak MiB (largest)"})


# --- history from the store ----------------------------------------------------------------


def _store_id(store: object, run: Run) -> int | None:
    if run.label.startswith("@") and run.label[1:].isdigit():
        return int(run.label[1:])
    if run.path.is_dir():
        return store.find_folder(run.path)  # type: ignore[attr-defined]
    return None


def _history(runs: Sequence[Run], store_path: Path | None, factor: float
             ) -> tuple[pd.DataFrame | None, list[tuple[str, pd.DataFrame]]]:
    """(changes per configuration for the headline, trends) from the store; (None, []) when
    there is no store. Backends are labelled as ``combine_runs`` labels them."""
    if store_path is None or not Path(store_path).is_file():
        return None, []
    from harness.report.compare import compare_frames
    from harness.report.trend import trend_table
    from harness.store.configs import config_label
    from harness.store.db import ResultsStore

    changes: list[dict[str, object]] = []
    trends: list[tuple[int, str, pd.DataFrame]] = []
    labelled = _labelled(runs)
    with ResultsStore(store_path, create=False) as store:
        for run, shown in zip(runs, labelled, strict=True):
            run_id = _store_id(store, run)
            if run_id is None:
                continue
            machine = store.stored_run(run_id).machine
            this = T.measures(run.stages, run.runs)
            for cfg in store.configs_of(run_id).itertuples(index=False):
                b_shown = cfg.backend if shown is run else f"{cfg.backend} [{run.name}]"
                prev = store.previous(run_id, int(cfg.config_id))
                if prev is not None:
                    a = store.measures([prev.id]).drop(columns="run_id")
                    pick = ((this["backend"] == cfg.backend) & (this["workload"] == cfg.workload)
                            & (this["n_tasks"] == cfg.n_tasks))
                    pick_a = ((a["backend"] == cfg.backend) & (a["workload"] == cfg.workload)
                              & (a["n_tasks"] == cfg.n_tasks))
                    table = compare_frames(a[pick_a], this[pick], factor=factor)
                    best = T.biggest_change(table)
                    if best is not None:
                        commit = (prev.git_commit or "no commit")[:8]
                        changes.append({"backend": b_shown, "workload": cfg.workload,
                                        "n_tasks": int(cfg.n_tasks),
                                        "previous": f"@{prev.id} ({commit})",
                                        "stage": best["stage"], "ratio": float(best["ratio"]),
                                        "mark": best["mark"]})
                trend = trend_table(store, int(cfg.config_id), machine, upto=run_id,
                                    factor=factor)
                if trend["run_id"].nunique() >= 2:
                    trends.append((trend["run_id"].nunique(), config_label(cfg.config), trend))
    trends.sort(key=lambda t: -t[0])
    return (pd.DataFrame(changes, columns=list(T.CHANGE_COLUMNS)),
            [(label, df) for _, label, df in trends[:MAX_TRENDS]])


# --- sections --------------------------------------------------------------------------------


def _run_blocks(run: Run) -> list[Block]:
    meta = run.meta
    rows = [("created_utc", str(meta["created_utc"])),
            ("git_commit", str(meta["git_commit"] or "unknown")),
            ("warmups (dropped)", str(meta["warmups"]))]
    if run.label:
        rows.append(("stored as", run.label))
    for section in ("parameters", "versions", "machine"):
        rows += flat_items(section, meta[section])
    blocks: list[Heading | Para | Bullets | Table | Image] = [
        Table(pd.DataFrame(rows, columns=["setting", "value"]))]
    if meta["notes"]:
        blocks += [Para("Notes:"), Bullets(tuple(meta["notes"]))]
    merged = meta.get("merged_stages") or {}
    if merged:
        blocks += [Para("Merged stages (this backend measures them as one):"),
                   Bullets(tuple(f"{k}: {v}" for k, v in sorted(merged.items())))]
    return [Details(f"Run {run.name}: settings, versions, machine, notes", tuple(blocks))]


def _warnings(runs: Sequence[Run]) -> list[Block]:
    items: list[str] = []
    for run in runs:
        for f in run.meta.get("failed_cells") or []:
            items.append(f"{run.name}: {f['cell']} has no result: {f['error']}")
        stop = run.meta.get("interrupted")
        if stop:
            items.append(f"{run.name}: interrupted (Ctrl-C) during {stop['cell']}: "
                         f"{stop['repeats_kept']} repeat(s) of it kept; not run: "
                         f"{', '.join(stop['not_run']) or 'none'}")
    return [Para("Incomplete run:"), Bullets(tuple(items))] if items else []


def _profile_blocks(run: Run, out_dir: Path) -> list[Block]:
    prof = run.profile_stages
    assert prof is not None
    blocks: list[Block] = [Heading(f"Profile: {run.name}", 3)]
    info = run.meta.get("profile")
    if info:
        blocks.append(Para(profile_summary(info)))
    else:
        blocks.append(Para("meta.json has no profile summary (attributed share unknown)."))
    shares = T.profile_stage_shares(prof)
    shares["share %"] = shares.pop("share") * 100.0
    blocks.append(Table(shares, "Self samples per stage"))
    top = T.profile_top(prof).assign(share=lambda d: d["share"] * 100.0).rename(
        columns={"share": "share %"})
    blocks.append(Table(top, "Top functions per stage (self samples)"))
    pdir = run.profiles_dir
    if pdir is not None:
        files = sorted(p for p in pdir.rglob("*") if p.is_file())
        links = tuple((p.relative_to(pdir).as_posix(),
                       Path(os.path.relpath(p, out_dir)).as_posix()) for p in files)
        if links:
            blocks += [Para("Profile files (speedscope JSON opens at https://www.speedscope.app):"),
                       Bullets(links)]
    return blocks


def profile_summary(info: dict[str, object]) -> str:
    """The profile's summary line from ``meta.json``'s ``profile``: attributed / busy / idle
    (runs profiled before those counts were kept give the attributed share of busy only)."""
    samples, errors = int(info["samples"]), int(info["errors"])  # type: ignore[call-overload]
    share = float(info["attributed_share"])  # type: ignore[arg-type]
    if "busy_samples" not in info:
        return (f"{share:.1%} of the busy samples attributed to a stage; {samples:,} samples "
                f"({errors:,} sampling errors).")
    busy, idle = int(info["busy_samples"]), int(info["idle_samples"])  # type: ignore[call-overload]
    attributed = int(info["attributed_samples"])  # type: ignore[call-overload]
    imports = int(info.get("import_samples") or 0)  # type: ignore[call-overload]

    def of_all(n: int) -> str:
        return f"{n / samples:.1%}" if samples else "0.0%"

    return (f"{samples:,} samples: {attributed:,} attributed to a stage ({share:.1%} of the "
            f"{busy:,} busy ones, {busy - attributed:,} unattributed), {idle:,} idle "
            f"({of_all(idle)} of all)" + (f", {imports:,} importing" if imports else "") +
            f"; {errors:,} sampling errors. The shares below are of all samples and add up "
            f"to 100 %.")


def _timeline_jobs(spans: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(file stem, caption, spans of one run) per (backend, workload): largest n, first repeat."""
    out: list[tuple[str, str, pd.DataFrame]] = []
    if spans.empty:
        return out
    for (backend, workload), g in spans.groupby(["backend", "workload"], sort=True):
        n = int(g["n_tasks"].max())
        g = g[g["n_tasks"] == n]
        rep = int(g["repeat"].min())
        out.append((f"timeline-{slug(str(backend))}-{slug(str(workload))}",
                    f"{backend} · {workload} · n={n:,} · repeat {rep}", g[g["repeat"] == rep]))
    return out


def report_blocks(runs: Sequence[Run], out_dir: Path, reference: str | None = None,
                  store: Path | None = None, factor: float = 1.10
                  ) -> tuple[list[Block], list[FigureJob]]:
    """The report's content and the figures it refers to (file name, function making it).

    ``store``: the results store's file, for the changes against previous runs and the
    trends (left out when None or when the file does not exist)."""
    stages, runs_df, spans = combine_runs(runs)
    summary = T.stage_summary(stages)
    rsum = T.run_summary(runs_df)
    changes, trends = _history(runs, store, factor)
    history = changes is not None
    jobs: list[FigureJob] = []

    def add_figure(stem: str, make: Callable[[], Figure], alt: str) -> Image:
        # Slugs of different labels can coincide ("a b", "a_b"): number the later ones.
        name, i = f"{stem}.png", 1
        while any(name == n for n, _ in jobs):
            i += 1
            name = f"{stem}-{i}.png"
        jobs.append((name, make))
        return Image(f"{FIGURES_DIR}/{name}", alt)

    names = ", ".join(r.name for r in runs)
    head = T.headline(summary, rsum, changes)
    blocks: list[Block] = [Heading(f"stagecost report: {names}", 1)]
    blocks += [Para(headline_text(row, history), strong=True) for _, row in head.iterrows()]
    blocks += _warnings(runs)
    blocks.append(Table(_headline_display(head, history)))

    blocks.append(Heading("Stage costs, ranked", 2))
    if summary.empty:
        blocks.append(Para("No stage costs recorded (stage recording was off)."))
    else:
        blocks += [Para("Per configuration, the stage with the most busy seconds first. Busy "
                        "seconds are the sum of a stage's spans over all process roles "
                        "(medians over repeats, min and max beside them); % of wall is busy "
                        "time over the median wall time, and can pass 100 % since roles run "
                        "in parallel and stages schedule, dispatch and execute overlap. n/a "
                        "marks a stage the backend does not have (never 0)."),
                   Table(_stage_display(T.ranked_stages(summary, rsum)))]

    blocks += [Heading("Run summary", 2),
               Para("Wall times come from the repeats run with stage recording off; stage "
                    "times and time to first task from the repeats with it on, interleaved "
                    "with them. Recording overhead % is median wall time recorded / "
                    "unrecorded - 1: what measuring the stages cost each backend; (CPU) is "
                    "the same of the CPU seconds the run's processes used, which other "
                    "work on the machine disturbs far less than wall time."),
               Table(_run_display(rsum))]

    blocks.append(Heading("Figures", 2))
    if not summary.empty:
        blocks += [Para("Stage costs per task, stacked; side by side panels share one y axis, "
                        "so heights compare across backends (totals are written on the "
                        "bars)."),
                   add_figure("stacked", lambda: F.stacked_stages_figure(summary, rsum),
                              "stacked stage costs")]

    timelines = _timeline_jobs(spans)
    if timelines:
        blocks.append(Heading("Timelines", 3))
        for stem, caption, part in timelines:
            blocks += [Para(f"Spans of {caption}."),
                       add_figure(stem, partial(F.timeline_figure, part),
                                  f"timeline {caption}")]

    meas = T.measures(stages, runs_df)
    points = T.scaling_points(meas)
    sizes = points.groupby(["backend", "workload"])["n_tasks"].nunique()
    if not points.empty and (sizes >= 2).any():
        exps = T.growth_exponents(points)
        table = T.scaling_table(points)
        table = table.rename(columns={c: f"s at n={int(c[2:]):,}" for c in table.columns
                                      if str(c).startswith("n=")})
        blocks += [Heading("Scaling", 3),
                   Para("Median seconds per size; exponent k is the least-squares slope of "
                        "log(seconds) against log(n_tasks): time grows like n^k. n/a with "
                        "fewer than two sizes."),
                   Table(table)]
        for workload in sorted(points["workload"].unique()):
            part = points[points["workload"] == workload]
            if part.groupby("backend")["n_tasks"].nunique().max() < 2:
                continue
            blocks.append(add_figure(f"scaling-{slug(str(workload))}",
                                     partial(F.scaling_figure, part, exps),
                                     f"scaling {workload}"))

    backends = sorted(meas["backend"].unique()) if not meas.empty else []
    if len(backends) >= 2:
        labelled = _labelled(runs)
        preferred = reference or next((r.meta["reference_backend"] for r in labelled
                                       if r.meta.get("reference_backend")), None)
        if preferred not in backends and reference is None:
            preferred = None
        ref = T.choose_reference(backends, preferred)
        comp = T.backend_comparison(meas, ref)
        blocks += [Heading(f"Backends compared with {ref}", 3),
                   Para("ratio = median(backend) / median(reference); > 1 is slower than the "
                        "reference. ratio min..max span the per-repeat ratios (repeat i paired "
                        "with repeat i)."),
                   Table(comp.drop(columns=["reference", "ref_applicable", "applicable"])
                         .rename(columns={"ref_median_s": f"{ref} s (median)",
                                          "median_s": "s (median)"}))]
        for workload in sorted(comp["workload"].unique()):
            part = comp[comp["workload"] == workload].assign(
                series=lambda d: [f"{b} n={n:,}" for b, n in zip(d["backend"], d["n_tasks"],
                                                                  strict=True)])
            blocks.append(add_figure(
                f"ratio-{slug(str(workload))}",
                partial(F.ratio_figure, part, title=f"{workload}: ratio to {ref}",
                        reference_label=ref),
                f"ratios {workload}"))

    if trends:
        from harness.report.trend import trend_figure

        blocks += [Heading("History", 3),
                   Para("Median seconds per stage over the stored runs of each configuration "
                        "on this machine, up to this run; a ringed point is marked as "
                        "`stagecost compare` marks it against the run before (+ worse, "
                        "- better).")]
        for label, trend in trends:
            blocks.append(add_figure(f"trend-{slug(label)}",
                                     partial(trend_figure, trend, title=label),
                                     f"trend {label}"))

    for run in runs:
        if run.profile_stages is not None:
            blocks += _profile_blocks(run, out_dir)

    blocks.append(Heading("Runs", 2))
    for run in runs:
        blocks += _run_blocks(run)
    return blocks, jobs


def terminal_summary(runs: Sequence[Path | str | Run], *, store: Path | None = None,
                     factor: float = 1.10, width: int = 100) -> str:
    """What ``stagecost run`` prints: the report's headline (the same sentences, wrapped to
    ``width``), then the ranked stage table with the columns that fit a terminal."""
    import textwrap

    loaded = [r if isinstance(r, Run) else read_run(r) for r in runs]
    stages, runs_df, _ = combine_runs(loaded)
    summary = T.stage_summary(stages)
    rsum = T.run_summary(runs_df)
    changes, _ = _history(loaded, store, factor)
    head = T.headline(summary, rsum, changes)
    parts = [textwrap.fill(headline_text(row, changes is not None), width,
                           subsequent_indent="  ") for _, row in head.iterrows()]
    if not summary.empty:
        ranked = _stage_display(T.ranked_stages(summary, rsum))
        parts.append(text_table(ranked[["backend", "workload", "n_tasks", "rank", "stage",
                                        "busy s (median)", "% of wall", "µs/task"]]))
    return "\n\n".join(parts)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def render_report(runs: Sequence[Path | str | Run], out_dir: Path | str, *,
                  reference: str | None = None, store: Path | None = None,
                  factor: float = 1.10) -> tuple[Path, Path]:
    """(Re)render the report of ``runs`` (run folders, or ``Run`` objects such as stored
    runs) into ``out_dir``; return (html path, md path).

    ``reference`` names the backend others are compared with (default: ``reference_backend``
    from meta.json, else ``reference``, else the first by name). ``store`` is the results
    store's file, for history (changes, trends). Raises ``RunFolderError`` for a bad run
    folder and ``ValueError`` for a reference backend the runs do not have.
    """
    out = Path(out_dir)
    loaded = [r if isinstance(r, Run) else read_run(r) for r in runs]
    blocks, jobs = report_blocks(loaded, out, reference, store, factor)
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {}
    for name, make in jobs:
        path = F.save_figure(make(), fig_dir / name)
        images[f"{FIGURES_DIR}/{name}"] = path.read_bytes()
    for stale in sorted(fig_dir.iterdir()):
        if stale.is_file() and _OWNED_FIGURE.match(stale.name) and \
                f"{FIGURES_DIR}/{stale.name}" not in images:
            stale.unlink()
    title = next(b.text for b in blocks if isinstance(b, Heading))
    html_path, md_path = out / HTML_FILE, out / MD_FILE
    _write_text(md_path, markdown_document(blocks))
    _write_text(html_path, html_document(title, blocks, images))
    return html_path, md_path
