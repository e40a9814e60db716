"""Render ``report.html``, ``report.md`` and ``figures/*.png`` from stored run folders.

Rules of this module:

- Reports are rendered from data on disk only (``schema.read_run``); rendering never measures
  and never reads the clock. The only dates shown come from ``meta.json``. Rendering the same
  folders into the same place again gives byte-identical Markdown, HTML and PNG files.
- Figures this module owns in ``figures/`` (names starting ``stacked``, ``timeline-``,
  ``scaling-``, ``ratio-``) that a render did not produce are deleted, so a folder never shows
  a stale figure. Other files there are left alone.
- Several run folders are combined into one report; two folders holding the same (backend,
  workload, n_tasks, repeat) are refused (that is a comparison: use ``compare``).
- Sections appear when their data does: scaling needs two sizes of one (backend, workload);
  comparisons need two backends; the profile section needs ``profile_stages.csv``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from harness.report import figures as F
from harness.report import tables as T
from harness.report.markup import (
    Block,
    Bullets,
    Heading,
    Image,
    Para,
    Table,
    html_document,
    markdown_document,
    slug,
)
from harness.report.schema import RUN_KEY, Run, RunFolderError, read_run

__all__ = ["FIGURES_DIR", "HTML_FILE", "MD_FILE", "combine_runs", "render_report",
           "report_blocks"]

HTML_FILE = "report.html"
MD_FILE = "report.md"
FIGURES_DIR = "figures"
_OWNED_FIGURE = re.compile(r"^(stacked|timeline-|scaling-|ratio-).*\.png$")

FigureJob = tuple[str, Callable[[], Figure]]


def combine_runs(runs: Sequence[Run]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(stages, runs, spans)`` of all runs concatenated.

    Raises ``RunFolderError`` when two folders hold the same (backend, workload, n_tasks,
    repeat), since their rows could not be told apart.
    """
    if not runs:
        raise ValueError("no run folders given: pass at least one")
    owner: dict[tuple[object, ...], str] = {}
    for run in runs:
        for key in run.runs[list(RUN_KEY)].itertuples(index=False, name=None):
            if key in owner and owner[key] != run.name:
                raise RunFolderError(
                    f"{run.path}: run {dict(zip(RUN_KEY, key, strict=True))} is also in "
                    f"{owner[key]}. Report these folders separately, or compare them with "
                    "`stagecost compare`")
            owner[key] = run.name

    def cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        non_empty = [f for f in frames if not f.empty]
        return pd.concat(non_empty, ignore_index=True) if non_empty else frames[0]

    return (cat([r.stages for r in runs]), cat([r.runs for r in runs]),
            cat([r.spans for r in runs]))


def _flat(prefix: str, value: object) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        out: list[tuple[str, str]] = []
        for k in sorted(value, key=str):
            out += _flat(f"{prefix}.{k}" if prefix else str(k), value[k])
        return out
    if isinstance(value, str):
        return [(prefix, value)]
    return [(prefix, json.dumps(value, sort_keys=True, ensure_ascii=False))]


def _run_blocks(run: Run) -> list[Block]:
    meta = run.meta
    rows = [("created_utc", str(meta["created_utc"])),
            ("git_commit", str(meta["git_commit"] or "unknown")),
            ("warmups (dropped)", str(meta["warmups"]))]
    for section in ("parameters", "versions", "machine"):
        rows += _flat(section, meta[section])
    blocks: list[Block] = [Heading(run.name, 3),
                           Table(pd.DataFrame(rows, columns=["setting", "value"]))]
    if meta["notes"]:
        blocks += [Para("Notes:"), Bullets(tuple(meta["notes"]))]
    merged = meta.get("merged_stages") or {}
    if merged:
        blocks += [Para("Merged stages (this backend measures them as one):"),
                   Bullets(tuple(f"{k}: {v}" for k, v in sorted(merged.items())))]
    return blocks


