"""``stagecost.measure``: the ``stagecost run`` command as a function, for notebooks and
scripts.

Rules of this module:

- It runs the grid with ``harness.runner.run_grid``, as the command does, and then does
  what the command does after it: record the run in the results store (unless
  ``store=False``) and render the report into the run folder. The folder and report are
  those of ``stagecost run`` with the same settings.
- Work is a built-in workload's name, a user's spec (``"file.py:make"``), a function
  ``make(n_tasks)`` returning Dask work, or Dask work itself: a collection, a list or tuple
  of them, or a plain graph with its keys ``(graph, keys)``. A function or work given as an
  object is pickled with cloudpickle into a file that each configuration's process loads
  (``user_workloads``): functions defined in a notebook or script travel by value.
- Dask work given as an object has one size, its own: ``n_tasks`` does not apply to it, and
  the task count reported is that of the graph Dask runs.
- Errors are those of the command, raised: ``ValueError`` for bad arguments (``UsageError``
  is one), ``harness.dask_work.WorkloadError`` (also a ``ValueError``) for work that is not
  Dask work, ``RuntimeError`` when no configuration finished. A configuration that fails
  while others finish is listed in ``meta.json``'s ``failed_cells``, as with the command.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["measure"]


def _name_of(work: Any) -> str:
    name = getattr(work, "__qualname__", None) or getattr(work, "__name__", None)
    if callable(work) and name and name != "<lambda>":
        return name.replace(":", "_")
    if isinstance(work, tuple) and len(work) == 2 and isinstance(work[1], list | str | tuple):
        return "graph"
    kind = type(work).__name__
    return kind.lower() if kind else "work"


def _as_function(work: Any) -> tuple[Callable[[int], Any], bool]:
    """``(make, sized)``: ``work`` as a function of ``n_tasks``; ``sized`` is False for Dask
    work given as an object (it has its own size). ``WorkloadError`` for anything else."""
    from harness.dask_work import as_dask_work

    if callable(work) and not _is_dask(work):
        return work, True
    as_dask_work(work, "the work given to stagecost.measure")  # refuse it here, not later
    return _Fixed(work), False


def _is_dask(value: Any) -> bool:
    from dask import is_dask_collection

    return bool(is_dask_collection(value))


class _Fixed:
    """Dask work given as an object: the same work whatever size is asked (picklable)."""

    def __init__(self, work: Any) -> None:
        self.work = work

    def __call__(self, n_tasks: int) -> Any:
        return self.work


def _sizes(n_tasks: int | Sequence[int] | None) -> list[int]:
    if n_tasks is None:
        return [10_000]
    sizes = [n_tasks] if isinstance(n_tasks, int) else list(n_tasks)
    for n in sizes:
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise ValueError(f"n_tasks must be ints >= 2, got {n!r}")
    if not sizes:
        raise ValueError("n_tasks is empty: give at least one task count")
    return list(dict.fromkeys(sizes))


def measure(work: Any, backends: Sequence[str] = ("reference",), repeats: int = 3,
            output: str | Path | None = None, *, n_tasks: int | Sequence[int] | None = None,
            warmups: int = 1, name: str | None = None, workers: int = 2, threads: int = 1,
            encoding: str = "compact", record: bool = True, timeout: float | None = None,
            dask_config: Sequence[str] = (), store: bool | str | Path = True,
            force: bool = False, in_process: bool = False) -> pd.DataFrame:
    """Measure ``work`` on ``backends``, stage by stage, as ``stagecost run`` does; return the
    stage table (the rows of ``stages.csv``).

    ``work``: a workload name (``"matmul"``), a spec (``"mywork.py:make"``), a function
    ``make(n_tasks)`` returning Dask work, or Dask work (a collection, a list or tuple of
    them, ``(graph, keys)``). ``n_tasks``: the requested size(s) for names, specs and
    functions (default 10,000); Dask work given as an object runs at its own size.
    ``output``: the run folder (default ``reports/<time>-<workload>-<n>-<backend>``); an
    existing folder with files is refused unless ``force``. ``store``: record the run in
    the results store (``True``: the default store, as the command; a path: that store;
    ``False``: none). The other options are the command's flags (``--workers``,
    ``--no-record`` is ``record=False``, ...). ``in_process`` runs every configuration in
    this process instead of a fresh one each (quicker to start; measures a process that has
    already run other things).

    The table has the attributes ``run_dir`` (the folder) and ``runs`` (the rows of
    ``runs.csv``: wall time, time to first task, tasks run, peak memory). With
    ``record=False`` it has no rows: only wall times were measured (in ``runs``)."""
    from harness.backends.base import RunOptions
    from harness.cli import store_run
    from harness.output_paths import check_writable_file, prepare_folder
    from harness.report.render import render_report
    from harness.report.schema import read_run
    from harness.runner import default_run_dir, run_grid
    from harness.store.db import default_store_path
    from harness.workloads import names
    from scheduler.wire.encodings import ENCODINGS

    backends = list(dict.fromkeys(backends if not isinstance(backends, str) else [backends]))
    if not backends:
        raise ValueError("backends is empty: give at least one backend")
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")
    if workers < 1 or threads < 1:
        raise ValueError("workers and threads must be at least 1")
    sizes = _sizes(n_tasks)
    options = RunOptions(workers=workers, threads=threads, encoding=encoding, record=record,
                         timeout=timeout, dask_config=tuple(dask_config))
    if dask_config:
        from harness.backends.dask_backends import parse_dask_config

        parse_dask_config(list(dask_config))  # refuse typos before anything runs
    store_path = None if store is False else \
        default_store_path(None if store is True else Path(store))
    if store_path is not None:
        check_writable_file(store_path, "store")
    with tempfile.TemporaryDirectory(prefix="stagecost-measure-") as tmp:
        sources: dict[str, str] = {}
        if isinstance(work, str):
            wname = work
            if ":" not in work and work not in names():
                raise ValueError(f"unknown workload {work!r}; choose one of "
                                 f"{', '.join(names())}, or give your own as FILE.py:FUNCTION")
        else:
            import cloudpickle

            make, sized = _as_function(work)
            wname = name or _name_of(work)
            if ":" in wname or wname in names():
                raise ValueError(f"name {wname!r} is a workload's or spec's; choose another")
            if not sized:
                sizes = [_own_size(make, wname)]
            path = Path(tmp) / "work.pkl"
            path.write_bytes(cloudpickle.dumps(make))
            sources[wname] = str(path)
        run_dir = Path(output) if output is not None else \
            default_run_dir(Path("reports"), [wname], sizes, backends)
        folder = prepare_folder(run_dir, what="output", refuse_existing=True, force=force)
        try:
            run_dir, _, runs = run_grid([wname], sizes, backends, options, repeats=repeats,
                                        warmups=warmups, run_dir=run_dir,
                                        in_process=in_process, timeout=timeout,
                                        parameters={"command": "measure"}, render=False,
                                        sources=sources)
        except BaseException:
            folder.discard_if_empty()
            raise
    if store_path is not None:
        store_run(store_path, run_dir)
    render_report([run_dir], run_dir, store=store_path)
    done = read_run(run_dir)  # the tables exactly as the run folder holds them
    stages = done.stages
    stages.attrs["run_dir"] = run_dir
    stages.attrs["runs"] = done.runs
    return stages


def _own_size(make: Callable[[int], Any], name: str) -> int:
    """The size to run Dask work given as an object at: its own task count (the runner
    reports the exact count of the graph Dask runs; the request only labels the run)."""
    from harness.dask_work import as_dask_work, count_tasks

    return max(2, count_tasks(as_dask_work(make(0), f"workload {name!r}")))
