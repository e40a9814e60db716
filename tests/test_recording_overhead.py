"""Every run measures what recording costs: record-on and record-off repeats interleaved,
wall times from the record-off ones, stage times from the record-on ones."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.backends import make_backend
from harness.backends.base import RunOptions
from harness.report import tables as T
from harness.runner import Cell, record_overhead, run_cell
from harness.workloads import build


def _runs(rows: list[tuple[str, int, float, bool]]) -> pd.DataFrame:
    return pd.DataFrame([{"backend": b, "workload": "reduction", "n_tasks": 100, "repeat": r,
                          "wall_s": w, "time_to_first_task_s": 0.01 if on else math.nan,
                          "tasks_run": 100, "recorded": on} for b, r, w, on in rows])


def test_a_cell_interleaves_recorded_and_unrecorded_repeats() -> None:
    out = run_cell(Cell("reduction", 300, "reference-inproc", RunOptions(), repeats=3,
                        warmups=0))
    runs = out["runs"]
    assert [r["recorded"] for r in runs] == [True, False] * 3
    assert [r["repeat"] for r in runs] == list(range(6))
    staged = {r["repeat"] for r in out["stages"]}
    assert staged == {0, 2, 4}
    assert {r["repeat"] for r in out["spans"]} == {0, 2, 4}
    on = sorted(r["wall_s"] for r in runs if r["recorded"])
    off = sorted(r["wall_s"] for r in runs if not r["recorded"])
    expected = on[1] / off[1] - 1
    assert all(r["record_overhead"] == pytest.approx(expected) for r in runs)
    cpu_on = sorted(r["cpu_s"] for r in runs if r["recorded"])
    cpu_off = sorted(r["cpu_s"] for r in runs if not r["recorded"])
    assert all(r["record_overhead_cpu"] == pytest.approx(cpu_on[1] / cpu_off[1] - 1)
               for r in runs)


def test_no_record_and_profiles_run_one_kind_of_repeat() -> None:
    off = Cell("reduction", 300, "reference-inproc", RunOptions(record=False), repeats=2)
    assert off.modes() == [False, False]
    profiled = Cell("reduction", 300, "reference-inproc", RunOptions(), repeats=2,
                    overhead=False)
    assert profiled.modes() == [True, True]
    out = run_cell(Cell("reduction", 300, "floor", RunOptions(record=False), repeats=2,
                        warmups=0))
    assert [r["recorded"] for r in out["runs"]] == [False, False]
    assert out["stages"] == []
    assert all(r["record_overhead"] is None for r in out["runs"])


def test_record_overhead_needs_both_kinds() -> None:
    rows = [{"wall_s": 2.0, "recorded": True}, {"wall_s": 1.0, "recorded": False},
            {"wall_s": 4.0, "recorded": True}, {"wall_s": 3.0, "recorded": False}]
    assert record_overhead(rows) == pytest.approx(3.0 / 2.0 - 1)
    assert record_overhead(rows[:1]) is None


def test_a_backend_started_without_recording_cannot_turn_it_on() -> None:
    backend = make_backend("reference-inproc", RunOptions(record=False))
    backend.set_record(False)
    with pytest.raises(ValueError, match="recording off"):
        backend.set_record(True)


def test_the_reference_cluster_turns_recording_off_and_on_between_runs() -> None:
    backend = make_backend("reference", RunOptions(workers=1))
    workload = build("reduction", 200)
    with backend:
        on = backend.run_once(workload)
        backend.set_record(False)
        off = backend.run_once(workload)
        backend.set_record(True)
        again = backend.run_once(workload)
    assert {r.role for r in on.spans} >= {"client", "scheduler", "worker-0"}
    assert off.spans == []
    assert {r.role for r in again.spans} == {r.role for r in on.spans}


def test_wall_times_come_from_unrecorded_runs_and_first_task_from_recorded_ones() -> None:
    runs = _runs([("a", 0, 2.0, True), ("a", 1, 1.0, False), ("a", 2, 2.2, True),
                  ("a", 3, 1.2, False)])
    assert T.speed_runs(runs)["repeat"].tolist() == [1, 3]
    assert T.recorded_runs(runs)["repeat"].tolist() == [0, 2]
    meas = T.measures(pd.DataFrame(columns=["backend", "workload", "n_tasks", "repeat",
                                            "stage", "role", "seconds", "us_per_task",
                                            "nbytes", "messages", "applicable"]), runs)
    wall = meas[meas["stage"] == "wall"]
    assert wall["repeat"].tolist() == [1, 3]
    first = meas[meas["stage"] == "time_to_first_task"]
    assert first["repeat"].tolist() == [0, 2] and first["applicable"].all()
    summary = T.run_summary(runs).iloc[0]
    assert summary["repeats"] == 2 and summary["recorded_repeats"] == 2
    assert summary["wall_s_median"] == pytest.approx(1.1)
    assert summary["wall_recorded_s_median"] == pytest.approx(2.1)
    assert summary["record_overhead"] == pytest.approx(2.1 / 1.1 - 1)
    assert summary["time_to_first_task_s_median"] == pytest.approx(0.01)
    assert math.isnan(summary["record_overhead_cpu"])  # no cpu_s column
    cpu = T.run_summary(runs.assign(cpu_s=[1.5, 1.0, 1.7, 1.2])).iloc[0]
    assert cpu["record_overhead_cpu"] == pytest.approx(1.6 / 1.1 - 1)


def test_runs_without_the_recorded_column_read_as_recorded() -> None:
    runs = _runs([("a", 0, 2.0, True), ("a", 1, 1.0, True)]).drop(columns="recorded")
    assert len(T.speed_runs(runs)) == 2
    summary = T.run_summary(runs).iloc[0]
    assert summary["wall_s_median"] == pytest.approx(1.5)
    assert math.isnan(summary["record_overhead"])


def test_a_configuration_with_one_kind_keeps_its_runs_for_wall_time() -> None:
    runs = _runs([("a", 0, 2.0, True), ("a", 1, 1.0, False), ("b", 0, 5.0, True),
                  ("b", 1, 7.0, True)])
    summary = T.run_summary(runs).set_index("backend")
    assert summary.loc["a", "wall_s_median"] == pytest.approx(1.0)
    assert summary.loc["b", "wall_s_median"] == pytest.approx(6.0)
    assert math.isnan(summary.loc["b", "record_overhead"])


def test_the_headline_says_which_repeats_each_figure_comes_from() -> None:
    from harness.report.render import headline_text

    runs = _runs([("a", 0, 2.2, True), ("a", 1, 2.0, False), ("a", 2, 2.2, True),
                  ("a", 3, 2.0, False)])
    row = T.headline(T.stage_summary(pd.DataFrame(columns=[
        "backend", "workload", "n_tasks", "repeat", "stage", "role", "seconds",
        "us_per_task", "nbytes", "messages", "applicable"])), T.run_summary(runs)).iloc[0]
    text = headline_text(row, history=False)
    assert "first task after 0.01 s (recording on)" in text
    assert "last result after 2 s (recording off)" in text
    assert "recording overhead +10 %" in text
