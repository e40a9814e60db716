"""``stagecost.recording(client)`` on a real ``distributed.LocalCluster`` (in this process, TCP
on loopback): what Dask exposes of the computations run inside the block, and only of those.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest

import stagecost
from harness.dask_work import as_dask_work, count_tasks
from harness.recording import APPLICABLE
from harness.report.schema import RUNS_COLUMNS, STAGES_COLUMNS, read_run

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                      host="127.0.0.1", scheduler_port=0, dashboard_address=None,
                      worker_dashboard_address=None) as cluster, \
            Client(cluster, timeout="30s") as c:
        yield c


def _tasks(*collections: Any) -> int:
    return sum(count_tasks(as_dask_work(c, "test")) for c in collections)


def test_persisted_work_is_counted_as_dask_runs_it_and_waited_for(client: Any) -> None:
    from distributed import futures_of

    (da.ones((30, 30), chunks=10) * 5).sum().compute()  # before the block: not counted
    y = da.ones((40, 40), chunks=10) * 2
    z = (da.arange(400, chunks=20) + 1).cumsum(axis=0)
    with stagecost.recording(client, name="persisted") as rec:
        yp, zp = y.persist(), z.persist()
    assert all(f.done() for f in futures_of(yp) + futures_of(zp))  # waited for on leaving
    assert len(rec.graphs) == 2
    assert set(rec.stages["n_tasks"]) == {_tasks(y, z)}
    assert list(rec.runs["tasks_run"]) == [_tasks(y, z)]
    got = rec.stages.set_index(["stage", "role"])
    assert got.loc[("update_graph", "scheduler"), "messages"] == 2
    assert got.loc[("serialize", "client"), "nbytes"] > 0
    workers = {r for s, r in got.index if s == "execute"}
    assert workers and workers <= {"worker-0", "worker-1"}
    # execute is Dask's own split summed: the tasks' activities and moving their data
    acts = rec.activities
    counted = acts[acts["counted"]].groupby("role")["seconds"].sum()
    for role in workers:
        assert counted[role] == pytest.approx(got.loc[("execute", role), "seconds"])
    assert "thread-cpu" in set(acts.loc[acts["metric"] == "execute", "activity"])
    assert not acts.loc[acts["activity"] == "network", "counted"].any()
    assert np.array_equal(yp.compute(), np.full((40, 40), 2.0))


def test_the_table_has_the_run_folders_columns_and_dasks_stages_only(client: Any) -> None:
    x = (da.ones((50, 50), chunks=10) + 1).sum()
    with stagecost.recording(client) as rec:
        value = x.compute()
    assert value == dask.compute(x, scheduler="sync")[0]
    assert list(rec.stages.columns) == list(STAGES_COLUMNS)
    assert list(rec.runs.columns) == list(RUNS_COLUMNS)
    applicable = set(rec.stages.loc[rec.stages["applicable"], "stage"])
    assert applicable == {s.name for s in APPLICABLE}
    missing = rec.stages[~rec.stages["applicable"]]
    assert missing["seconds"].isna().all()  # not applicable is never 0
    run = rec.runs.iloc[0]
    assert 0 < run["time_to_first_task_s"] <= run["wall_s"]


def test_the_client_is_left_as_it_was(client: Any) -> None:
    before = set(vars(client))
    with stagecost.recording(client):
        assert "span" in dask.get_annotations()
    assert set(vars(client)) == before
    assert "span" not in dask.get_annotations()
    with stagecost.recording(client) as second:  # a later block sees only its own graphs
        client.submit(sum, [1, 2]).result()
    assert len(second.graphs) == 1


def test_a_block_that_submits_nothing_says_so(client: Any) -> None:
    with stagecost.recording(client) as rec:
        pass
    assert rec.graphs == []
    assert any("no graph" in n for n in rec.notes)


def test_a_recording_writes_a_run_folder_with_its_report(client: Any, tmp_path: Path) -> None:
    with stagecost.recording(client, name="written") as rec:
        (da.ones((20, 20), chunks=10) - 1).sum().compute()
    folder = rec.write(tmp_path / "run")
    run = read_run(folder)
    assert set(run.stages["workload"]) == {"written"}
    assert (folder / "report.html").is_file()
    assert run.meta["merged_stages"] == rec.merged


def test_only_a_distributed_client_is_accepted() -> None:
    with pytest.raises(TypeError, match="distributed.Client"):
        stagecost.recording(object())


def test_a_block_that_raises_is_measured_and_the_error_passes(client: Any) -> None:
    before = set(vars(client))
    x = (da.ones((20, 20), chunks=10) * 3).sum()
    with pytest.raises(ZeroDivisionError), stagecost.recording(client) as rec:
        x.compute()
        _ = 1 / 0
    assert set(vars(client)) == before
    assert len(rec.graphs) == 1
    assert set(rec.stages["n_tasks"]) == {rec.graphs[0]["tasks"]}
