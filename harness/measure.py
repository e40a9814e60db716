"""From what a backend measured to the rows of the run folder's tables (pure functions).

Rules: busy seconds of a stage are the sum of its spans' durations per role (spans of one
role may overlap across threads; that is busy time, not wall time). ``us_per_task`` divides
by the workload's task count. A stage the backend lacks gets one row with role ``all``,
``applicable=False`` and no numbers; a stage it has but that recorded nothing gets zeros,
which is a measurement. Times in ``spans.csv`` are seconds after ``compute()``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from harness.backends.base import Measurement
from scheduler.stages import Stage

__all__ = ["PEAK_RSS_COLUMNS", "run_row", "span_rows", "stage_rows", "time_to_first_task"]


def stage_rows(m: Measurement, key: dict[str, Any], n_tasks: int,
               applicable: frozenset[Stage]) -> list[dict[str, Any]]:
    agg: dict[tuple[int, str], list[float]] = defaultdict(lambda: [0.0, 0, 0])
    for r in m.spans:
        a = agg[(r.stage, r.role)]
        a[0] += (r.end_ns - r.start_ns) / 1e9
        a[1] += r.nbytes
        a[2] += r.messages
    rows = []
    for stage in Stage:
        roles = sorted(role for (st, role) in agg if st == stage)
        if stage not in applicable:
            rows.append({**key, "stage": stage.name, "role": "all", "seconds": None,
                         "us_per_task": None, "nbytes": None, "messages": None,
                         "applicable": False})
            continue
        if not roles:
            rows.append({**key, "stage": stage.name, "role": "all", "seconds": 0.0,
                         "us_per_task": 0.0, "nbytes": 0, "messages": 0, "applicable": True})
        for role in roles:
            sec, nb, msgs = agg[(int(stage), role)]
            rows.append({**key, "stage": stage.name, "role": role, "seconds": sec,
                         "us_per_task": sec / n_tasks * 1e6, "nbytes": int(nb),
                         "messages": int(msgs), "applicable": True})
    return rows


def span_rows(m: Measurement, key: dict[str, Any]) -> list[dict[str, Any]]:
    t0 = m.t0_ns
    return [{**key, "stage": Stage(r.stage).name, "role": r.role,
             "start_s": (r.start_ns - t0) / 1e9, "end_s": (r.end_ns - t0) / 1e9,
             "tasks": int(r.tasks), "nbytes": int(r.nbytes), "messages": int(r.messages)}
            for r in m.spans]


def time_to_first_task(m: Measurement) -> float | None:
    """Seconds from ``compute()`` to the start of the first batch of tasks on a worker."""
    starts = [r.start_ns for r in m.spans
              if r.stage == Stage.execute and r.role.startswith("worker") and r.tasks]
    if not starts:
        return None
    return (min(starts) - m.t0_ns) / 1e9


PEAK_RSS_COLUMNS = ("peak_rss_client_bytes", "peak_rss_scheduler_bytes",
                    "peak_rss_worker_bytes", "peak_rss_by_role")
"""Columns ``run_row`` adds: peak resident bytes of the client, the scheduler and the largest
worker during the run (empty where the backend has no such process or could not measure
it), and every role's figure as JSON (``{"client": ..., "worker-0": ...}``)."""


def run_row(m: Measurement, key: dict[str, Any]) -> dict[str, Any]:
    import json

    rss = m.peak_rss
    workers = [v for role, v in rss.items() if role.startswith("worker")]
    peaks = (rss.get("client"), rss.get("scheduler"), max(workers) if workers else None,
             json.dumps(dict(sorted(rss.items()))) if rss else None)
    return {**key, "wall_s": (m.t_end_ns - m.t0_ns) / 1e9,
            "time_to_first_task_s": time_to_first_task(m), "tasks_run": m.tasks_run,
            **dict(zip(PEAK_RSS_COLUMNS, peaks, strict=True))}
