"""compare withholds a verdict that the machine's own change could explain."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pytest

from harness import machine_check as mc
from harness.exit_codes import ExitCode
from harness.machine_check import LoadProbe, calibrate, load_change, machine_change
from harness.report.compare import (
    ALPHA,
    compare_frames,
    compare_runs,
    compare_text,
    exit_code,
    withhold_for_machine,
)
from harness.report.schema import write_tables
from harness.report.synthetic import SyntheticSpec, synthetic_meta, synthetic_tables

CALM = [0.010, 0.011, 0.0105, 0.0102, 0.0108]
BUSY = [2 * c for c in CALM]


def test_calibration_times_a_fixed_piece_of_work() -> None:
    assert 0 < calibrate(1_000) < 5.0


def test_the_same_machine_is_not_a_change() -> None:
    change = machine_change(CALM, list(reversed(CALM)), 1.10, ALPHA)
    assert change is not None and not change.changed and change.ratio == pytest.approx(1.0)


def test_a_machine_twice_as_slow_is_a_change() -> None:
    change = machine_change(CALM, BUSY, 1.10, ALPHA)
    assert change is not None and change.changed and change.ratio == pytest.approx(2.0)
    assert "2.00x slower during B" in change.describe()


def test_too_few_calibrations_decide_nothing_and_none_say_nothing() -> None:
    few = machine_change(CALM[:2], BUSY[:2], 1.10, ALPHA)
    assert few is not None and not few.changed and math.isnan(few.p_value)
    assert machine_change([], BUSY, 1.10, ALPHA) is None


def test_other_processes_load_changing_is_a_change() -> None:
    quiet, loaded = [0.1, 0.0, 0.2, 0.1, 0.05], [1.1, 0.9, 1.3, 1.0, 1.2]
    change = load_change(quiet, loaded, 0.05)
    assert change is not None and change.changed
    assert "1.10 cores during B against 0.10" in change.describe()
    same = load_change(quiet, [0.12, 0.02, 0.18, 0.08, 0.1], 0.05)
    assert same is not None and not same.changed
    small = load_change(quiet, [0.3, 0.25, 0.35, 0.3, 0.28], 0.05)  # < a quarter core apart
    assert small is not None and not small.changed


def test_the_load_probe_counts_other_processes_not_this_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 12.0])  # the run lasts 2 s
    busy = iter([100.0, 103.0])  # the kernel counted 3 CPU-seconds meanwhile ...
    own = iter([5.0, 6.0])  # ... 1 of them this process's (and its children's)
    monkeypatch.setattr(mc, "_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(mc, "_own_seconds", lambda: next(own))
    monkeypatch.setattr(mc.time, "perf_counter", lambda: next(clock))
    probe = LoadProbe()
    probe.start()
    assert probe.stop() == pytest.approx(1.0)  # others used one core on average


def test_the_load_probe_reads_this_machine() -> None:
    probe = LoadProbe()
    probe.start()
    calibrate(100_000)
    load = probe.stop()
    if load is None:
        pytest.skip("no /proc/stat on this system")
    assert 0.0 <= load <= (os.cpu_count() or 1)


def _measures(scale: float) -> pd.DataFrame:
    return pd.DataFrame([{"backend": "reference", "workload": "w", "n_tasks": 100,
                          "repeat": i, "stage": "wall", "seconds": scale * v,
                          "applicable": True} for i, v in enumerate(CALM)])


def test_a_regression_on_a_busier_machine_is_withheld_not_reported() -> None:
    table = compare_frames(_measures(1.0), _measures(2.0))
    assert list(table["mark"]) == ["+"] and exit_code(table) == ExitCode.REGRESSION
    busier = machine_change(CALM, BUSY, 1.10, ALPHA)
    assert busier is not None
    held = withhold_for_machine(table, [busier.describe()])
    assert list(held["mark"]) == ["!"]
    assert exit_code(held) == ExitCode.INCOMPLETE
    assert "machine itself ran 2.00x slower" in held["verdict"].iloc[0]
    assert "1 verdict(s) withheld" in compare_text(held)
    assert list(withhold_for_machine(table, [])["mark"]) == ["+"]


@pytest.mark.parametrize(("calibrations", "loads"), [((CALM, BUSY), (0.0, 0.0)),
                                                     ((CALM, CALM), (0.1, 1.2))])
def test_compare_runs_reads_the_machine_columns_of_runs_csv(
        tmp_path: Path, calibrations: tuple[list[float], list[float]],
        loads: tuple[float, float]) -> None:
    spec = SyntheticSpec(backends=("reference",), sizes=(1_000,), repeats=5, seed=3)
    paths = []
    for name, scale, calib, load in zip(("a", "b"), (1.0, 2.0), calibrations, loads,
                                        strict=True):
        stages, spans, runs = synthetic_tables(
            SyntheticSpec(backends=spec.backends, sizes=spec.sizes, repeats=5,
                          scale={"reference": scale}, seed=3))
        runs["calibration_s"] = calib
        runs["other_load"] = [load + 0.01 * i for i in range(len(runs))]
        write_tables(tmp_path / name, stages, spans, runs, synthetic_meta(spec))
        paths.append(tmp_path / name)
    assert set(compare_runs(*paths)["mark"]) == {"!"}
    # without those columns (runs written before them) the verdicts stand
    for p in paths:
        runs = pd.read_csv(p / "runs.csv").drop(columns=["calibration_s", "other_load"])
        runs.to_csv(p / "runs.csv", index=False)
    assert set(compare_runs(*paths)["mark"]) == {"+"}
