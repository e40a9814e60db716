"""The six workloads as Dask collections: same shape, same task functions, Dask's own APIs.

Rules: ``dask_collection(workload)`` reads only the workload's ``params`` (and, for
random-dag, its seeded low-level graph) and builds a Dask collection with Dask's collection
APIs where one exists, so that Dask's own graph generation and optimisation are what the
backends measure; otherwise it wraps a plain low-level graph (Task-spec objects) into a Bag,
whose partitions are the workload's outputs. Tasks call the functions of
``harness.workloads`` (through a one-line adapter where Dask passes a block index).

Outputs are computed as ``persist`` does it (``collections_to_expr(...).optimize()`` and the
collection's own keys), then gathered: ``compute()`` would add a finalize task (an array
concatenation, a bag concatenation) that the reference does not have.

Structure of the graph Dask builds (``materialize(..., optimize=False)``, before its
low-level optimisation) against the reference's lowered graph (``workload.lower()``);
``m`` = blocks or partitions:

| workload    | Dask API                                                   | tasks, edges vs reference |
|-------------|------------------------------------------------------------|---------------------------|
| elementwise | ``da.map_blocks(source)``, then ``.map_blocks(inc)``      | equal                     |
| reduction   | the same source, ``.sum(split_every=8)``                   | + m, + m (1)              |
| shuffle     | partitions in a Bag, ``.groupby(target, shuffle="tasks", max_branch=32)`` | more (2)   |
| chain       | ``da.map_blocks(source)``, ``length - 1`` x ``.map_blocks(inc)`` | equal               |
| fanout      | low-level graph in a Bag: root, spread, tree of ``total``  | equal                     |
| random-dag  | low-level graph in a Bag, rebuilt from the seeded graph    | equal                     |
| ones-sum    | ``da.ones(shape, chunks=5).sum()``, Dask's defaults         | more (3)                  |

(1) Dask's tree reduction starts with a per-block ``chunk`` sum (a Blockwise layer over the
    source), then the reference's levels (``split_every=8``): 1,873 / 1,872 for 1,000 / 999.
(2) Dask's task shuffle (``groupby_tasks``) plans ``s`` stages of branching ``k`` as the
    reference does (``p = k**s`` padded partitions). Per stage it has a ``group`` task per
    partition (the reference's split), then a ``dict.get`` task per (partition, branch)
    extracting one piece, then a ``join`` per partition (the reference's combine reads its
    ``k`` splits directly, with no extraction tasks). Around them: a ``map`` adding each
    item's hash, a start alias per partition, a final per-partition grouping. Tasks
    ``2m + 2p + s*p*(k + 2)``, edges ``2m + p + s*p*(2k + 1)``; the outputs are ``p``
    partitions (``p == m`` at the reference's sizes). So Dask has about ``(k + 2) / 2`` times
    the tasks: 7,056 for 980 (m=196, s=2, k=14), 57,233 for 9,317 (m=1,331, s=3, k=11),
    1,133,568 for 96,768 (m=13,824, s=3, k=24).
(3) Dask builds a ``ones`` layer and a per-block ``sum`` (fused into one task per block when
    it optimises), then partial sums that combine neighbouring blocks along each axis,
    where the reference's tree combines 8 blocks in C order: for 10**3 blocks, 1,159 Dask
    tasks after fusion against the reference's 1,144.

What Dask then runs (``optimize=True``, its default, as ``persist``/``compute`` do):
elementwise: Blockwise fusion merges source+inc, m tasks and no edges (500 for 1,000);
chain: each chain is one task (``width`` tasks); reduction: the chunk sums are folded back
into the sources (the reference's count again) and linear fusion merges a tree node that has
one input into that input when the input is a tree node too (-1 task, -1 edge each: 10,000
-> 9,999; not when the input is a source block: 1,000 stays 1,000); shuffle: linear fusion
merges each input partition with its hash ``map`` (-m tasks, -m edges; 6,860 for 7,056);
fanout: unchanged at these sizes; random-dag: tasks that are the only dependent of their
only dependency are merged (about a quarter: 748-750 for 1,000, varying with the process's
string-hash seed, since Dask's fusion walks sets).

Results equal the reference's: blocks hold the reference's values; the shuffle is equal up
to which output partition holds which target (Dask hashes the target), so results are
compared as {target: sorted items}, each target in exactly one output partition.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.workloads import (
    Workload,
    add_deps,
    add_deps_block,
    inc,
    partition,
    source,
    total,
)

__all__ = ["DaskGraph", "canonical", "dask_collection", "expected_shape", "graph_shape",
           "materialize"]


@dataclass(frozen=True)
class DaskGraph:
    """A Dask collection equivalent to a workload; its outputs are the collection's keys.
    Work written with Dask's APIs may hold several (``collections``); ``n_outputs`` is -1
    when only the built graph knows it."""

    workload: str
    collection: Any
    n_outputs: int
    collections: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if not self.collections:
            object.__setattr__(self, "collections", (self.collection,))


# --- task adapters (module level: workers import them by reference) -------------------------

def source_block(block_id: tuple[int, ...] | None = None) -> np.ndarray:
    """A one-element block holding ``source(i)`` for block ``i``."""
    assert block_id is not None
    return np.array([source(block_id[0])], dtype=np.int64)


def target(x: int, m: int) -> int:
    """The output partition an item of the shuffle goes to (as in ``split_by_target``)."""
    return x % m


# --- builders --------------------------------------------------------------------------------

def _source_array(m: int) -> Any:
    import dask.array as da

    return da.map_blocks(source_block, chunks=((1,) * m,), dtype=np.int64,
                         meta=np.empty((0,), dtype=np.int64))


def _elementwise(w: Workload) -> Any:
    return _source_array(w.params["blocks"]).map_blocks(inc, dtype=np.int64)


def _reduction(w: Workload) -> Any:
    return _source_array(w.params["blocks"]).sum(split_every=w.params["split_every"])


def _chain(w: Workload) -> Any:
    x = _source_array(w.params["width"])
    for _ in range(w.params["length"] - 1):
        x = x.map_blocks(inc, dtype=np.int64)
    return x


def _shuffle(w: Workload) -> Any:
    from dask.task_spec import Task

    m = w.params["partitions"]
    name = f"partition-{_token(w)}"
    parts = _bag({(name, i): Task((name, i), partition, i, m) for i in range(m)}, name, m)
    return parts.groupby(functools.partial(target, m=m), shuffle="tasks",
                         max_branch=w.params["max_branch"])


def _bag(dsk: dict[Any, Any], name: str, n: int) -> Any:
    """A Bag whose partitions ``(name, 0..n-1)`` are the outputs of the low-level ``dsk``."""
    from dask.bag import Bag
    from dask.highlevelgraph import HighLevelGraph

    return Bag(HighLevelGraph.from_collections(name, dsk, dependencies=()), name, n)


def _token(w: Workload) -> str:
    from dask.tokenize import tokenize

    return tokenize(w.name, sorted(w.params.items()))


def _tree(dsk: dict[Any, Any], inputs: Sequence[Any], name: str, split_every: int) -> None:
    """The reference's Reduction: levels of ``total`` over up to ``split_every`` inputs."""
    from dask.task_spec import List, Task, TaskRef

    level = 0
    keys = list(inputs)
    while True:
        last = len(keys) <= split_every
        size = 1 if last else math.ceil(len(keys) / split_every)
        nm = name if last else f"{name}-partial{level}"
        out = []
        for j in range(size):
            key = (nm, j)
            group = keys[j * split_every:(j + 1) * split_every]
            dsk[key] = Task(key, total, List(*(TaskRef(k) for k in group)))
            out.append(key)
        if last:
            return
        keys, level = out, level + 1


