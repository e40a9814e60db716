"""The Python API: ``stagecost.measure`` against the ``stagecost run`` command, on a user's
workload file run on the reference and on Dask's sync scheduler, and the values those
backends compute against Dask's own sync scheduler.

One command run and two API runs (small size, one repeat) are shared by the module.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest

import stagecost
from harness.backends.base import RunOptions
from harness.backends.dask_backends import SyncBackend
from harness.backends.reference import ReferenceBackend
from harness.dask_work import WorkloadError, as_dask_work, count_tasks, optimized_graph
from harness.report.schema import read_run
from harness.user_workloads import build_any, load_function
from tests.test_harness_run import stagecost as stagecost_command

N_TASKS = 300
BACKENDS = ["reference", "dask-sync"]
SPEC = "mine.py:make"
TABLE_KEY = ["backend", "workload", "n_tasks", "repeat", "stage", "role", "applicable"]

USER_FILE = textwrap.dedent("""
    import dask.array as da


    def make(n_tasks):
        side = max(2, round((n_tasks / 4) ** 0.5))
        x = da.arange(side * side * 100, chunks=100).reshape(side * 10, side * 10)
        return [(x * 2).sum(), (x + 1).mean(axis=0)]
""")


@dataclass(frozen=True)
class Runs:
    base: Path
    command: Path
    by_spec: pd.DataFrame
    by_function: pd.DataFrame


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tmp_path_factory.mktemp("api")
    (base / "mine.py").write_text(USER_FILE)
    args: list[str | Path] = ["run", "-w", SPEC, "-n", str(N_TASKS), "-r", "1", "--warmups",
                              "0", "-o", base / "command", "--timeout", "120", "--no-store"]
    for b in BACKENDS:
        args += ["-b", b]
    done = stagecost_command(*args, cwd=base, timeout=300)
    assert done.code == 0, done.stderr
    mp = pytest.MonkeyPatch()
    mp.chdir(base)
    try:
        by_spec = stagecost.measure(SPEC, BACKENDS, repeats=1, warmups=0, n_tasks=N_TASKS,
                                    output=base / "spec", store=False, timeout=120)
        make = load_function(SPEC)  # a function that no module holds: pickled by value
        by_function = stagecost.measure(make, BACKENDS, repeats=1, warmups=0,
                                        n_tasks=N_TASKS, output=base / "function",
                                        store=False, timeout=120)
    finally:
        mp.undo()
    return Runs(base, base / "command", by_spec, by_function)


def _keys(df: pd.DataFrame, workload: str | None = None) -> set[tuple[Any, ...]]:
    df = df.assign(workload=workload) if workload else df
    return set(df[TABLE_KEY].itertuples(index=False, name=None))


def test_measure_returns_the_stage_table_the_command_writes(runs: Runs) -> None:
    command = read_run(runs.command)
    assert _keys(runs.by_spec) == _keys(command.stages)
    assert list(runs.by_spec.columns) == list(command.stages.columns)
    # and the table is the run folder's, with its report
    folder = runs.by_spec.attrs["run_dir"]
    pd.testing.assert_frame_equal(runs.by_spec, read_run(folder).stages)
    assert (folder / "report.html").is_file() and (folder / "report.md").is_file()
    assert read_run(folder).meta["parameters"]["command"] == "measure"


def test_a_function_measures_as_its_spec_does(runs: Runs) -> None:
    assert _keys(runs.by_function, SPEC) == _keys(runs.by_spec)
    assert set(runs.by_function["workload"]) == {"make"}


@pytest.mark.parametrize("which", ["by_spec", "by_function"])
def test_every_task_ran_with_the_count_of_the_command(runs: Runs, which: str) -> None:
    api = getattr(runs, which).attrs["runs"]
    command = read_run(runs.command).runs
    assert set(zip(api["backend"], api["recorded"], strict=True)) == \
        {(b, rec) for b in BACKENDS for rec in (True, False)}
    assert set(api["n_tasks"]) == set(command["n_tasks"])
    recorded = api[api["recorded"].astype(bool)]
    assert (recorded["tasks_run"] == recorded["n_tasks"]).all()


def _same(a: Any, b: Any) -> bool:
    return np.asarray(a).shape == np.asarray(b).shape and bool(np.array_equal(a, b))


@pytest.mark.cluster
def test_the_user_file_computes_what_dasks_sync_scheduler_computes(
        runs: Runs, monkeypatch: pytest.MonkeyPatch) -> None:
    from dask.local import get_sync

    monkeypatch.chdir(runs.base)
    w = build_any(SPEC, N_TASKS)
    assert w.dask is not None
    dsk, keys = optimized_graph(w.dask())
    want = get_sync(dsk, keys)
    with ReferenceBackend(RunOptions(record=False, timeout=120)) as ref:
        on_reference = ref.run_once(w).extra["results"]
    on_sync = SyncBackend(RunOptions(record=False)).run_once(w).extra["results"]
    assert len(want) == len(on_reference) == len(on_sync) >= 2
    assert all(_same(a, b) for a, b in zip(on_reference, want, strict=True))
    assert all(_same(a, b) for a, b in zip(on_sync, want, strict=True))
    total, mean = dask.compute(*load_function(SPEC)(N_TASKS), scheduler="sync")
    assert want[0] == total  # the graph's outputs are the collections' own values
    assert _same(np.concatenate(want[1:]), mean)


def test_a_collection_runs_at_its_own_size(tmp_path: Path) -> None:
    x = (da.ones((60, 60), chunks=10) + 1).sum()
    table = stagecost.measure(x, ["dask-sync"], repeats=1, warmups=0, output=tmp_path / "o",
                              store=False, in_process=True)
    n = count_tasks(as_dask_work(x, "x"))
    assert set(table["n_tasks"]) == {n}
    assert set(table["workload"]) == {"array"}
    runs = table.attrs["runs"]
    assert list(runs.loc[runs["recorded"].astype(bool), "tasks_run"]) == [n]


def test_what_is_not_dask_work_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="Dask collection"):
        stagecost.measure([1, 2], output=tmp_path / "o", store=False)
    with pytest.raises(ValueError, match="unknown backend"):
        stagecost.measure("matmul", ["no-such-backend"], output=tmp_path / "p", store=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


def test_a_plain_graph_with_its_keys_runs_on_the_reference_and_dask(tmp_path: Path) -> None:
    from operator import add

    graph = {"a": 1, "b": 2, ("c", 0): (add, "a", "b"), ("c", 1): (add, ("c", 0), "b")}
    table = stagecost.measure((graph, [("c", 0), ("c", 1)]), ["reference-inproc", "dask-sync"],
                              repeats=1, warmups=0, output=tmp_path / "o", store=False,
                              in_process=True)
    runs = table.attrs["runs"]
    assert set(table["workload"]) == {"graph"}
    assert set(zip(runs["backend"], runs["recorded"].astype(bool), strict=True)) == {
        (b, rec) for b in ("dask-sync", "reference-inproc") for rec in (True, False)}
    assert set(runs["n_tasks"]) == {count_tasks(as_dask_work((graph, [("c", 0), ("c", 1)]),
                                                             "g"))}
