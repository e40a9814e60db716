"""compare withholds a verdict that the machine's own change of speed could explain."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from harness.exit_codes import ExitCode
from harness.machine_check import calibrate, machine_change
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


def _measures(scale: float) -> pd.DataFrame:
    return pd.DataFrame([{"backend": "reference", "workload": "w", "n_tasks": 100,
                          "repeat": i, "stage": "wall", "seconds": scale * v,
                          "applicable": True} for i, v in enumerate(CALM)])


def test_a_regression_on_a_busier_machine_is_withheld_not_reported() -> None:
    table = compare_frames(_measures(1.0), _measures(2.0))
    assert list(table["mark"]) == ["+"] and exit_code(table) == ExitCode.REGRESSION
    held = withhold_for_machine(table, machine_change(CALM, BUSY, 1.10, ALPHA))
    assert list(held["mark"]) == ["!"]
    assert exit_code(held) == ExitCode.INCOMPLETE
    assert "machine itself ran 2.00x slower" in held["verdict"].iloc[0]
    assert "1 verdict(s) withheld" in compare_text(held)
    same = withhold_for_machine(table, machine_change(CALM, CALM, 1.10, ALPHA))
    assert list(same["mark"]) == ["+"]


def test_compare_runs_reads_the_calibrations_of_runs_csv(tmp_path: Path) -> None:
    spec = SyntheticSpec(backends=("reference",), sizes=(1_000,), repeats=5, seed=3)
    paths = []
    for name, scale, calib in (("a", 1.0, CALM), ("b", 2.0, BUSY)):
        stages, spans, runs = synthetic_tables(
            SyntheticSpec(backends=spec.backends, sizes=spec.sizes, repeats=5,
                          scale={"reference": scale}, seed=3))
        runs["calibration_s"] = calib
        write_tables(tmp_path / name, stages, spans, runs, synthetic_meta(spec))
        paths.append(tmp_path / name)
    table = compare_runs(*paths)
    assert set(table["mark"]) == {"!"}
    # without calibrations (runs written before them) the verdicts stand
    for p in paths:
        runs = pd.read_csv(p / "runs.csv").drop(columns="calibration_s")
        runs.to_csv(p / "runs.csv", index=False)
    assert set(compare_runs(*paths)["mark"]) == {"+"}
