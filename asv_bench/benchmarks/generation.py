"""Stage 1, generate: lowering a workload's high-level layers into a ``TaskGraph``.

Building the layers is O(layers) and done once in ``setup_cache``; what grows with the graph
is lowering, which is what the client does before sending a ``compact`` or ``pickle`` graph.
"""

from __future__ import annotations

from typing import Any

from . import common


class LowerLayers(common.LayerInputs):
    """Times ``LayerGraph.lower()`` of the workload's layers (vectorised lowering into task
    groups with CSR dependencies), nothing else. ``track_n_tasks`` records the real task
    count of the parameter set, to turn times into µs per task."""

    params = (list(common.OPTIMIZE_WORKLOADS), list(common.SIZES))
    param_names = ("workload", "n_tasks")
    timeout = common.LONG_TIMEOUT

    def time_lower(self, cache: Any, workload: str, n: int) -> None:
        cache[(workload, n)][0].lower()

    def track_n_tasks(self, cache: Any, workload: str, n: int) -> int:
        return int(cache[(workload, n)][2])

    track_n_tasks.unit = "tasks"  # type: ignore[attr-defined]
