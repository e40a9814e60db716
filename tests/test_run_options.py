"""Run options a user sets on the command line: Dask settings, and what an abandoned
configuration leaves behind (the other configurations' results, a note, exit code 3)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import harness.runner as runner
from harness.backends.base import BackendError, RunOptions
from harness.cli import main
from harness.exit_codes import ExitCode

dask_config = pytest.importorskip("dask.config")

from harness.backends.dask_backends import (  # noqa: E402
    DistributedBackend,
    ThreadsBackend,
    parse_dask_config,
)
from harness.workloads import build  # noqa: E402

SATURATION = "distributed.scheduler.worker-saturation"


# --- --dask-config ---------------------------------------------------------------------------

def test_values_are_read_as_numbers_booleans_and_text() -> None:
    got = parse_dask_config([f"{SATURATION}=inf", "optimization.fuse.active=false",
                             "array.chunk-size=64MiB", "distributed.worker.daemon = true",
                             "optimization.fuse.ave-width=2"])
    assert got[SATURATION] == math.inf
    assert got["optimization.fuse.active"] is False
    assert got["array.chunk-size"] == "64MiB"
    assert got["distributed.worker.daemon"] is True
    assert got["optimization.fuse.ave-width"] == 2


@pytest.mark.parametrize(("item", "says"), [
    ("distributed.scheduler.worker-saturaton=inf", "unknown Dask config key"),
    ("worker-saturation", "is not KEY=VALUE"),
    ("=3", "is not KEY=VALUE"),
])
def test_bad_settings_are_refused_by_name(item: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_dask_config([item])


def test_the_command_line_refuses_a_typo_before_running(capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    code = main(["run", "-b", "dask-sync", "-w", "elementwise", "-n", "100",
                 "--dask-config", "optimization.fuse.activ=false", "-o", str(tmp_path / "r")])
    assert code == ExitCode.USAGE
    assert "unknown Dask config key 'optimization.fuse.activ'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_backend_holds_the_settings_from_start_to_close() -> None:
    before = dask_config.get("optimization.fuse.active")
    backend = ThreadsBackend(RunOptions(dask_config=("optimization.fuse.active=false",)))
    with backend:
        assert dask_config.get("optimization.fuse.active") is False
        backend.run_once(build("elementwise", 100))
        assert backend.describe()["dask_config"] == ["optimization.fuse.active=false"]
    assert dask_config.get("optimization.fuse.active") == before


def test_settings_cannot_reach_a_cluster_stagecost_did_not_start() -> None:
    opts = RunOptions(scheduler_address="tcp://127.0.0.1:1", dask_config=(f"{SATURATION}=inf",))
    with pytest.raises(BackendError, match="applies to clusters stagecost starts"):
        DistributedBackend(opts).start()


def _worker_saturation(dask_worker: Any = None) -> Any:
    import dask.config

    return dask.config.get(SATURATION)


def _scheduler_saturation(dask_scheduler: Any = None) -> float:
    return float(dask_scheduler.WORKER_SATURATION)


@pytest.mark.cluster
def test_a_started_cluster_runs_with_the_settings() -> None:
    opts = RunOptions(workers=1, threads=1, record=False, timeout=120,
                      dask_config=(f"{SATURATION}=inf",))
    with DistributedBackend(opts) as backend:
        assert backend.client.run_on_scheduler(_scheduler_saturation) == math.inf
        assert list(backend.client.run(_worker_saturation).values()) == [math.inf]
        m = backend.run_once(build("reduction", 200))
        assert len(m.extra["results"]) == 1


# --- an abandoned configuration ----------------------------------------------------------------

def test_an_abandoned_cell_keeps_the_others_and_exits_3(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    real = runner._run_cell_child

    def child(cell: runner.Cell, timeout: float | None, *rest: Any) -> dict[str, Any]:
        if cell.workload == "reduction":
            raise TimeoutError(f"{cell.label()} did not finish within {timeout} s")
        return real(cell, timeout, *rest)

    monkeypatch.setattr(runner, "_run_cell_child", child)
    out = tmp_path / "run"
    code = main(["run", "-b", "reference-inproc", "-w", "elementwise", "-w", "reduction",
                 "-n", "200", "-r", "1", "--warmups", "0", "--timeout", "5", "-o", str(out)])
    assert code == ExitCode.INCOMPLETE
    assert "reduction n=200 reference-inproc has no result" in capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert [f["cell"] for f in meta["failed_cells"]] == ["reduction n=200 reference-inproc"]
    assert any("has no result" in n for n in meta["notes"])
    runs = (out / "runs.csv").read_text()
    assert "elementwise" in runs and "reduction" not in runs
    assert "has no result" in (out / "report.md").read_text()


def test_when_every_cell_is_abandoned_the_run_fails(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    def child(cell: runner.Cell, timeout: float | None, *_: object) -> dict[str, Any]:
        raise RuntimeError(f"{cell.label()} failed (exit code 1)")

    monkeypatch.setattr(runner, "_run_cell_child", child)
    with pytest.raises(RuntimeError, match="no configuration finished"):
        runner.run_grid(["elementwise"], [100], ["reference-inproc"], RunOptions(),
                        run_dir=tmp_path / "run")


def test_encodings_multiply_reference_cells_only(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    labels: list[str] = []

    def child(cell: runner.Cell, timeout: float | None, *_: object) -> dict[str, Any]:
        labels.append(cell.label())
        raise RuntimeError("not run")

    monkeypatch.setattr(runner, "_run_cell_child", child)
    with pytest.raises(RuntimeError):
        runner.run_grid(["elementwise"], [100], ["reference", "dask-sync"], RunOptions(),
                        encodings=["compact", "layers"], run_dir=tmp_path / "run")
    assert labels == ["elementwise n=100 reference/compact", "elementwise n=100 reference/layers",
                      "elementwise n=100 dask-sync"]
