"""Tests of the report layer: run-folder schema, tables, figures, rendering.

Run folders are synthesised (``harness.report.synthetic``) with known answers: stage i of a
backend costs ``scale * 0.5 µs * i * n**exponent``, so exponents and ratios are known.
"""

from __future__ import annotations

import base64
import dataclasses
import html.parser
import io
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from harness.report import figures as F
from harness.report import tables as T
from harness.report.markup import format_value, markdown_table
from harness.report.render import render_report
from harness.report.schema import (
    RUNS_FILE,
    STAGE_NAMES,
    STAGES_FILE,
    RunFolderError,
    read_run,
    write_tables,
)
from harness.report.stats import fit_exponent
from harness.report.synthetic import (
    SyntheticSpec,
    synthetic_meta,
    synthetic_profile,
    synthetic_tables,
)

NA_SPEC = SyntheticSpec(
    backends=("reference", "dask-distributed"),
    sizes=(1_000, 10_000),
    repeats=3,
    scale={"dask-distributed": 10.0},
    not_applicable={"dask-distributed": ("dispatch",)},
)


def make_run(path: Path, spec: SyntheticSpec = NA_SPEC, profile: bool = False,
             **meta: object) -> Path:
    stages, spans, runs = synthetic_tables(spec)
    extra: dict[str, object] = dict(meta)
    if profile:
        extra["profile"] = {"attributed_share": 0.83, "samples": 1000, "errors": 2}
    write_tables(path, stages, spans, runs, synthetic_meta(spec, **extra),
                 synthetic_profile() if profile else None)
    return path


def with_seed(spec: SyntheticSpec, seed: int) -> SyntheticSpec:
    return dataclasses.replace(spec, seed=seed)


