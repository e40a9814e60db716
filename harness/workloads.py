"""Named, backend-neutral workloads sized by task count.

Each workload is a ``LayerGraph`` of the reference system plus the keys a user would ask for
and the parameters that fix its shape, so that other backends (Dask) can build the same
structure. Sizes are requests: ``build`` picks the shape whose task count is closest to the
request and reports the real count (``Workload.n_tasks``), which is what reports use.

The task functions are trivial on purpose (small ints and short lists): stagecost measures the
cost of running a graph, not of the work inside tasks. They live at module level so that
workers import them by reference.

| name         | structure                                                            |
|--------------|----------------------------------------------------------------------|
| elementwise  | ``x_i = source(i)``, ``y_i = inc(x_i)``; outputs every ``y_i``       |
| reduction    | ``x_i = source(i)``, tree sum with ``split_every``; one output       |
| shuffle      | ``p_i`` = short list, all-to-all shuffle (staged, ``max_branch``)    |
| chain        | ``width`` chains of ``length`` ``inc`` tasks; outputs chain ends     |
| fanout       | one source, ``width`` tasks reading it, tree fan-in of ``fan_in``    |
| random-dag   | ``levels`` of random tasks, each reading 1..``max_deps`` earlier ones |
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scheduler.graph.keys import Key, RegularKeys
from scheduler.graph.layers import Blockwise, LayerGraph, Reduction, Shuffle, blockwise
from scheduler.graph.lowgraph import TaskGraph, TaskGroup
from scheduler.graph.task import BlockArg, DepList, IndexSlot, Task

__all__ = ["WORKLOADS", "Workload", "build", "describe"]


# --- task functions (imported by workers by reference) ----------------------------------

def source(i: int) -> int:
    return i


def inc(x: int) -> int:
    return x + 1


def total(parts: list) -> int:
    return sum(parts)


def partition(i: int, n: int, items: int = 4) -> list[int]:
    """A partition of a shuffle: ``items`` ints whose value modulo ``n`` is their target."""
    return [(i * 7919 + j * 104729) % (n * 1000) for j in range(items)]


def split_by_target(part: list[int], stage: int, k: int, n: int) -> list[list[int]]:
    step = k ** stage
    out: list[list[int]] = [[] for _ in range(k)]
    for x in part:
        out[((x % n) // step) % k].append(x)
    return out


def concat(pieces: list[list[int]]) -> list[int]:
    return [x for p in pieces for x in p]


def add_deps(deps: list, i: int) -> int:
    return (sum(deps) + i) % 1_000_003


# --- workloads -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """A built workload. ``layers`` lower to ``n_tasks`` tasks; ``outputs`` are the keys asked
    for; ``params`` fix the shape (enough for another backend to build the same graph)."""

    name: str
    requested: int
    params: dict[str, Any]
    layers: LayerGraph | None
    outputs: list[Key]
    n_tasks: int
    graph_builder: Callable[[], TaskGraph] | None = field(default=None, compare=False)

    def lower(self) -> TaskGraph:
        """The low-level graph (lowered layers, or the direct builder for random-dag)."""
        if self.layers is not None:
            return self.layers.lower()
        assert self.graph_builder is not None
        return self.graph_builder()

    def layer_graph(self) -> LayerGraph:
        """The workload as high-level layers (a workload built without layers, random-dag,
        becomes one Materialized layer: per-task work, like an imported graph)."""
        if self.layers is not None:
            return self.layers
        from scheduler.graph.layers import Materialized

        tasks = self.lower().to_dict()
        outputs = set(self.outputs)
        body = {k: v for k, v in tasks.items() if k not in outputs}
        last = {k: tasks[k] for k in self.outputs}
        return LayerGraph([Materialized(f"{self.name}-body", body),
                           Materialized(self.output_layer, last)])

    @property
    def output_layer(self) -> str:
        k = self.outputs[0]
        return k[0] if isinstance(k, tuple) else str(k)


def _elementwise(n: int) -> Workload:
    m = max(1, round(n / 2))
    layers = LayerGraph([blockwise("source", (m,), source, IndexSlot(0)),
                         blockwise("inc", (m,), inc, BlockArg("source"))])
    return Workload("elementwise", n, {"blocks": m}, layers, [("inc", i) for i in range(m)],
                    2 * m)


def _tree_size(m: int, split_every: int) -> int:
    return m + sum(Reduction("r", "x", total, split_every=split_every).levels(m))


def _reduction(n: int, split_every: int = 8) -> Workload:
    # tasks ~ m * (1 + 1/(s-1)); search m so the real count is closest to n
    m = max(1, round(n * (split_every - 1) / split_every))
    while m > 1 and _tree_size(m, split_every) > n:
        m -= 1
    while _tree_size(m + 1, split_every) <= n:
        m += 1
    layers = LayerGraph([blockwise("source", (m,), source, IndexSlot(0)),
                         Reduction("total", "source", total, split_every=split_every)])
    return Workload("reduction", n, {"blocks": m, "split_every": split_every}, layers,
                    [("total", 0)], layers.n_tasks)


def _shuffle_layers(m: int, max_branch: int) -> LayerGraph:
    from functools import partial

    return LayerGraph([
        blockwise("partition", (m,), partition, IndexSlot(0), m),
        Shuffle("shuffle", "partition", partial(split_by_target, n=m), concat,
                max_branch=max_branch),
    ])


def _shuffle(n: int, max_branch: int = 32) -> Workload:
    def count(m: int) -> int:
        return _shuffle_layers(m, max_branch).n_tasks

    lo, hi = 1, max(2, n)
    while lo < hi:  # largest m with count(m) <= n (count grows with m)
        mid = (lo + hi + 1) // 2
        if count(mid) <= n:
            lo = mid
        else:
            hi = mid - 1
    m = lo
    layers = _shuffle_layers(m, max_branch)
    return Workload("shuffle", n, {"partitions": m, "max_branch": max_branch}, layers,
                    [("shuffle", j) for j in range(m)], layers.n_tasks)


def _chain(n: int, length: int = 100) -> Workload:
    length = max(1, min(length, n))
    width = max(1, round(n / length))
    layers: list[Blockwise] = [blockwise("chain-0", (width,), source, IndexSlot(0))]
    for d in range(1, length):
        layers.append(blockwise(f"chain-{d}", (width,), inc, BlockArg(f"chain-{d - 1}")))
    last = f"chain-{length - 1}"
    return Workload("chain", n, {"width": width, "length": length}, LayerGraph(layers),
                    [(last, i) for i in range(width)], width * length)


def _fanout(n: int, fan_in: int = 1000) -> Workload:
    width = max(1, n - 1)
    while width > 1 and 1 + width + sum(
            Reduction("r", "x", total, split_every=fan_in).levels(width)) > n:
        width -= 1
    layers = LayerGraph([
        blockwise("root", (), source, 0),
        blockwise("spread", (width,), add_deps_block, BlockArg("root"), IndexSlot(0)),
        Reduction("gather", "spread", total, split_every=fan_in),
    ])
    return Workload("fanout", n, {"width": width, "fan_in": fan_in}, layers, [("gather", 0)],
                    layers.n_tasks)


def add_deps_block(root: int, i: int) -> int:
    return root + i


def random_dag_graph(levels: int, width: int, max_deps: int, window: int,
                     seed: int) -> TaskGraph:
    """A layered random DAG: level 0 has no dependencies; a task of level ``l > 0`` reads
    1..``max_deps`` random tasks of the ``window`` levels before it. Seeded, vectorised."""
    rng = np.random.default_rng(seed)
    groups = [TaskGroup.uniform(RegularKeys("rand-0", (width,)),
                                Task(source, IndexSlot(0)), np.zeros((width, 0)))]
    for lev in range(1, levels):
        counts = rng.integers(1, max_deps + 1, size=width)
        indptr = np.zeros(width + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        first = max(0, lev - window) * width
        picks = rng.integers(first, lev * width, size=int(indptr[-1]))
        # distinct dependencies per task: sort within rows, drop repeats
        owner = np.repeat(np.arange(width), counts)
        order = np.lexsort((picks, owner))
        picks = picks[order]
        dup = np.zeros(len(picks), dtype=bool)
        dup[1:] = (picks[1:] == picks[:-1]) & (owner[1:] == owner[:-1])
        if dup.any():
            keep = ~dup
            counts = np.bincount(owner[keep], minlength=width)
            np.cumsum(counts, out=indptr[1:])
            picks = picks[keep]
        groups.append(TaskGroup(RegularKeys(f"rand-{lev}", (width,)),
                                template=Task(add_deps, DepList(), IndexSlot(0)),
                                indptr=indptr, indices=picks))
    return TaskGraph(groups)


def _random_dag(n: int, width: int = 0, max_deps: int = 3, window: int = 4,
                seed: int = 0) -> Workload:
    # about 10*sqrt(n) wide, but at least 4 levels so that small graphs have edges
    width = width or max(1, min(10_000, round(math.sqrt(n) * 10), n // 4))
    levels = max(1, round(n / width))
    params = {"levels": levels, "width": width, "max_deps": max_deps, "window": window,
              "seed": seed}
    last = levels - 1
    return Workload("random-dag", n, params, None, [(f"rand-{last}", i) for i in range(width)],
                    levels * width,
                    graph_builder=lambda: random_dag_graph(levels, width, max_deps, window,
                                                           seed))


WORKLOADS: dict[str, Callable[..., Workload]] = {
    "elementwise": _elementwise,
    "reduction": _reduction,
    "shuffle": _shuffle,
    "chain": _chain,
    "fanout": _fanout,
    "random-dag": _random_dag,
}


def build(name: str, n_tasks: int, **params: Any) -> Workload:
    """Build workload ``name`` with about ``n_tasks`` tasks (the real count is reported)."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}")
    if not isinstance(n_tasks, int) or n_tasks < 2:
        raise ValueError(f"n_tasks must be an int >= 2, got {n_tasks!r}")
    return WORKLOADS[name](n_tasks, **params)


def describe() -> list[dict[str, Any]]:
    """Name, parameters (with defaults) and one-line summary of every workload."""
    import inspect

    out = []
    for name, fn in WORKLOADS.items():
        sig = inspect.signature(fn)
        params = {p.name: p.default for p in list(sig.parameters.values())[1:]}
        out.append({"name": name, "parameters": params,
                    "summary": _SUMMARIES[name]})
    return out


_SUMMARIES = {
    "elementwise": "source then inc over independent blocks (two tasks per block)",
    "reduction": "source blocks summed by a tree reduction",
    "shuffle": "all-to-all exchange of partitions, staged for many partitions",
    "chain": "many independent chains of inc tasks (linear fusion target)",
    "fanout": "one root read by many tasks, gathered by a wide tree",
    "random-dag": "seeded layered random DAG with 1..max_deps dependencies per task",
}
