"""The results store: runs round-trip byte for byte, ``compare`` and ``report`` take stored
runs, ``history`` lists and filters them, the headline says what changed since the previous
run of a configuration, and trends mark what ``compare`` marks.

Runs are synthesised (``harness.report.synthetic``) so that every answer is known: a run with
``scale`` 2.0 takes twice as long in every stage.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
from pathlib import Path

import pytest

from harness.cli import main
from harness.exit_codes import ExitCode
from harness.report.render import render_report
from harness.report.schema import read_run, write_tables
from harness.report.synthetic import SyntheticSpec, synthetic_meta, synthetic_tables
from harness.report.trend import trend_table
from harness.store.configs import config_key
from harness.store.db import ResultsStore, StoreError

SPEC = SyntheticSpec(backends=("reference",), sizes=(1_000,), repeats=5, noise=0.01)
FILES = ("meta.json", "stages.csv", "runs.csv", "spans.csv")


def make_run(path: Path, scale: float = 1.0, seed: int = 0, created: str = "2024-01-01T00:00:00Z",
             commit: str = "a" * 40, spec: SyntheticSpec = SPEC) -> Path:
    spec = dataclasses.replace(spec, scale={b: scale for b in spec.backends}, seed=seed)
    stages, spans, runs = synthetic_tables(spec)
    meta = synthetic_meta(spec, created_utc=created, git_commit=commit,
                          machine={"hostname": "box", "cpus": 2},
                          parameters={"options": {"workers": 2, "threads": 1,
                                                  "encoding": "compact", "fuse": False,
                                                  "record": True, "dask_config": []}})
    write_tables(path, stages, spans, runs, meta)
    return path


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite"


def test_a_stored_run_reads_back_as_the_same_run(tmp_path: Path, store_path: Path) -> None:
    folder = make_run(tmp_path / "a")
    with ResultsStore(store_path) as store:
        run_id, added = store.add_folder(folder)
        assert added and run_id == 1
        assert store.add_folder(folder) == (run_id, False)  # stored once
        out = store.export_folder(run_id, tmp_path / "exported")
        loaded = store.load_run(run_id)
    for name in FILES:
        assert (out / name).read_bytes() == (folder / name).read_bytes(), name
    # Written back from what the store returned, the tables are byte-identical too.
    write_tables(tmp_path / "again", loaded.stages, loaded.spans, loaded.runs, loaded.meta)
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes(), name
    original = read_run(folder)
    assert loaded.name == "@1" and loaded.meta == original.meta
    assert loaded.stages.equals(original.stages) and loaded.runs.equals(original.runs)


def test_compare_takes_stored_runs(tmp_path: Path, store_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    a = make_run(tmp_path / "a", created="2024-01-01T00:00:00Z")
    b = make_run(tmp_path / "b", scale=2.0, seed=1, created="2024-01-02T00:00:00Z")
    with ResultsStore(store_path) as store:
        store.add_folder(a)
        store.add_folder(b)
    common = ["--store", str(store_path), "--json"]
    assert main(["compare", "@1", "@2", *common]) == ExitCode.REGRESSION
    rows = json.loads(capsys.readouterr().out)
    wall = next(r for r in rows if r["stage"] == "wall")
    assert wall["mark"] == "+" and wall["ratio"] == pytest.approx(2.0, rel=0.05)
    # The same answer by other names: @last~1 / @last, @NAME, and a folder against a stored run.
    for refs in (["@last~1", "@last"], ["@a", "@b"], [str(a), "@2"]):
        assert main(["compare", *refs, *common]) == ExitCode.REGRESSION, refs
        assert json.loads(capsys.readouterr().out) == rows
    assert main(["compare", "@2", "@1", *common]) == ExitCode.OK  # faster is no regression


@pytest.mark.parametrize(("ref", "says"), [("@9", "no run 9"), ("@last~5", "holds 2 run"),
                                           ("@nope", "no stored run is called 'nope'")])
def test_unknown_references_are_usage_errors(tmp_path: Path, store_path: Path, ref: str,
                                             says: str, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    with ResultsStore(store_path) as store:
        store.add_folder(make_run(tmp_path / "a"))
        store.add_folder(make_run(tmp_path / "b", seed=1))
    assert main(["compare", "@1", ref, "--store", str(store_path)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert says in err and "stagecost history" in err


def test_a_missing_or_foreign_store_is_an_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "@1", "@2", "--store", str(tmp_path / "none.sqlite")]) == \
        ExitCode.ERROR
    assert "no results store at" in capsys.readouterr().err
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    with pytest.raises(StoreError, match="not a stagecost results store"):
        ResultsStore(junk)
    newer = tmp_path / "newer.sqlite"
    ResultsStore(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE store_info SET value = '99' WHERE key = 'version'")
    with pytest.raises(StoreError, match="store version 99"):
        ResultsStore(newer)


def test_report_of_a_stored_run_needs_only_the_store(tmp_path: Path, store_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    import shutil

    a = make_run(tmp_path / "a")
    with ResultsStore(store_path) as store:
        store.add_folder(a)
    shutil.rmtree(a)  # the folder is gone; the store keeps the run
    assert main(["report", "@1", "--store", str(store_path)]) == ExitCode.USAGE
    assert "-o" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["report", "@1", "-o", str(out), "--store", str(store_path)]) == 0
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# stagecost report: @1")
    assert re.search(r"^\| stored as\s*\| @1\s*\|$", md, re.M)
    assert "first task after" in md  # the headline, from the stored tables


def test_the_headline_names_the_biggest_change_since_the_previous_run(
        tmp_path: Path, store_path: Path) -> None:
    a = make_run(tmp_path / "a", created="2024-01-01T00:00:00Z", commit="a" * 40)
    b = make_run(tmp_path / "b", scale=3.0, seed=1, created="2024-01-02T00:00:00Z",
                 commit="b" * 40)
    with ResultsStore(store_path) as store:
        store.add_folder(a)
        store.add_folder(b)
    _, md_a = render_report([a], a, store=store_path)
    _, md_b = render_report([b], b, store=store_path)
    first, second = md_a.read_text(encoding="utf-8"), md_b.read_text(encoding="utf-8")
    assert "No earlier run of this configuration" in first
    assert "Biggest change against @1 (aaaaaaaa)" in second and "(+ worse)" in second
    # The report of the first run shows the history up to it only: a later run changes
    # nothing in it (re-rendering stays idempotent).
    before = md_a.read_bytes()
    render_report([a], a, store=store_path)
    assert md_a.read_bytes() == before
    assert (b / "figures").is_dir() and any(p.name.startswith("trend-")
                                            for p in (b / "figures").iterdir())
    assert not any(p.name.startswith("trend-") for p in (a / "figures").iterdir())


def test_trends_mark_what_compare_marks(tmp_path: Path, store_path: Path) -> None:
    scales = [1.0, 1.0, 2.0, 2.0, 1.0]
    with ResultsStore(store_path) as store:
        for i, s in enumerate(scales):
            store.add_folder(make_run(tmp_path / f"r{i}", scale=s, seed=i,
                                      created=f"2024-01-0{i + 1}T00:00:00Z",
                                      commit=f"{i}" * 40))
        (cfg,) = store.configs_of(1)["config_id"]
        trend = trend_table(store, int(cfg), "box")
    wall = trend[trend["stage"] == "wall"].reset_index(drop=True)
    assert list(wall["run_id"]) == [1, 2, 3, 4, 5]
    assert list(wall["mark"]) == ["", "~", "+", "~", "-"]


def test_history_lists_filters_and_draws_trends(tmp_path: Path, store_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    two = dataclasses.replace(SPEC, workloads=("elementwise", "reduction"))
    folders = [make_run(tmp_path / f"r{i}", scale=1.0 + i, seed=i, spec=two,
                        created=f"2024-01-0{i + 1}T00:00:00Z") for i in range(3)]
    args = ["history", "--store", str(store_path), "--json"]
    assert main([*args, *[a for f in folders for a in ("--add", str(f))]]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6 and [r["run"] for r in rows][::2] == ["@1", "@2", "@3"]
    assert [r["mark"] for r in rows if r["workload"] == "reduction"] == ["n/a", "+", "+"]
    assert main([*args, "-w", "reduction", "--last", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run"], r["workload"]) for r in rows] == [("@2", "reduction"),
                                                         ("@3", "reduction")]
    out = tmp_path / "hist"
    assert main(["history", "--store", str(store_path), "--trend", "-o", str(out)]) == 0
    page = (out / "history.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 2  # a trend per configuration
    assert main(["history", "--store", str(store_path), "--trend"]) == ExitCode.USAGE


def test_configuration_keys_ignore_option_order_and_the_timeout() -> None:
    def meta(**options: object) -> dict[str, object]:
        return {"parameters": {"options": options}}

    one = config_key(meta(workers=2, threads=1, encoding="compact", dask_config=["b=1", "a=2"],
                          timeout=5), "reference", "elementwise", 1000)
    two = config_key(meta(dask_config=["a=2", "b=1"], encoding="compact", threads=1,
                          workers=2, timeout=None), "reference", "elementwise", 1000)
    assert one == two
    assert config_key(meta(workers=3), "reference", "elementwise", 1000) != one
    # Dask backends take no -e: the encoding option does not split their history.
    assert config_key(meta(encoding="layers"), "dask-sync", "w", 10) == \
        config_key(meta(encoding="compact"), "dask-sync", "w", 10)
    assert '"encoding":"layers"' in config_key(meta(encoding="compact"), "reference/layers",
                                               "w", 10)


def test_asv_export_is_read_and_published_by_asv(tmp_path: Path, store_path: Path) -> None:
    import subprocess

    import asv.results

    repo = tmp_path / "repo"
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(repo)], check=True, timeout=30)
    commits = []
    for msg in ("one", "two"):
        subprocess.run([*git, "-C", str(repo), "commit", "-q", "--allow-empty", "-m", msg],
                       check=True, timeout=30)
        commits.append(subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                                      check=True, capture_output=True, text=True,
                                      timeout=30).stdout.strip())
    with ResultsStore(store_path) as store:
        for i, (commit, scale) in enumerate(zip(commits, (1.0, 2.0), strict=True)):
            store.add_folder(make_run(tmp_path / f"r{i}", scale=scale, seed=i, commit=commit,
                                      created=f"2024-01-0{i + 1}T00:00:00Z"))
        store.add_folder(make_run(tmp_path / "dirty", commit=commits[1] + "-dirty",
                                  created="2024-01-03T00:00:00Z"))
        from harness.store.asv import export_asv

        assert export_asv(store, tmp_path / "asv", repo=str(repo)) == (2, 1)
        walls = store.measures([1, 2]).query("stage == 'wall'").groupby("run_id")[
            "seconds"].median()
    name = "stagecost.elementwise.time_wall"
    for run_id, commit in zip((1, 2), commits, strict=True):
        res = asv.results.Results.load(str(tmp_path / "asv" / "results" / "box" /
                                           f"{commit[:8]}-stagecost.json"))
        assert res.commit_hash == commit
        (value,) = res.get_result_value(name, res.get_result_params(name))
        assert value == pytest.approx(walls[run_id])
    done = subprocess.run(["asv", "publish", "--config", "asv.conf.json"],
                          cwd=tmp_path / "asv", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    graphs = list((tmp_path / "asv" / "html" / "graphs").rglob("*.json"))
    assert any(name in str(g) for g in graphs)