def _stage_display(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[["backend", "workload", "n_tasks", "stage", "repeats", "seconds_median",
                    "seconds_min", "seconds_max", "us_per_task_median", "nbytes_median",
                    "messages_median"]].rename(columns={
                        "seconds_median": "busy s (median)", "seconds_min": "min",
                        "seconds_max": "max", "us_per_task_median": "µs/task",
                        "nbytes_median": "bytes", "messages_median": "messages"})


def _run_display(summary: pd.DataFrame) -> pd.DataFrame:
    return summary.rename(columns={
        "wall_s_median": "wall s (median)", "wall_s_min": "wall min", "wall_s_max": "wall max",
        "time_to_first_task_s_median": "first task s (median)",
        "time_to_first_task_s_min": "first task min",
        "time_to_first_task_s_max": "first task max", "tasks_run_median": "tasks run",
        "wall_us_per_task": "wall µs/task"})


def _profile_blocks(run: Run, out_dir: Path) -> list[Block]:
    prof = run.profile_stages
    assert prof is not None
    blocks: list[Block] = [Heading(f"Profile: {run.name}", 3)]
    info = run.meta.get("profile")
    if info:
        blocks.append(Para(
            f"Samples attributed to a stage: {info['attributed_share']:.1%} of "
            f"{info['samples']:,} samples ({info['errors']:,} sampling errors)."))
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


def report_blocks(runs: Sequence[Run], out_dir: Path,
                  reference: str | None = None) -> tuple[list[Block], list[FigureJob]]:
    """The report's content and the figures it refers to (file name, function making it)."""
    stages, runs_df, spans = combine_runs(runs)
    summary = T.stage_summary(stages)
    rsum = T.run_summary(runs_df)
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
    blocks: list[Block] = [
        Heading(f"stagecost report: {names}", 1),
        Para("Busy seconds are the sum of a stage's spans over all process roles; values are "
             "medians over repeats with min and max beside them. n/a marks a stage the backend "
             "does not have (never 0). Stages schedule, dispatch and execute overlap in time, "
             "so busy time can exceed wall time."),
        Heading("Runs", 2),
    ]
    for run in runs:
        blocks += _run_blocks(run)

    blocks.append(Heading("Stage costs", 2))
    if summary.empty:
        blocks.append(Para("No stage costs recorded (stage recording was off)."))
    else:
        blocks.append(Table(_stage_display(summary)))
        blocks.append(add_figure("stacked", lambda: F.stacked_stages_figure(summary, rsum),
                                 "stacked stage costs"))

    blocks += [Heading("Run summary", 2), Table(_run_display(rsum))]

    timelines = _timeline_jobs(spans)
    if timelines:
        blocks.append(Heading("Timelines", 2))
        for stem, caption, part in timelines:
            blocks += [Para(f"Spans of {caption}."),
                       add_figure(stem, partial(F.timeline_figure, part),
                                  f"timeline {caption}")]

    for run in runs:
        if run.profile_stages is not None:
            blocks += _profile_blocks(run, out_dir)

    meas = T.measures(stages, runs_df)
    points = T.scaling_points(meas)
    sizes = points.groupby(["backend", "workload"])["n_tasks"].nunique()
    if not points.empty and (sizes >= 2).any():
        exps = T.growth_exponents(points)
        table = T.scaling_table(points)
        table = table.rename(columns={c: f"s at n={int(c[2:]):,}" for c in table.columns
                                      if str(c).startswith("n=")})
        blocks += [Heading("Scaling", 2),
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
        preferred = reference or next((r.meta["reference_backend"] for r in runs
                                       if r.meta.get("reference_backend")), None)
        ref = T.choose_reference(backends, preferred)
        comp = T.backend_comparison(meas, ref)
        blocks += [Heading(f"Backends compared with {ref}", 2),
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
    return blocks, jobs


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def render_report(run_dirs: Sequence[Path | str], out_dir: Path | str, *,
                  reference: str | None = None) -> tuple[Path, Path]:
    """(Re)render the report of ``run_dirs`` into ``out_dir``; return (html path, md path).

    ``reference`` names the backend others are compared with (default: ``reference_backend``
    from meta.json, else ``reference``, else the first by name). Raises ``RunFolderError`` for
    a bad run folder and ``ValueError`` for a reference backend the runs do not have.
    """
    out = Path(out_dir)
    runs = [read_run(d) for d in run_dirs]
    blocks, jobs = report_blocks(runs, out, reference)
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = set()
    for name, make in jobs:
        F.save_figure(make(), fig_dir / name)
        written.add(name)
    for stale in sorted(fig_dir.iterdir()):
        if stale.is_file() and _OWNED_FIGURE.match(stale.name) and stale.name not in written:
            stale.unlink()
    title = next(b.text for b in blocks if isinstance(b, Heading))
    html_path, md_path = out / HTML_FILE, out / MD_FILE
    _write_text(md_path, markdown_document(blocks))
    _write_text(html_path, html_document(title, blocks))
    return html_path, md_path