def _fanout(w: Workload) -> Any:
    from dask.task_spec import Task, TaskRef

    tok = _token(w)
    width, fan_in = w.params["width"], w.params["fan_in"]
    root = f"root-{tok}"
    dsk: dict[Any, Any] = {root: Task(root, source, 0)}
    spread = [(f"spread-{tok}", i) for i in range(width)]
    for i, key in enumerate(spread):
        dsk[key] = Task(key, add_deps_block, TaskRef(root), i)
    name = f"gather-{tok}"
    _tree(dsk, spread, name, fan_in)
    return _bag(dsk, name, 1)


def _random_dag(w: Workload) -> Any:
    from dask.task_spec import List, Task, TaskRef

    tok = _token(w)
    graph = w.lower()  # the seeded structure; tasks are rebuilt as Dask tasks below
    ref_keys: list[Any] = graph.keys()  # a TaskGraph's keys, in task id order
    keys = [(f"{k[0]}-{tok}", k[1]) for k in ref_keys]
    dsk: dict[Any, Any] = {}
    base = 0
    for gi, g in enumerate(graph.groups):
        ptr, ind = g.indptr.tolist(), g.indices.tolist()
        for i in range(len(g)):
            key = keys[base + i]
            if gi == 0:
                dsk[key] = Task(key, source, i)
            else:
                deps = List(*(TaskRef(keys[d]) for d in ind[ptr[i]:ptr[i + 1]]))
                dsk[key] = Task(key, add_deps, deps, i)
        base += len(g)
    last = keys[-1][0]
    return _bag(dsk, last, w.params["width"])


