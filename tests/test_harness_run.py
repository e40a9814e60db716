"""The ``stagecost`` command end to end: ``run`` (both reference backends, as a user runs it),
then ``report``, ``compare`` and ``workloads`` on what it wrote, and bad input.

One small run (elementwise, 2,000 tasks, 1 warmup + 5 recorded repeats interleaved with 5
unrecorded ones, ``reference`` and ``reference-inproc``) is made once per module and shared; tests that change a run folder
work on a copy. Every command runs in a fresh process (``python -m harness.cli``) in its own
session, bounded by a timeout after which that session is killed.
"""

from __future__ import annotations

import csv
import html.parser
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from harness.measure import PEAK_RSS_COLUMNS
from harness.report.schema import (
    RUNS_COLUMNS,
    SPANS_COLUMNS,
    STAGE_NAMES,
    STAGES_COLUMNS,
    read_run,
    write_tables,
)
from harness.workloads import WORKLOADS
from tests.conftest import cluster_env

BACKENDS = ("reference", "reference-inproc")
REPEATS = 5  # the fewest per side at which compare can decide (p < 0.01)
RECORDED = range(0, 2 * REPEATS, 2)  # recorded repeats, interleaved with unrecorded ones
N_TASKS = 2_000
DATA_FILES = ("stages.csv", "runs.csv", "spans.csv", "meta.json")
REPORT_FILES = ("report.html", "report.md")


@dataclass(frozen=True)
class Done:
    code: int
    stdout: str
    stderr: str


def stagecost(*args: str | Path, cwd: Path, timeout: float = 60.0) -> Done:
    """Run ``python -m harness.cli ARGS`` in ``cwd``; kill its session after ``timeout``."""
    env = {**os.environ, **cluster_env()}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session this call started, and only it
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"stagecost {' '.join(map(str, args))} did not finish within {timeout} s;"
                    f" stderr:\n{err}")
    return Done(proc.returncode, out, err)


@dataclass(frozen=True)
class RunOutput:
    dir: Path
    doc: dict[str, object]
    stderr: str


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunOutput:
    base = tmp_path_factory.mktemp("harness-run")
    run_dir = base / "run"
    args: list[str | Path] = ["run", "-w", "elementwise", "-n", str(N_TASKS), "-r",
                              str(REPEATS), "--warmups", "1", "--json", "-o", run_dir,
                              "--timeout", "240"]
    for b in BACKENDS:
        args += ["-b", b]
    done = stagecost(*args, cwd=base, timeout=420)
    assert done.code == 0, done.stderr
    doc = json.loads(done.stdout)  # exactly one JSON document, nothing else on stdout
    assert isinstance(doc, dict)
    return RunOutput(run_dir, doc, done.stderr)


def rows_of(run: RunOutput) -> list[dict[str, object]]:
    rows = run.doc["rows"]
    assert isinstance(rows, list)
    return rows


def is_missing(value: object) -> bool:
    """None, NaN or pandas' NA (how the three readers spell an empty cell)."""
    return value is None or bool(pd.isna(value))


# --- stagecost run --json --------------------------------------------------------------------

pytestmark = pytest.mark.cluster


def test_json_document_has_the_promised_keys(run: RunOutput) -> None:
    doc = run.doc
    assert {"run_dir", "rows", "time_to_first_task_s", "wall_s"} <= set(doc)
    assert Path(str(doc["run_dir"])) == run.dir
    for key in ("time_to_first_task_s", "wall_s"):
        value = doc[key]
        assert isinstance(value, float) and value > 0, (key, value)
    runs = doc.get("runs")
    # each backend's recorded repeats interleaved with as many unrecorded ones
    assert isinstance(runs, list) and len(runs) == len(BACKENDS) * REPEATS * 2
    assert all(list(r) == [*RUNS_COLUMNS, *PEAK_RSS_COLUMNS, "recorded", "calibration_s",
                           "other_load", "cpu_s", "record_overhead", "record_overhead_cpu"]
               for r in runs)
    assert all(r["calibration_s"] > 0 and r["cpu_s"] >= 0 for r in runs)
    # this process's own CPU time is read to the nanosecond: an in-process run has some
    assert all(r["cpu_s"] > 0 for r in runs if r["backend"] == "reference-inproc")
    assert all(r["peak_rss_client_bytes"] > 0 for r in runs)
    assert sum(r["recorded"] for r in runs) == len(runs) // 2
    overhead = doc["record_overhead"]
    assert isinstance(overhead, list)
    assert sorted(o["backend"] for o in overhead) == sorted(BACKENDS)
    assert all(o["repeats"] == REPEATS and o["recorded_repeats"] == REPEATS
               and isinstance(o["record_overhead"], float)
               and isinstance(o["record_overhead_cpu"], float) for o in overhead)


