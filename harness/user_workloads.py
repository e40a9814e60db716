"""Users' own workloads: ``stagecost run -w path/to/file.py:make`` or ``-w package.module:make``.

Rules of this module:

- A spec is ``SOURCE:FUNCTION``. ``SOURCE`` ending in ``.py`` is a file (relative to the
  working directory); otherwise it is a dotted module name, imported with the working
  directory on the path (as ``python -m`` does). The spec is the workload's name in reports.
- ``FUNCTION(n_tasks)`` is called with the requested task count and returns Dask work (see
  ``harness.dask_work``). The real task count, that of the graph Dask runs, is what reports
  use. It is called once to count (outside measurement), then once per measured run: the
  generate stage builds the collection afresh each time.
- A file is executed as a module of its own (``stagecost_user_<stem>_<hash>``) that is then
  left out of ``sys.modules``: its functions cannot be pickled by reference, so they are
  pickled by value (cloudpickle), and workers that cannot import the file still run them. A module is
  imported normally and its functions travel by reference, as Dask's do: workers must be able
  to import it (started from the same directory, or with it installed).
- Work pickled by ``stagecost.measure`` (a callable or a collection from a notebook) arrives
  as a file written with cloudpickle (``source``); it is loaded the same way.
- Every failure is a ``WorkloadError`` that names the spec and the function: the file or
  module does not import, the function is missing or not callable, it raises, it returns
  something that is not Dask work, Dask cannot build its graph, or the graph fails on a
  backend (``graph_failed``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.dask_work import WorkloadError, dask_workload
from harness.workloads import Workload, build

__all__ = ["WorkloadError", "build_any", "graph_failed", "is_user_spec", "load_function"]


def is_user_spec(name: str) -> bool:
    """Whether ``name`` names a user's workload (``SOURCE:FUNCTION``) rather than a built-in."""
    return ":" in name


def _split(spec: str) -> tuple[str, str]:
    source, _, func = spec.rpartition(":")
    if not source or not func or not func.isidentifier():
        raise WorkloadError(f"workload {spec!r}: expected FILE.py:FUNCTION or "
                            f"package.module:FUNCTION (e.g. examples/climatology.py:make)")
    return source, func


def _load_file(path_text: str, spec: str) -> Any:
    path = Path(path_text)
    if not path.is_file():
        where = f" (looked in {Path.cwd()})" if not path.is_absolute() else ""
        raise WorkloadError(f"workload {spec!r}: no file {path_text!r}{where}")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    name = f"stagecost_user_{stem}_{digest}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise WorkloadError(f"workload {spec!r}: {path_text!r} cannot be loaded as Python")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # while it runs (dataclasses, for one, look it up)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        raise WorkloadError(f"workload {spec!r}: importing {path_text} failed with "
                            f"{type(e).__name__}: {e} (the traceback above is in your "
                            f"file)") from e
    finally:
        # Not importable by name afterwards: pickle cannot save its functions by reference,
        # so Dask (which tries pickle first) and the reference fall back to cloudpickle,
        # which saves them by value, and workers need not find the file.
        sys.modules.pop(name, None)
    return module


def _load_module(dotted: str, spec: str) -> Any:
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as e:
        if e.name is not None and dotted.startswith(e.name):
            raise WorkloadError(f"workload {spec!r}: no module named {e.name!r} (importable "
                                f"from {here} or the installed packages); for a file, "
                                f"give its path ending in .py") from e
        raise WorkloadError(f"workload {spec!r}: importing {dotted} failed with "
                            f"{type(e).__name__}: {e}") from e
    except Exception as e:
        raise WorkloadError(f"workload {spec!r}: importing {dotted} failed with "
                            f"{type(e).__name__}: {e} (the traceback above is in your "
                            f"module)") from e


def load_function(spec: str) -> Callable[..., Any]:
    """The function a spec names (loading its file or importing its module)."""
    source, func = _split(spec)
    module = _load_file(source, spec) if source.endswith(".py") else \
        _load_module(source, spec)
    fn = getattr(module, func, None)
    if fn is None:
        public = sorted(n for n, v in vars(module).items()
                        if callable(v) and not n.startswith("_")
                        and getattr(v, "__module__", None) == module.__name__)
        hint = f"; its functions: {', '.join(public)}" if public else ""
        raise WorkloadError(f"workload {spec!r}: {source} has no function {func!r}{hint}")
    if not callable(fn):
        raise WorkloadError(f"workload {spec!r}: {source}.{func} is a "
                            f"{type(fn).__name__}, not a function")
    return fn


def _load_pickled(path: str, name: str) -> Callable[..., Any]:
    import cloudpickle

    try:
        with open(path, "rb") as f:
            fn = cloudpickle.load(f)
    except Exception as e:
        raise WorkloadError(f"workload {name!r}: the work handed over by stagecost.measure "
                            f"could not be loaded here ({type(e).__name__}: {e}); a "
                            f"function it uses may not be importable in a fresh process: "
                            f"define it in the notebook or script, or pass "
                            f"in_process=True") from e
    if not callable(fn):
        raise WorkloadError(f"workload {name!r}: {path} does not hold a function")
    return fn


def build_any(name: str, n_tasks: int, source: str | None = None) -> Workload:
    """A built-in workload by name, a user's by spec, or (``source``) work pickled by
    ``stagecost.measure``, sized by ``n_tasks``."""
    if source is not None:
        return dask_workload(name, n_tasks, _load_pickled(source, name), repr(name))
    if is_user_spec(name):
        _, func = _split(name)
        return dask_workload(name, n_tasks, load_function(name),
                             f"{name} ({func}({n_tasks}))")
    return build(name, n_tasks)


def graph_failed(workload: Workload, backend: str, error: Exception) -> WorkloadError:
    """The error to raise when a user's graph failed while running on ``backend``."""
    return WorkloadError(f"workload {workload.name}: its graph failed on {backend}: "
                         f"{type(error).__name__}: {error}")