def _ones_sum(w: Workload) -> Any:
    import dask.array as da

    return da.ones(tuple(w.params["shape"]), chunks=w.params["chunk"]).sum()


_BUILDERS = {"elementwise": _elementwise, "reduction": _reduction, "shuffle": _shuffle,
             "chain": _chain, "fanout": _fanout, "random-dag": _random_dag,
             "ones-sum": _ones_sum}


def dask_collection(workload: Workload) -> DaskGraph:
    """The Dask collection of ``workload`` (building it is Dask's generate stage): the
    workload's own Dask builder if it has one (``Workload.dask``), else the one above."""
    if workload.dask is not None:
        work = workload.dask()
        return DaskGraph(workload.name, work.collections[0], -1, work.collections)
    if workload.name not in _BUILDERS:
        raise ValueError(f"no Dask graph for workload {workload.name!r}; known: "
                         f"{', '.join(_BUILDERS)}")
    return DaskGraph(workload.name, _BUILDERS[workload.name](workload),
                     len(workload.outputs))


# --- structure and results -------------------------------------------------------------------

def materialize(collection: Any, optimize: bool = True) -> tuple[dict[Any, Any], list[Any]]:
    """The task graph (Task-spec nodes) and output keys Dask would run for ``collection``,
    built as ``persist`` does it; ``optimize=False`` skips Dask's low-level optimisation."""
    from dask._task_spec import convert_legacy_graph
    from dask.base import collections_to_expr
    from dask.core import flatten

    expr = collections_to_expr([collection], optimize_graph=optimize).optimize()
    keys = list(flatten(expr.__dask_keys__()))
    return convert_legacy_graph(expr.__dask_graph__()), keys


def graph_shape(dsk: dict[Any, Any]) -> tuple[int, int]:
    """(tasks, dependency edges) of a Task-spec graph; data nodes count as tasks."""
    return len(dsk), sum(len(node.dependencies) for node in dsk.values())


def _shuffle_plan(m: int, max_branch: int) -> tuple[int, int]:
    """(stages, branching) as Dask's ``groupby_tasks`` computes them."""
    stages = int(math.ceil(math.log(m) / math.log(max_branch))) or 1
    return stages, int(math.ceil(m ** (1 / stages))) if stages > 1 else m


def expected_shape(workload: Workload) -> tuple[int, int]:
    """(tasks, edges) of Dask's unoptimised graph for ``workload``: the reference's lowered
    graph plus the documented differences of the module docstring."""
    g = workload.lower()
    p = workload.params
    if workload.name == "reduction":
        return g.n + p["blocks"], g.n_edges + p["blocks"]
    if workload.name == "shuffle":
        m = p["partitions"]
        s, k = _shuffle_plan(m, p["max_branch"])
        full = k ** s
        return 2 * m + 2 * full + s * full * (k + 2), 2 * m + full + s * full * (2 * k + 1)
    return g.n, g.n_edges


def canonical(workload: Workload, values: Sequence[Any]) -> Any:
    """Output values (Dask's or the reference's, in output order) in a comparable form:
    ints per output, or for the shuffle {target: sorted items} (and a check that every
    target lives in exactly one output partition)."""
    if workload.name != "shuffle":
        out = []
        for v in values:
            arr = np.asarray(v)
            out.append(int(arr.reshape(-1)[0]) if arr.size == 1 else arr.tolist())
        return out
    m = workload.params["partitions"]
    groups: dict[int, list[int]] = {}
    for part in values:
        xs: list[int] = []
        for v in part:  # the reference: items; Dask's groupby: (target, items) pairs
            xs.extend(v[1] if isinstance(v, tuple) else (v,))
        mine: dict[int, list[int]] = {}
        for x in xs:
            mine.setdefault(int(x) % m, []).append(int(x))
        for t, items in mine.items():
            if t in groups:
                raise AssertionError(f"target {t} is split over several output partitions")
            groups[t] = sorted(items)
    return groups