def test_rows_have_exactly_the_stages_columns(run: RunOutput) -> None:
    rows = rows_of(run)
    assert rows
    for row in rows:
        assert list(row) == list(STAGES_COLUMNS)
    configs = {(r["backend"], r["workload"], r["n_tasks"], r["repeat"]) for r in rows}
    assert configs == {(b, "elementwise", N_TASKS, i) for b in BACKENDS for i in RECORDED}


@pytest.mark.parametrize("repeat", RECORDED)
def test_reference_backend_has_all_eight_stages_measured(run: RunOutput, repeat: int) -> None:
    rows = [r for r in rows_of(run) if r["backend"] == "reference" and r["repeat"] == repeat]
    assert {r["stage"] for r in rows} == set(STAGE_NAMES)
    assert all(r["applicable"] is True for r in rows)
    for stage in STAGE_NAMES:
        measured = [r for r in rows if r["stage"] == stage and r["role"] != "all"]
        assert measured, f"no span recorded for {stage}"
        assert all(isinstance(r["seconds"], float) and r["seconds"] >= 0 for r in measured)
    roles = {r["role"] for r in rows}
    # worker-1 is not required: with 1,000 root tasks the scheduler gives them all to one
    # worker (see test_cluster.test_independent_chains_run_on_both_workers)
    assert {"client", "scheduler", "worker-0"} <= roles


@pytest.mark.parametrize("repeat", RECORDED)
def test_inproc_backend_has_no_communicate_stage(run: RunOutput, repeat: int) -> None:
    rows = [r for r in rows_of(run)
            if r["backend"] == "reference-inproc" and r["repeat"] == repeat]
    assert {r["stage"] for r in rows} == set(STAGE_NAMES)
    comm = [r for r in rows if r["stage"] == "communicate"]
    assert len(comm) == 1
    (row,) = comm
    assert row["applicable"] is False
    assert row["role"] == "all"
    for col in ("seconds", "us_per_task", "nbytes", "messages"):
        assert row[col] is None, (col, row[col])  # empty, never 0
    others = [r for r in rows if r["stage"] != "communicate"]
    assert all(r["applicable"] is True and r["seconds"] is not None for r in others)


