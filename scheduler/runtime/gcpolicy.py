"""Garbage-collector settings of the processes that run tasks.

A worker holds the results of many tasks at once (a shuffle stage: hundreds of thousands of
small lists), all alive and none garbage. With CPython's default thresholds (700, 10, 10)
every 700 new containers start a young collection, and the full collections that follow
walk every object alive: on a million-task shuffle that was 35 full collections and about
40 % of the CPU time of running the tasks, collecting nothing. Collections are made rarer,
not turned off: cycles a task leaves behind are still collected, after 100,000 new containers
instead of 700.

Rules: the settings are process-wide; ``task_gc`` sets them for the length of a ``with``
block and puts the previous ones back, so a process that runs tasks for a while (the floor,
in the harness's process) leaves the collector as it found it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["TASK_GC_THRESHOLDS", "task_gc"]

TASK_GC_THRESHOLDS = (100_000, 50, 100)
"""``gc.set_threshold`` of processes running tasks: young collections every 100,000 new
containers; older generations every 50 and 100 collections of the one below."""


@contextmanager
def task_gc() -> Iterator[None]:
    """Run the block with ``TASK_GC_THRESHOLDS``; the previous thresholds come back after it
    (also when it raises). A collector that was disabled stays disabled."""
    old = gc.get_threshold()
    gc.set_threshold(*TASK_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*old)