def rewrite_csv(path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    """Apply ``edit`` to the CSV's text cells (in place, or by returning a new frame)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    new = edit(df)
    (df if new is None else new).to_csv(path, index=False)


# ---------------------------------------------------------------------------------- schema


def test_write_then_read_round_trips_types_and_bytes(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", profile=True)
    run = read_run(a)
    assert run.stages["n_tasks"].dtype == np.int64
    assert run.stages["seconds"].dtype == np.float64
    assert run.stages["applicable"].dtype == bool
    assert str(run.stages["nbytes"].dtype) == "Int64"
    assert run.profile_stages is not None and len(run.profile_stages) == 6
    na = run.stages[~run.stages["applicable"]]
    assert set(na["stage"]) == {"dispatch"} and na["seconds"].isna().all()
    # Writing what was read gives the same bytes (deterministic formatting, lossless floats).
    b = tmp_path / "b"
    write_tables(b, run.stages, run.spans, run.runs, run.meta, run.profile_stages)
    for name in ("meta.json", STAGES_FILE, RUNS_FILE, "spans.csv", "profile_stages.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r")
    rewrite_csv(run / STAGES_FILE, lambda df: df.drop(columns=["seconds"]))
    with pytest.raises(RunFolderError, match=r"stages\.csv.*missing column.*'seconds'"):
        read_run(run)


def test_unknown_stage_names_the_value_and_line(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r")

    def misspell(df: pd.DataFrame) -> None:
        df.loc[df["stage"] == "optimize", "stage"] = "optimise"

    rewrite_csv(run / STAGES_FILE, misspell)
    with pytest.raises(RunFolderError) as e:
        read_run(run)
    msg = str(e.value)
    assert "stages.csv" in msg and "optimise" in msg and "line" in msg and "generate" in msg


def test_wall_as_a_stage_points_to_runs_csv(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r")

    def add_wall(df: pd.DataFrame) -> None:
        df.loc[0, "stage"] = "wall"

    rewrite_csv(run / STAGES_FILE, add_wall)
    with pytest.raises(RunFolderError, match="runs.csv"):
        read_run(run)


def test_not_applicable_must_not_be_zero(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r")

    def zero(df: pd.DataFrame) -> None:
        df.loc[df["applicable"] == "False", "seconds"] = "0"

    rewrite_csv(run / STAGES_FILE, zero)
    with pytest.raises(RunFolderError, match="never 0"):
        read_run(run)


def test_applicable_stage_needs_seconds(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r")

    def drop(df: pd.DataFrame) -> None:
        df.loc[3, "seconds"] = ""

    rewrite_csv(run / STAGES_FILE, drop)
    with pytest.raises(RunFolderError, match=r"applicable stage has no seconds on line 5"):
        read_run(run)


def test_bad_numbers_are_located(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r")

    def garble(df: pd.DataFrame) -> None:
        df.loc[2, "seconds"] = "fast"

    rewrite_csv(run / STAGES_FILE, garble)
    with pytest.raises(RunFolderError, match=r"'seconds' is not a number on line 4"):
        read_run(run)

    def fraction(df: pd.DataFrame) -> None:
        df.loc[0, "seconds"] = "0.1"
        df.loc[0, "nbytes"] = "1.5"

    run = make_run(tmp_path / "r2")
    rewrite_csv(run / STAGES_FILE, fraction)
    with pytest.raises(RunFolderError, match=r"'nbytes' is not a whole number on line 2"):
        read_run(run)


@pytest.mark.parametrize(("change", "pattern"), [
    ({"schema_version": 2}, "newer stagecost"),
    ({"schema_version": "1"}, "schema_version"),
    ({"warmups": -1}, "warmups"),
    ({"merged_stages": {"schedule+dispach": "typo"}}, "merged_stages"),
    ({"profile": {"attributed_share": 1.5, "samples": 1, "errors": 0}}, "profile"),
])
def test_bad_meta_is_refused(tmp_path: Path, change: dict[str, object], pattern: str) -> None:
    run = make_run(tmp_path / "r")
    meta = json.loads((run / "meta.json").read_text())
    meta.update(change)
    (run / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RunFolderError, match=pattern):
        read_run(run)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="is not a folder"):
        read_run(tmp_path / "nowhere")
    run = make_run(tmp_path / "r")
    (run / RUNS_FILE).unlink()
    with pytest.raises(RunFolderError, match=r"runs\.csv: file is missing"):
        read_run(run)


def test_stage_rows_need_a_runs_row(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r")
    rewrite_csv(run / RUNS_FILE, lambda df: df.drop(index=[0]))
    with pytest.raises(RunFolderError, match="runs.csv lacks"):
        read_run(run)


def test_write_tables_refuses_bad_tables_before_writing(tmp_path: Path) -> None:
    stages, spans, runs = synthetic_tables(NA_SPEC)
    stages.loc[0, "seconds"] = -1.0
    target = tmp_path / "r"
    with pytest.raises(RunFolderError, match="negative seconds"):
        write_tables(target, stages, spans, runs, synthetic_meta(NA_SPEC))
    assert not target.exists()


# ---------------------------------------------------------------------------------- tables


def test_summary_keeps_not_applicable_distinct_from_zero() -> None:
    stages, _, _ = synthetic_tables(NA_SPEC)
    zero = (stages["backend"] == "reference") & (stages["stage"] == "optimize")
    stages.loc[zero, ["seconds", "us_per_task"]] = 0.0
    summary = T.stage_summary(stages)
    na = summary[(summary["backend"] == "dask-distributed") & (summary["stage"] == "dispatch")]
    measured_zero = summary[(summary["backend"] == "reference")
                            & (summary["stage"] == "optimize")]
    assert len(na) == 2 and not na["applicable"].any() and na["seconds_median"].isna().all()
    assert measured_zero["applicable"].all() and (measured_zero["seconds_median"] == 0.0).all()
    assert (na["repeats"] == 3).all()
    # ... and the rendering says so.
    assert format_value(float("nan")) == "n/a" and format_value(0.0) == "0"
    md = markdown_table(pd.concat([na, measured_zero])[["stage", "seconds_median"]])
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()[2:]]
    assert ["dispatch", "n/a"] in cells and ["optimize", "0"] in cells


def test_stage_totals_sum_roles_and_prefer_role_all() -> None:
    stages, _, _ = synthetic_tables(NA_SPEC)
    totals = T.stage_totals(stages)
    one = stages[(stages["backend"] == "reference") & (stages["n_tasks"] == 1000)
                 & (stages["repeat"] == 0) & (stages["stage"] == "execute")]
    row = totals[(totals["backend"] == "reference") & (totals["n_tasks"] == 1000)
                 & (totals["repeat"] == 0) & (totals["stage"] == "execute")]
    assert row["seconds"].item() == pytest.approx(one["seconds"].sum())
    assert row["roles"].item() == 3
    with_all = pd.concat([stages, one.iloc[[0]].assign(role="all", seconds=42.0)],
                         ignore_index=True)
    row = T.stage_totals(with_all).query(
        "backend == 'reference' and n_tasks == 1000 and repeat == 0 and stage == 'execute'")
    assert row["seconds"].item() == 42.0 and row["roles"].item() == 1


def test_run_summary_has_wall_and_first_task() -> None:
    _, _, runs = synthetic_tables(NA_SPEC)
    rs = T.run_summary(runs)
    assert len(rs) == 4
    assert (rs["wall_s_min"] <= rs["wall_s_median"]).all()
    assert (rs["wall_s_median"] <= rs["wall_s_max"]).all()
    assert (rs["time_to_first_task_s_median"] < rs["wall_s_median"]).all()
    assert rs["wall_us_per_task"].iloc[0] == pytest.approx(
        rs["wall_s_median"].iloc[0] / rs["n_tasks"].iloc[0] * 1e6)


def test_growth_exponent_recovers_known_exponents() -> None:
    spec = SyntheticSpec(backends=("linear", "quadratic"), sizes=(1_000, 10_000, 100_000),
                         exponent={"linear": 1.0, "quadratic": 2.0}, noise=0.02, seed=7)
    stages, _, runs = synthetic_tables(spec)
    exps = T.growth_exponents(T.scaling_points(T.measures(stages, runs)))
    lin = exps[exps["backend"] == "linear"]["exponent"]
    quad = exps[exps["backend"] == "quadratic"]["exponent"]
    assert len(lin) == 10 and len(quad) == 10  # 8 stages + time to first task + wall
    assert np.allclose(lin, 1.0, atol=0.02) and np.allclose(quad, 2.0, atol=0.02)
    assert (exps["sizes"] == 3).all()


def test_fit_exponent_edge_cases() -> None:
    n = [10, 100, 1000]
    assert fit_exponent(n, [2 * x ** 1.5 for x in n]) == pytest.approx(1.5)
    assert math.isnan(fit_exponent([100], [1.0]))
    assert math.isnan(fit_exponent([100, 100], [1.0, 2.0]))
    assert math.isnan(fit_exponent([10, 100], [float("nan"), 1.0]))
    assert fit_exponent([10, 100, 1000], [0.0, 1.0, 10.0]) == pytest.approx(1.0)


def test_scaling_table_exponent_nan_with_one_size() -> None:
    spec = SyntheticSpec(backends=("reference",), sizes=(1_000,), repeats=2)
    stages, _, runs = synthetic_tables(spec)
    table = T.scaling_table(T.scaling_points(T.measures(stages, runs)))
    assert list(table.columns) == ["backend", "workload", "stage", "n=1000", "exponent"]
    assert table["exponent"].isna().all()


def test_backend_comparison_ratios_and_spread() -> None:
    stages, _, runs = synthetic_tables(NA_SPEC)
    comp = T.backend_comparison(T.measures(stages, runs), "reference")
    assert set(comp["backend"]) == {"dask-distributed"}
    measured = comp[comp["stage"].isin(STAGE_NAMES) & (comp["stage"] != "dispatch")]
    assert len(measured) == 2 * 7
    assert np.allclose(measured["ratio"], 10.0, rtol=0.05)
    assert (measured["ratio_min"] <= measured["ratio"]).all()
    assert (measured["ratio"] <= measured["ratio_max"]).all()
    assert (measured["pairs"] == 3).all()
    na = comp[comp["stage"] == "dispatch"]
    assert na["ratio"].isna().all() and not na["applicable"].any()
    assert T.choose_reference(["b", "reference"]) == "reference"
    with pytest.raises(ValueError, match="not in these runs"):
        T.choose_reference(["a", "b"], "c")


def test_profile_tables() -> None:
    prof = synthetic_profile()
    shares = T.profile_stage_shares(prof)
    assert list(shares["stage"]) == ["update_graph", "schedule", "execute", "idle",
                                     "unattributed"]
    assert shares["share"].sum() == pytest.approx(1.0)
    top = T.profile_top(prof, per_stage=1)
    assert list(top["function"]) == ["build_tasks", "pick_worker", "run_task", "select",
                                     "helper"]


def test_profile_summary_says_attributed_busy_and_idle() -> None:
    from harness.report.render import profile_summary

    info = {"attributed_share": 0.75, "samples": 51, "errors": 0, "attributed_samples": 30,
            "unattributed_samples": 10, "busy_samples": 40, "idle_samples": 11,
            "import_samples": 0}
    text = profile_summary(info)
    assert text.startswith("51 samples: 30 attributed to a stage (75.0% of the 40 busy "
                           "ones, 10 unattributed), 11 idle (21.6% of all)")
    old = profile_summary({"attributed_share": 1.0, "samples": 51, "errors": 0})
    assert "of the busy samples" in old and "51 samples" in old


# --------------------------------------------------------------------------------- figures


def test_figures_are_pure_and_save_closes(tmp_path: Path) -> None:
    stages, spans, runs = synthetic_tables(NA_SPEC)
    summary, rsum = T.stage_summary(stages), T.run_summary(runs)
    meas = T.measures(stages, runs)
    points = T.scaling_points(meas)
    comp = T.backend_comparison(meas, "reference").assign(series="dask")
    one = spans[(spans["backend"] == "reference") & (spans["n_tasks"] == 1000)
                & (spans["repeat"] == 0)]
    figs = [F.stacked_stages_figure(summary, rsum), F.timeline_figure(one),
            F.scaling_figure(points, T.growth_exponents(points)),
            F.ratio_figure(comp[comp["n_tasks"] == 1000])]
    for i, fig in enumerate(figs):
        assert isinstance(fig, Figure) and fig.axes
        path = F.save_figure(fig, tmp_path / f"f{i}.png")
        assert not fig.axes  # closed (cleared) after saving
        img = matplotlib.image.imread(path)
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0
    # With an ax, the figure of that ax comes back.
    holder = F.new_figure(6.0, 4.0)[0]
    ax = holder.add_subplot()
    assert F.timeline_figure(one, ax=ax) is holder
    with pytest.raises(ValueError, match="one run"):
        F.timeline_figure(spans)
    with pytest.raises(ValueError, match="one workload"):
        F.scaling_figure(points.assign(workload=["a", "b"] * (len(points) // 2)))


def test_timeline_joins_spans_closer_than_resolution() -> None:
    starts = np.array([0.0, 1.0, 1.0000001, 5.0])
    ends = np.array([0.5, 1.0, 2.0, 6.0])
    bars = F.coalesce_spans(starts, ends, 0.01)
    assert bars == [(0.0, 0.5), (1.0, 1.0), (5.0, 1.0)]
    assert F.coalesce_spans(np.array([]), np.array([]), 0.1) == []


def test_stage_colours_cover_all_stages() -> None:
    assert set(T.ORDER) <= set(F.STAGE_COLOURS)
    assert len(set(F.STAGE_COLOURS.values())) == len(F.STAGE_COLOURS)


# ---------------------------------------------------------------------------------- render


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(text: str) -> _Tags:
    p = _Tags()
    p.feed(text)
    p.close()
    return p


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    run = make_run(tmp_path_factory.mktemp("single") / "run", profile=True,
                   merged_stages={"schedule+dispatch": "Dask does both in one handler"},
                   notes=["<script>alert(1)</script> & friends"])
    (run / "profiles").mkdir()
    (run / "profiles" / "scheduler.speedscope.json").write_text("{}")
    html_path, md_path = render_report([run], run)
    return run, html_path, md_path


def test_render_single_run(rendered: tuple[Path, Path, Path]) -> None:
    run, html_path, md_path = rendered
    page = parse_html(html_path.read_text(encoding="utf-8"))
    tags = [t for t, _ in page.tags]
    assert tags.count("table") >= 5  # settings, stages, run summary, profile x2, ...
    assert "script" not in tags  # the note was escaped
    assert "<script>alert(1)</script> & friends" in "".join(page.text)
    # Every figure is embedded in the page, and is the PNG the Markdown links.
    imgs = [a["src"] for t, a in page.tags if t == "img"]
    md = md_path.read_text(encoding="utf-8")
    linked = re.findall(r"!\[[^]]*\]\((figures/[^)]+)\)", md)
    assert len(imgs) == len(linked) >= 4
    for stem in ("figures/stacked.png", "figures/timeline-", "figures/scaling-",
                 "figures/ratio-"):
        assert any(f.startswith(stem) for f in linked), stem
    for src, file in zip(imgs, linked, strict=True):
        assert src is not None and src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        assert data == (run / file).read_bytes()
        img = matplotlib.image.imread(io.BytesIO(data))
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0
    links = [a["href"] for t, a in page.tags if t == "a"]
    assert "profiles/scheduler.speedscope.json" in links
    assert md.startswith("# stagecost report: run")
    for needle in ("## Stage costs, ranked", "## Run summary", "n/a", "83.0%",
                   "schedule+dispatch: Dask does both in one handler", "### Scaling",
                   "### Backends compared with reference", "![stacked stage costs]"):
        assert needle in md, needle
    # The answer first, the metadata last.
    order = [md.index(h) for h in ("**dask-distributed · elementwise", "## Stage costs",
                                   "## Figures", "## Runs", "| created_utc")]
    assert order == sorted(order)


def test_render_is_idempotent(rendered: tuple[Path, Path, Path]) -> None:
    run, html_path, md_path = rendered
    before = {p.name: p.read_bytes() for p in [html_path, md_path,
                                               *sorted((run / "figures").iterdir())]}
    stale = run / "figures" / "ratio-gone.png"
    stale.write_bytes(b"old")
    keep = run / "figures" / "mine.txt"
    keep.write_text("not ours")
    render_report([run], run)
    after = {p.name: p.read_bytes() for p in [html_path, md_path,
                                              *sorted((run / "figures").iterdir())]}
    assert not stale.exists() and keep.exists()
    after.pop("mine.txt")
    assert after == before


def test_render_several_runs_adds_scaling_and_comparison(tmp_path: Path) -> None:
    small = SyntheticSpec(backends=("reference",), sizes=(1_000,), repeats=2)
    big = SyntheticSpec(backends=("reference",), sizes=(100_000,), repeats=2)
    a, b = make_run(tmp_path / "a", small), make_run(tmp_path / "b", big)
    html_path, md_path = render_report([a, b], tmp_path / "out")
    md = md_path.read_text(encoding="utf-8")
    assert "### Scaling" in md
    assert re.search(r"^\| reference\s*\| elementwise\s*\| wall\s*\|", md, re.M)
    assert "Backends compared" not in md  # one backend only
    assert (tmp_path / "out" / "figures" / "scaling-elementwise.png").is_file()
    page = parse_html(html_path.read_text(encoding="utf-8"))
    assert [t for t, _ in page.tags].count("img") >= 3
    # Two runs of one configuration are compared side by side, labelled by run.
    again = make_run(tmp_path / "a_again", with_seed(small, 3))
    _, md_path = render_report([a, again], tmp_path / "o")
    md = md_path.read_text(encoding="utf-8")
    assert "### Backends compared with reference [a]" in md
    assert "reference [a_again]" in md


def test_render_unknown_reference_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", SyntheticSpec(sizes=(1_000,), repeats=1))
    with pytest.raises(ValueError, match="not in these runs"):
        render_report([run], tmp_path / "out", reference="dask-threads")


# -------------------------------------------------------------------------------- headline


def md_tables(md: str) -> list[pd.DataFrame]:
    """Every pipe table of a Markdown document, as text cells."""
    tables, block = [], []
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            tables.append(pd.DataFrame(block[2:], columns=block[0]))
            block = []
    return tables


def test_the_headline_figures_are_the_tables_figures(rendered: tuple[Path, Path, Path]) -> None:
    _, _, md_path = rendered
    md = md_path.read_text(encoding="utf-8")
    tables = md_tables(md)
    head = next(t for t in tables if "top stage" in t.columns)
    ranked = next(t for t in tables if "rank" in t.columns)
    summary = next(t for t in tables if "wall s (median)" in t.columns)
    key = ["backend", "workload", "n_tasks"]
    assert len(head) == 4  # 2 backends x 2 sizes
    for row in head.itertuples(index=False):
        cfg = (row.backend, row.workload, row.n_tasks)
        top = ranked[(ranked[key].apply(tuple, axis=1) == cfg) & (ranked["rank"] == "1")]
        runs = summary[summary[key].apply(tuple, axis=1) == cfg]
        assert len(top) == 1 and len(runs) == 1
        # The table beside the headline and the sentences say what the tables say.
        assert row[3] == runs["first task s (median)"].item()
        assert row[4] == runs["wall s (median)"].item()
        assert row[5] == top["stage"].item()
        assert row[6] == top["busy s (median)"].item()
        assert row[7] == top["% of wall"].item()
        sentence = (f"**{row.backend} · {row.workload} · n={row.n_tasks}: first task after "
                    f"{row[3]} s; last result after {row[4]} s; {row[5]} dominates with "
                    f"{row[6]} s busy, {row[7]} % of wall.")
        assert sentence in md, sentence
    # ... and the ranked table is ranked: busy seconds fall with the rank.
    for _, g in ranked[ranked["rank"] != "n/a"].groupby(key):
        busy = [float(v.replace(",", "")) for v in g["busy s (median)"]]
        assert busy == sorted(busy, reverse=True) and list(g["rank"]) == [
            str(i) for i in range(1, len(g) + 1)]


def test_the_terminal_summary_says_what_the_report_says(
        rendered: tuple[Path, Path, Path]) -> None:
    """``stagecost run`` prints the report's headline sentences (wrapped) and its ranked
    stage table, in lines that fit the width asked for."""
    from harness.report.render import terminal_summary

    run, _, md_path = rendered
    md = md_path.read_text(encoding="utf-8")
    text = terminal_summary([run], width=100)
    sentences = re.findall(r"^\*\*(.+)\*\*$", md, flags=re.M)
    assert len(sentences) == 4
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    assert paragraphs[:4] == [" ".join(s.split()) for s in sentences], text
    assert all(len(line) <= 100 for line in text.splitlines() if "·" in line)
    ranked = next(t for t in md_tables(md) if "rank" in t.columns)
    table_lines = text.split("\n\n")[4].splitlines()[2:]
    assert len(table_lines) == len(ranked)
    for line, row in zip(table_lines, ranked.itertuples(index=False), strict=True):
        assert line.split()[3:6] == [row.rank, row.stage, row[6]]


def test_headline_table_matches_summaries_numerically() -> None:
    stages, _, runs = synthetic_tables(NA_SPEC)
    summary, rsum = T.stage_summary(stages), T.run_summary(runs)
    head = T.headline(summary, rsum)
    for row in head.itertuples(index=False):
        mine = summary[(summary["backend"] == row.backend) & (summary["n_tasks"] == row.n_tasks)]
        wall = rsum[(rsum["backend"] == row.backend) & (rsum["n_tasks"] == row.n_tasks)]
        assert row.top_stage_s == mine["seconds_median"].max()
        assert row.top_stage == mine.loc[mine["seconds_median"].idxmax(), "stage"]
        assert row.wall_s == wall["wall_s_median"].item()
        assert row.top_share_of_wall == pytest.approx(row.top_stage_s / row.wall_s)
    # Without stage rows (recording off) the headline still has wall and first task.
    bare = T.headline(T.stage_summary(stages.iloc[0:0]), rsum)
    assert bare["top_stage"].eq("").all() and bare["wall_s"].notna().all()


def test_side_by_side_panels_share_their_y_axis() -> None:
    stages, _, runs = synthetic_tables(NA_SPEC)  # dask-distributed costs 10x the reference
    fig = F.stacked_stages_figure(T.stage_summary(stages), T.run_summary(runs))
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {"reference", "dask-distributed"}
    ref, dask = panels["reference"], panels["dask-distributed"]
    assert ref.get_ylim() == dask.get_ylim()
    # Stage i costs i units (x10 for Dask, whose dispatch, stage 7, is n/a): the bars'
    # heights on the shared axis keep that ratio, (36 - 7) * 10 / 36.
    tops = {name: max(bar.get_y() + bar.get_height() for bar in ax.patches)
            for name, ax in panels.items()}
    assert tops["dask-distributed"] / tops["reference"] == pytest.approx(290 / 36, rel=0.05)
    assert max(tops.values()) <= ref.get_ylim()[1]
    fig.clear()
