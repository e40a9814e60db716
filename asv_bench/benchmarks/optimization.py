"""Stage 2, optimize: culling, linear fusion and blockwise layer fusion.

``cull`` and ``fuse_linear`` work on the lowered ``TaskGraph`` (``scheduler.graph.optimize``);
``fuse_blockwise`` on the ``LayerGraph`` before lowering. None changes its input, so inputs are
loaded once per benchmark process.
"""

from __future__ import annotations

from typing import Any

from . import common

try:
    from scheduler.graph.optimize import cull, fuse_linear
except ImportError:  # commits before the optimize module: their rows are skipped
    cull = fuse_linear = None  # type: ignore[assignment]

_PARAMS = (list(common.OPTIMIZE_WORKLOADS), list(common.SIZES))
_NAMES = ("workload", "n_tasks")


class Cull(common.GraphInputs):
    """Times ``cull(graph, outputs)``: marking the tasks the requested keys need and, when
    some are not needed, renumbering them into a new graph. The outputs are the workload's
    keys, so the look-up of those keys (500,000 of them for a 1,000,000-task elementwise
    graph) is part of the time, as it is for the client."""

    params = _PARAMS
    param_names = _NAMES
    timeout = common.LONG_TIMEOUT

    def setup(self, cache: Any, workload: str, n: int) -> None:
        common.skip_unless(cull is not None)
        self.graph, self.outputs = common.load_once(self, cache[(workload, n)])

    def time_cull(self, cache: Any, workload: str, n: int) -> None:
        cull(self.graph, self.outputs)


class FuseLinear(common.GraphInputs):
    """Times ``fuse_linear(graph, keep=outputs)``: finding one-in-one-out chains and inlining
    them (whole regular groups first, then explicit tasks), with the output keys kept."""

    params = _PARAMS
    param_names = _NAMES
    timeout = common.LONG_TIMEOUT

    def setup(self, cache: Any, workload: str, n: int) -> None:
        common.skip_unless(fuse_linear is not None)
        self.graph, self.outputs = common.load_once(self, cache[(workload, n)])

    def time_fuse_linear(self, cache: Any, workload: str, n: int) -> None:
        fuse_linear(self.graph, keep=self.outputs)


class FuseBlockwise(common.LayerInputs):
    """Times ``LayerGraph.fuse_blockwise(keep=[output layer])``: fusing chains of Blockwise
    layers into one template. Its cost depends on the number of layers, not of tasks; the
    task count is a parameter to show that it stays flat."""

    params = _PARAMS
    param_names = _NAMES
    timeout = common.LONG_TIMEOUT

    def time_fuse_blockwise(self, cache: Any, workload: str, n: int) -> None:
        layers, output_layer, _ = cache[(workload, n)]
        layers.fuse_blockwise(keep=[output_layer])