def test_stages_csv_leaves_not_applicable_numbers_empty(run: RunOutput) -> None:
    with open(run.dir / "stages.csv", newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    assert list(records[0]) == list(STAGES_COLUMNS)
    na = [r for r in records if r["applicable"] == "False"]
    assert {(r["backend"], r["stage"]) for r in na} == {("reference-inproc", "communicate")}
    for r in na:
        assert r["seconds"] == r["us_per_task"] == r["nbytes"] == r["messages"] == ""


def test_json_rows_are_the_rows_of_stages_csv(run: RunOutput) -> None:
    """Same rows, same values; floats compared to 1e-9 (pandas' ``to_json`` keeps 10
    significant digits where stages.csv keeps the shortest exact form)."""
    stored = read_run(run.dir).stages
    key = ("backend", "workload", "n_tasks", "repeat", "stage", "role")

    def by_key(records: list[dict[str, object]]) -> dict[tuple[object, ...], dict]:
        return {tuple(r[c] for c in key): r for r in records}

    from_json = by_key(rows_of(run))
    from_csv = by_key(stored.to_dict(orient="records"))
    assert set(from_json) == set(from_csv)
    for k, a in from_json.items():
        b = from_csv[k]
        assert a["applicable"] == b["applicable"], k
        for col in ("seconds", "us_per_task", "nbytes", "messages"):
            x, y = a[col], b[col]
            if is_missing(x) or is_missing(y):
                assert is_missing(x) and is_missing(y), (k, col, x, y)
            else:
                assert math.isclose(float(x), float(y), rel_tol=1e-9), (k, col, x, y)


def test_json_rows_carry_counts_as_integers(run: RunOutput) -> None:
    for row in rows_of(run):
        for col in ("nbytes", "messages"):
            value = row[col]
            assert value is None or isinstance(value, int), (col, value, row)


def test_progress_goes_to_stderr(run: RunOutput) -> None:
    assert "warmup" in run.stderr and f"repeat {2 * REPEATS}/{2 * REPEATS} (recording off)" in run.stderr
    assert "outputs in memory" in run.stderr


def test_progress_lines_show_finished_tasks_until_the_last_output() -> None:
    """At most one line a second; finished tasks (when the backend counts them) before the
    outputs; the final line (every output in memory) always, and outputs only."""
    import io

    from harness.progress import PlainEvents

    clock = [100.0]
    out = io.StringIO()
    p = PlainEvents("w", out, clock=lambda: clock[0])
    p.started("repeat 1/1", 301)
    p.tasks(0, 301)           # shown: the first line
    p(0, 1)                   # within the second: not shown
    clock[0] += 1.5
    p.tasks(120, 301)         # shown, with the outputs known by now
    clock[0] += 0.2
    p.tasks(200, 301)         # within the second: not shown
    p(1, 1)                   # the last output: always shown
    assert out.getvalue().splitlines() == [
        "[w] repeat 1/1: 301 tasks, submitting ...",
        "  [w] repeat 1/1: 0/301 tasks finished",
        "  [w] repeat 1/1: 120/301 tasks finished, 0/1 outputs in memory",
        "  [w] repeat 1/1: 1/1 outputs in memory",
    ]


# --- the run folder --------------------------------------------------------------------------

class _HTMLChecker(html.parser.HTMLParser):
    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link",
                      "meta", "source", "track", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.images: list[str] = []
        self.problems: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
        else:
            self.open.pop()


def test_run_folder_has_every_file(run: RunOutput) -> None:
    for name in (*DATA_FILES, *REPORT_FILES):
        path = run.dir / name
        assert path.is_file() and path.stat().st_size > 0, name
    figures = sorted((run.dir / "figures").glob("*.png"))
    assert figures, "no figures written"
    for png in figures:
        assert png.stat().st_size > 0
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 10 and image.shape[1] > 10, png.name


def test_html_report_parses_and_its_images_exist(run: RunOutput) -> None:
    checker = _HTMLChecker()
    checker.feed((run.dir / "report.html").read_text(encoding="utf-8"))
    checker.close()
    assert not checker.problems, checker.problems[:5]
    assert not checker.open, f"unclosed tags: {checker.open}"
    assert {"html", "body", "table", "img"} <= checker.tags
    assert checker.images
    for src in checker.images:  # one self-contained page: every figure embedded
        assert src.startswith("data:image/png;base64,"), src[:60]


def test_markdown_report_links_existing_figures(run: RunOutput) -> None:
    text = (run.dir / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links
    for link in links:
        assert (run.dir / link).is_file(), link
    for stage in STAGE_NAMES:
        assert stage in text


def test_read_run_validates_the_folder(run: RunOutput) -> None:
    r = read_run(run.dir)
    assert list(r.stages.columns[:len(STAGES_COLUMNS)]) == list(STAGES_COLUMNS)
    assert list(r.runs.columns[:len(RUNS_COLUMNS)]) == list(RUNS_COLUMNS)
    assert list(r.spans.columns[:len(SPANS_COLUMNS)]) == list(SPANS_COLUMNS)
    assert len(r.runs) == len(BACKENDS) * REPEATS * 2
    assert (r.runs["tasks_run"] == N_TASKS).all()
    assert (r.runs["wall_s"] > 0).all()
    assert r.meta["warmups"] == 1
    params = r.meta["parameters"]
    assert params["backends"] == list(BACKENDS) and params["repeats"] == REPEATS
    assert params["workloads"] == ["elementwise"] and params["sizes"] == [N_TASKS]
    assert r.meta["reference_backend"] == "reference"
    assert set(r.spans["backend"]) == set(BACKENDS)
    assert "communicate" not in set(r.spans.loc[r.spans["backend"] == "reference-inproc",
                                                "stage"])


def test_data_files_have_the_same_permissions_as_the_report(run: RunOutput) -> None:
    report_mode = (run.dir / "report.md").stat().st_mode & 0o777
    if report_mode == 0o600:
        pytest.skip("the umask already makes every new file 0600; nothing to tell apart")
    modes = {name: oct((run.dir / name).stat().st_mode & 0o777) for name in DATA_FILES}
    assert set(modes.values()) == {oct(report_mode)}, modes


# --- stagecost report / compare ------------------------------------------------------------------

def test_report_re_renders_identically(run: RunOutput, tmp_path: Path) -> None:
    before = {p.relative_to(run.dir): p.read_bytes()
              for p in [run.dir / n for n in REPORT_FILES] + sorted(
                  (run.dir / "figures").glob("*.png"))}
    done = stagecost("report", run.dir, cwd=tmp_path)
    assert done.code == 0, done.stderr
    assert "report.html" in done.stdout
    after = {p.relative_to(run.dir): p.read_bytes()
             for p in [run.dir / n for n in REPORT_FILES] + sorted(
                 (run.dir / "figures").glob("*.png"))}
    assert set(after) == set(before)
    assert after[Path("report.md")] == before[Path("report.md")]
    assert after[Path("report.html")] == before[Path("report.html")]
    changed = [str(k) for k in before if after[k] != before[k]]
    assert not changed, f"re-rendering changed {changed}"


def test_compare_a_run_with_itself_exits_0(run: RunOutput, tmp_path: Path) -> None:
    done = stagecost("compare", run.dir, run.dir, cwd=tmp_path)
    assert done.code == 0, done.stderr
    assert "+" not in {line.split()[0] for line in done.stdout.splitlines() if line.split()}
    as_json = stagecost("compare", run.dir, run.dir, "--json", cwd=tmp_path)
    assert as_json.code == 0, as_json.stderr
    table = json.loads(as_json.stdout)
    assert table and all(row["mark"] in ("~", "n/a") for row in table)
    stages = {row["stage"] for row in table}
    assert set(STAGE_NAMES) <= stages and {"wall", "time_to_first_task"} <= stages


def test_compare_with_too_few_repeats_says_how_many_are_needed(tmp_path: Path) -> None:
    args: list[str | Path] = ["run", "-w", "elementwise", "-n", "500", "-b", "reference-inproc",
                              "-r", "2", "--warmups", "0", "--no-store", "-o"]
    for name in ("a", "b"):
        done = stagecost(*args, tmp_path / name, cwd=tmp_path)
        assert done.code == 0, done.stderr
    done = stagecost("compare", tmp_path / "a", tmp_path / "b", "--json", cwd=tmp_path)
    assert done.code == 3, done.stderr
    table = json.loads(done.stdout)
    assert table and {row["mark"] for row in table} <= {"?", "n/a"}
    assert all(row["repeats_needed"] == 5 for row in table if row["mark"] == "?")


def slowed_copy(src: Path, dst: Path, factor: float) -> Path:
    """A copy of run folder ``src`` where every time is ``factor`` times longer (valid)."""
    shutil.copytree(src, dst)
    r = read_run(dst)
    stages, runs = r.stages.copy(), r.runs.copy()
    for col in ("seconds", "us_per_task"):
        stages[col] = stages[col] * factor
    for col in ("wall_s", "time_to_first_task_s"):
        runs[col] = runs[col] * factor
    write_tables(dst, stages, r.spans, runs, r.meta)
    return dst


def test_compare_flags_a_2x_slowdown_with_exit_code_2(run: RunOutput, tmp_path: Path) -> None:
    slow = slowed_copy(run.dir, tmp_path / "slow", 2.0)
    read_run(slow)  # still a valid run folder
    done = stagecost("compare", run.dir, slow, "--json", cwd=tmp_path)
    assert done.code == 2, done.stderr
    table = json.loads(done.stdout)
    worse = [row for row in table if row["mark"] == "+"]
    assert worse
    assert all(abs(row["ratio"] - 2.0) < 1e-6 for row in worse)
    assert not [row for row in table if row["mark"] == "-"]
    # the other way round it is an improvement, which is no regression
    back = stagecost("compare", slow, run.dir, cwd=tmp_path)
    assert back.code == 0, back.stderr


# --- stagecost workloads ---------------------------------------------------------------------------

def test_workloads_json_lists_every_workload_with_its_kind(tmp_path: Path) -> None:
    done = stagecost("workloads", "--json", cwd=tmp_path)
    assert done.code == 0, done.stderr
    items = json.loads(done.stdout)
    names = [item["name"] for item in items]
    assert names[:6] == list(WORKLOADS)
    assert set(names[:6]) == {"elementwise", "reduction", "shuffle", "chain", "fanout",
                              "random-dag"}
    kinds = {item["name"]: item["kind"] for item in items}
    assert kinds["ones-sum"] == "seed"
    assert {kinds[n] for n in ("climatology", "rechunk", "matmul", "map-overlap",
                               "set-index-tasks", "groupby-p2p", "merge-tasks")} == {"dask"}
    only = {item["name"]: item.get("only_on") for item in items}
    assert only["merge-p2p"] == ["dask-distributed"] and only["merge-tasks"] is None
    assert all(isinstance(item["parameters"], dict) and item["summary"] for item in items)


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "needle"), [
    (["run", "-w", "no-such-workload", "-n", "100"], "no-such-workload"),
    (["run", "-b", "no-such-backend", "-n", "100"], "no-such-backend"),
    (["run", "-e", "no-such-encoding", "-n", "100", "-w", "elementwise"],
     "no-such-encoding"),
    (["run", "-n", "1", "-w", "elementwise"], "at least 2 tasks"),
    (["run", "-n", "lots", "-w", "elementwise"], "not a task count"),
    (["compare", "no-such-folder-a", "no-such-folder-b"], "no-such-folder-a"),
    (["report", "no-such-folder"], "no-such-folder"),
], ids=["workload", "backend", "encoding", "too-small", "not-a-number", "compare-missing",
        "report-missing"])
