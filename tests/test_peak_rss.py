"""Peak resident memory per role: measured once per run in every process, in runs.csv.

Small sizes; the figures are checked for presence, plausibility and reset, never for speed.
"""

from __future__ import annotations

import json
import sys

import pytest

from harness.backends.base import RunOptions
from harness.measure import PEAK_RSS_COLUMNS
from harness.runner import Cell, run_cell
from scheduler.runtime.memory import peak_rss

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the per-run reset needs Linux's clear_refs")


@linux_only
def test_peak_rises_with_an_allocation_and_a_reset_starts_over() -> None:
    peak_rss(reset=True)
    before = peak_rss()
    block = bytearray(64 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page so that it is resident
    during = peak_rss()
    assert during >= before + 60 * 2**20
    del block
    peak_rss(reset=True)
    after = peak_rss()
    assert after < during - 40 * 2**20


@pytest.mark.parametrize("record", [True, False])
def test_every_role_of_a_reference_run_has_its_peak(record: bool) -> None:
    cell = Cell("elementwise", 2000, "reference", RunOptions(workers=2, record=record),
                repeats=2, warmups=0)
    out = run_cell(cell)
    assert len(out["runs"]) == len(cell.modes())
    for row in out["runs"]:
        roles = json.loads(row["peak_rss_by_role"])
        assert set(roles) == {"client", "scheduler", "worker-0", "worker-1"}
        assert all(10 * 2**20 < v < 4 * 2**30 for v in roles.values()), roles
        assert row["peak_rss_client_bytes"] == roles["client"]
        assert row["peak_rss_scheduler_bytes"] == roles["scheduler"]
        assert row["peak_rss_worker_bytes"] == max(roles["worker-0"], roles["worker-1"])


def test_a_one_process_backend_has_only_the_client() -> None:
    out = run_cell(Cell("reduction", 2000, "floor", RunOptions(), repeats=1, warmups=0))
    row = out["runs"][0]
    assert set(PEAK_RSS_COLUMNS) <= set(row)
    assert row["peak_rss_client_bytes"] > 0
    assert row["peak_rss_scheduler_bytes"] is None and row["peak_rss_worker_bytes"] is None
