"""Work given as Dask collections: what a user's ``make(n_tasks)``, or a built-in workload
written with Dask's APIs, returns; checked, normalised, and turned into the graph Dask runs.

Rules of this module:

- Accepted (``as_dask_work``): one Dask collection (anything ``dask.is_dask_collection``
  accepts: arrays, dataframes, bags, delayed objects); a non-empty list or tuple of them; or a
  plain Dask graph with its keys, ``(graph, keys)``, where ``graph`` is a mapping (a dict or a
  ``HighLevelGraph``) and ``keys`` a key or a (nested) list of keys, all in ``graph``. A plain
  graph becomes one ``Delayed`` per key, so that every backend treats the three forms alike:
  through ``dask.base.collections_to_expr`` and Dask's default optimisation, as ``persist``
  does it. Anything else raises ``WorkloadError`` saying where it came from and what is
  accepted.
- The task count of such work is that of the graph Dask runs for it: its expression
  optimised, materialised with Dask's low-level optimisation (``count_tasks``). Counting
  builds the graph once, outside any measured run.
- Dask is imported only when work is checked or built: the reference system's own
  workloads do not pay for it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.workloads import Workload

__all__ = ["DaskWork", "WorkloadError", "as_dask_work", "count_tasks", "dask_workload",
           "optimized_graph"]


class WorkloadError(ValueError):
    """A workload given by the user is wrong: its file or module does not import, its
    function is missing or returns something else than Dask work, or its graph fails. The
    message names the workload (file or module, and function) and what to do."""


@dataclass(frozen=True)
class DaskWork:
    """Dask collections to compute (a plain graph is held as ``Delayed`` objects)."""

    collections: tuple[Any, ...]
    origin: str
    """Where the work came from (``examples/clim.py:make``), for error messages."""

    def expr(self) -> Any:
        """The collections as one Dask expression, optimised as ``persist`` does it."""
        from dask.base import collections_to_expr

        return collections_to_expr(list(self.collections), optimize_graph=True).optimize()


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__module__}.{type(value).__qualname__} {text}"


def as_dask_work(value: Any, origin: str) -> DaskWork:
    """``value`` (what ``origin`` returned) as ``DaskWork``; ``WorkloadError`` if it is not a
    Dask collection, a list or tuple of them, or a ``(graph, keys)`` pair."""
    from dask import is_dask_collection

    accepted = ("a Dask collection (array, dataframe, bag, delayed), a list or tuple of "
                "them, or a plain Dask graph with its keys as (graph, keys)")
    if is_dask_collection(value):
        return DaskWork((value,), origin)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Mapping) \
            and not is_dask_collection(value[0]):
        return DaskWork(_plain_graph(value[0], value[1], origin), origin)
    if isinstance(value, list | tuple):
        if not value:
            raise WorkloadError(f"{origin} returned an empty {type(value).__name__}; return "
                                f"{accepted}")
        for i, item in enumerate(value):
            if not is_dask_collection(item):
                raise WorkloadError(f"{origin} returned a {type(value).__name__} whose item "
                                    f"{i} is {_describe(item)}, not a Dask collection; "
                                    f"return {accepted}")
        return DaskWork(tuple(value), origin)
    raise WorkloadError(f"{origin} returned {_describe(value)}; return {accepted}")


def _plain_graph(graph: Mapping[Any, Any], keys: Any, origin: str) -> tuple[Any, ...]:
    from dask.core import flatten
    from dask.delayed import Delayed

    flat = list(flatten(keys)) if isinstance(keys, list) else [keys]
    if not flat:
        raise WorkloadError(f"{origin} returned a graph with no keys to compute; return "
                            f"(graph, keys) with the keys wanted")
    missing = [k for k in flat if k not in graph]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise WorkloadError(f"{origin} returned keys that are not in its graph: "
                            f"{', '.join(map(repr, missing[:3]))}{more}")
    return tuple(Delayed(k, graph) for k in flat)


def optimized_graph(work: DaskWork) -> tuple[dict[Any, Any], list[Any]]:
    """The graph Dask runs for ``work`` (expression optimised, materialised with its
    low-level optimisation) and its output keys, flattened."""
    from dask.core import flatten

    expr = work.expr()
    return dict(expr.__dask_graph__()), list(flatten(expr.__dask_keys__()))


def count_tasks(work: DaskWork) -> int:
    """Tasks of the graph Dask runs for ``work`` (builds it once, with Python's cyclic
    garbage collector paused: counting is never measured, and collections over the
    millions of objects of a large graph were a third of its cost)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return len(optimized_graph(work)[0])
    finally:
        if paused:
            gc.enable()


def dask_workload(name: str, n_tasks: int, make: Callable[[int], Any], origin: str,
                  params: dict[str, Any] | None = None) -> Workload:
    """A ``Workload`` whose graph ``make(n_tasks)`` builds with Dask; ``origin`` names it in
    errors. ``make`` is called once here, to check what it returns and count the tasks of the
    graph Dask runs, and again by every run (its generate stage)."""

    def work() -> DaskWork:
        try:
            value = make(n_tasks)
        except Exception as e:
            raise WorkloadError(f"workload {origin}: raised {type(e).__name__}: {e}") from e
        return as_dask_work(value, f"workload {origin}")

    first = work()
    try:
        n = count_tasks(first)
    except Exception as e:
        raise WorkloadError(f"workload {origin}: Dask could not build its graph: "
                            f"{type(e).__name__}: {e}") from e
    if n == 0:
        raise WorkloadError(f"workload {origin}: its graph has no task to run")
    return Workload(name, n_tasks, dict(params or {"n_tasks": n_tasks}), None, [], n,
                    dask=work)