def test_bad_input_exits_non_zero_with_a_clear_message(tmp_path: Path, args: list[str],
                                                      needle: str) -> None:
    done = stagecost(*args, cwd=tmp_path)
    assert done.code != 0
    assert needle in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip() == ""
    assert not (tmp_path / "reports").exists()  # nothing was run


@pytest.mark.cluster
def test_profile_writes_speedscope_with_samples_and_an_attribution(tmp_path) -> None:
    """``stagecost profile`` on a small run: every profiled process leaves a speedscope file
    with samples, and the run's profile_stages.csv attributes samples to stages."""
    import pandas as pd

    out = tmp_path / "prof"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "profile", "-w", "elementwise", "-n", "20000",
         "-r", "1", "--warmups", "0", "--role", "scheduler", "--rate", "500", "-o", str(out)],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted((out / "profiles").glob("*.speedscope.json"))
    assert files
    doc = json.loads(files[0].read_text())
    assert sum(len(p["samples"]) for p in doc["profiles"]) > 0
    table = pd.read_csv(out / "profile_stages.csv")
    assert (table["self_samples"] > 0).any()
    assert set(table["stage"]) & {"update_graph", "schedule", "dispatch", "execute"}
    meta = json.loads((out / "meta.json").read_text())
    prof = meta["profile"]
    assert 0 < prof["attributed_share"] <= 1
    # idle and unattributed samples are rows of their own: the shares add up to every sample
    assert table["self_samples"].sum() == prof["samples"]
    assert table["share"].sum() == pytest.approx(1.0)
    assert prof["busy_samples"] + prof["idle_samples"] + prof["import_samples"] == \
        prof["samples"]
    assert prof["attributed_samples"] + prof["unattributed_samples"] == prof["busy_samples"]
    assert prof["attributed_share"] == pytest.approx(
        prof["attributed_samples"] / prof["busy_samples"])
    report = (out / "report.md").read_text()
    assert f"{prof['samples']:,} samples: {prof['attributed_samples']:,} attributed" in report
