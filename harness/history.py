"""``stagecost history``: what the results store holds, filtered, and its trends.

Rules of this module:

- One row per (stored run, configuration): run reference ``@ID``, when, commit, machine, the
  configuration, repeats, median time to first task and wall time, and the wall time's mark
  against the previous run of the same configuration on the same machine (as ``compare``
  marks it).
- Filters narrow the rows (workload, backend, task count, commit prefix, machine, the K
  latest runs); ``--trend -o DIR`` writes ``history.html`` and ``history.md`` with one trend
  figure per configuration listed (``report.trend``), self-contained like a report.
- ``--asv-export DIR`` writes the listed runs as asv results (``store.asv``).
- Reads the store only (``--add`` records folders first); never measures.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from harness.exit_codes import UsageError
from harness.report.markup import (
    Block,
    Heading,
    Image,
    Para,
    Table,
    html_document,
    markdown_document,
    slug,
    text_table,
)
from harness.store.configs import config_label
from harness.store.db import ResultsStore, default_store_path

__all__ = ["history_command", "history_table"]


def history_table(store: ResultsStore, *, workloads: list[str] | None = None,
                  backends: list[str] | None = None, sizes: list[int] | None = None,
                  commit: str | None = None, machine: str | None = None,
                  last: int | None = None, factor: float = 1.10) -> pd.DataFrame:
    """The listing (see the module rules), oldest first."""
    from harness.report.compare import compare_frames

    rows = store.listing()
    cols = ["run", "created_utc", "commit", "machine", "backend", "workload", "n_tasks",
            "setup", "repeats", "first_task_s", "wall_s", "wall_vs_previous", "mark",
            "config_id"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    meas = store.measures(rows["id"].unique().tolist())
    meas = meas[meas["stage"].isin(["wall", "time_to_first_task"])]
    key = ["run_id", "backend", "workload", "n_tasks"]
    by_cfg = {k: g for k, g in meas.groupby(key, sort=False)}
    out = []
    previous: dict[tuple[int, str], pd.DataFrame] = {}
    for r in rows.itertuples(index=False):
        mine = by_cfg.get((r.id, r.backend, r.workload, r.n_tasks), meas.iloc[0:0])
        wall = mine[mine["stage"] == "wall"]
        first = mine[(mine["stage"] == "time_to_first_task") & mine["applicable"]]
        ratio, mark = math.nan, ""
        before = previous.get((r.config_id, r.machine))
        if before is not None and not wall.empty:
            table = compare_frames(before.drop(columns="run_id"), wall.drop(columns="run_id"),
                                   factor=factor)
            if not table.empty:
                ratio, mark = float(table["ratio"].iloc[0]), str(table["mark"].iloc[0])
        if not wall.empty:
            previous[(r.config_id, r.machine)] = wall
        label = config_label(r.config).split(" · ", 3)
        out.append({"run": f"@{r.id}", "created_utc": r.created_utc,
                    "commit": (r.git_commit or "")[:8] or "n/a", "machine": r.machine,
                    "backend": r.backend, "workload": r.workload, "n_tasks": int(r.n_tasks),
                    "setup": label[3] if len(label) > 3 else "",
                    "repeats": int(wall["repeat"].nunique()),
                    "first_task_s": float(first["seconds"].median()) if len(first) else math.nan,
                    "wall_s": float(wall["seconds"].median()) if len(wall) else math.nan,
                    "wall_vs_previous": ratio, "mark": mark or "n/a",
                    "config_id": int(r.config_id), "_id": int(r.id)})
    df = pd.DataFrame(out)
    keep = pd.Series(True, index=df.index)
    if workloads:
        keep &= df["workload"].isin(workloads)
    if backends:
        keep &= df["backend"].isin(backends)
    if sizes:
        keep &= df["n_tasks"].isin(sizes)
    if commit:
        keep &= df["commit"].str.startswith(commit[:8])
    if machine:
        keep &= df["machine"] == machine
    df = df[keep]
    if last is not None:
        ids = sorted(df["_id"].unique(), key=list(rows["id"].unique()).index)[-last:]
        df = df[df["_id"].isin(ids)]
    return df.drop(columns="_id").reset_index(drop=True)[cols]


def _write_trends(store: ResultsStore, listing: pd.DataFrame, out: Path,
                  factor: float) -> tuple[Path, Path]:
    from harness.report.figures import save_figure
    from harness.report.trend import trend_figure, trend_table

    blocks: list[Block] = [
        Heading(f"stagecost history: {store.path.name}", 1),
        Para("Median seconds per stage over the stored runs of each configuration, per "
             "machine, oldest first; a ringed point is marked as `stagecost compare` marks it "
             f"against the run before (+ worse, - better; factor {factor:g})."),
        Table(listing.drop(columns="config_id"))]
    images: dict[str, bytes] = {}
    for (config_id, machine), _ in listing.groupby(["config_id", "machine"], sort=False):
        trend = trend_table(store, int(config_id), str(machine), factor=factor)
        key = store.db.execute("SELECT key FROM configs WHERE id = ?", (int(config_id),)
                               ).fetchone()[0]
        label = f"{config_label(key)} · {machine}"
        src = f"figures/trend-{slug(label)}.png"
        path = save_figure(trend_figure(trend, title=label), out / src)
        images[src] = path.read_bytes()
        blocks += [Heading(label, 3), Image(src, f"trend {label}")]
    md, html = out / "history.md", out / "history.html"
    md.write_text(markdown_document(blocks), encoding="utf-8")
    html.write_text(html_document(f"stagecost history: {store.path.name}", blocks, images),
                    encoding="utf-8")
    return html, md


def _repository() -> str:
    """The git repository stagecost runs from (where stored commits live), else ``..``."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ".."
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else ".."


def history_command(args: argparse.Namespace) -> int:
    """The ``history`` subcommand (see the module rules)."""
    from harness.output_paths import prepare_folder

    if args.trend and args.output is None:
        raise UsageError("--trend writes history.html and history.md: say where with -o DIR")
    if args.last is not None and args.last < 1:
        raise UsageError(f"--last must be at least 1, got {args.last}")
    if args.factor <= 1.0:
        raise UsageError(f"--factor must be above 1, got {args.factor}")
    if args.output is not None:
        prepare_folder(args.output)
    if args.asv_export is not None:
        prepare_folder(args.asv_export, what="--asv-export")
    path = default_store_path(args.store)
    with ResultsStore(path, create=bool(args.add)) as store:
        for folder in args.add:
            run_id, added = store.add_folder(folder)
            print(f"{folder}: {'stored as' if added else 'already stored as'} @{run_id}",
                  file=sys.stderr)
        listing = history_table(store, workloads=args.workload, backends=args.backend,
                                sizes=args.n_tasks, commit=args.commit,
                                machine=args.machine, last=args.last, factor=args.factor)
        if args.trend:
            html, _ = _write_trends(store, listing, args.output, args.factor)
            print(f"history: {html}  (and history.md)", file=sys.stderr)
        if args.asv_export is not None:
            from harness.store.asv import export_asv

            ids = sorted({int(r[1:]) for r in listing["run"]})
            files, left = export_asv(store, args.asv_export, ids, repo=_repository())
            print(f"asv results: {files} file(s) in {args.asv_export / 'results'}"
                  + (f"; {left} run(s) without a clean commit left out" if left else ""),
                  file=sys.stderr)
    if args.json:
        print(listing.to_json(orient="records"))
    elif listing.empty:
        print(f"no stored runs match (store: {path})")
    else:
        print(text_table(listing.drop(columns="config_id")))
    return 0
