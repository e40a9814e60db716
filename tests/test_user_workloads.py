"""Users' own workloads through the ``stagecost`` command: ``-w FILE.py:FUNCTION`` and
``-w package.module:FUNCTION`` on the reference and on Dask's sync scheduler, and the errors
for a file that does not import, a function that returns something else and a graph that
fails, each naming the file and function while the other configurations still run.

One run of the command (small sizes, one repeat) is shared by the tests of this module.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import pandas as pd
import pytest

from harness.dask_work import WorkloadError
from harness.exit_codes import ExitCode
from harness.user_workloads import build_any
from tests.test_harness_run import stagecost

N_TASKS = 300
BACKENDS = ("reference", "dask-sync")

USER_FILE = textwrap.dedent("""
    import dask
    import dask.array as da


    def make(n_tasks):
        side = max(2, round((n_tasks / 3) ** 0.5))
        return da.ones((side * 10, side * 10), chunks=10).sum()


    def wrong(n_tasks):
        return 42


    def boom(n_tasks):
        return dask.delayed(lambda: 1 / 0)()
""")


@dataclass(frozen=True)
class UserRun:
    dir: Path
    code: int
    stderr: str
    runs: pd.DataFrame


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> UserRun:
    base = tmp_path_factory.mktemp("user-workloads")
    (base / "mine.py").write_text(USER_FILE)
    (base / "broken.py").write_text("import no_such_module_for_stagecost_tests\n")
    pkg = base / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "work.py").write_text(USER_FILE)
    args: list[str | Path] = ["run", "-n", str(N_TASKS), "-r", "1", "--warmups", "0",
                              "-o", base / "out", "--timeout", "120"]
    for w in ("mine.py:make", "userpkg.work:make", "mine.py:wrong", "mine.py:boom",
              "broken.py:make"):
        args += ["-w", w]
    for b in BACKENDS:
        args += ["-b", b]
    done = stagecost(*args, cwd=base, timeout=400)
    runs = pd.read_csv(base / "out" / "runs.csv")
    return UserRun(base / "out", done.code, done.stderr, runs)


def test_a_run_with_failed_configurations_exits_incomplete(user_run: UserRun) -> None:
    assert user_run.code == ExitCode.INCOMPLETE, user_run.stderr


@pytest.mark.parametrize("spec", ["mine.py:make", "userpkg.work:make"])
def test_a_users_function_runs_on_every_backend_with_its_real_task_count(
        user_run: UserRun, spec: str) -> None:
    rows = user_run.runs[user_run.runs["workload"] == spec]
    # every backend ran it, with stage recording on and (to time the wall) off
    assert set(zip(rows["backend"], rows["recorded"], strict=True)) == \
        {(b, rec) for b in BACKENDS for rec in (True, False)}
    # the count is that of the graph Dask runs, the same on every backend, and all of it ran
    # (counted from the recorded repeats' spans where the backend counts no other way)
    assert rows["n_tasks"].nunique() == 1
    recorded = rows[rows["recorded"]]
    assert (recorded["tasks_run"] == recorded["n_tasks"]).all()


@pytest.mark.parametrize(("spec", "words"), [
    ("mine.py:wrong", ["mine.py:wrong", "returned builtins.int 42", "Dask collection"]),
    ("mine.py:boom", ["mine.py:boom", "its graph failed on", "ZeroDivisionError"]),
    ("broken.py:make", ["broken.py:make", "importing broken.py failed",
                        "no_such_module_for_stagecost_tests"]),
])
def test_each_failure_names_the_file_and_function(user_run: UserRun, spec: str,
                                                  words: list[str]) -> None:
    assert spec not in set(user_run.runs["workload"])
    lines = [ln for ln in user_run.stderr.splitlines()
             if ln.startswith("stagecost run:") and spec in ln]
    assert len(lines) == len(BACKENDS), user_run.stderr[-3000:]
    for line in lines:
        for word in words:
            assert word in line, line


def test_the_task_count_is_that_of_the_graph_dask_runs(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.py").write_text(USER_FILE)
    monkeypatch.chdir(tmp_path)
    workload = build_any("mine.py:make", N_TASKS)
    side = max(2, round((N_TASKS / 3) ** 0.5))
    arr = da.ones((side * 10, side * 10), chunks=10).sum()
    (optimized,) = dask.optimize(arr)
    assert workload.n_tasks == len(dict(optimized.__dask_graph__()))


def test_a_spec_without_a_function_is_refused_with_the_expected_form() -> None:
    with pytest.raises(WorkloadError, match="FILE.py:FUNCTION"):
        build_any("mine.py:", N_TASKS)
