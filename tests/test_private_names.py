"""No module reads another module's private names.

A name that starts with one underscore belongs to the module that defines it. The scan
below reads every source file of the project (its AST, not its text) and lists each use of
an underscore name that the file does not define itself: ``from m import _x``, and
``obj._x`` where ``obj`` is not ``self`` or ``cls``. The few uses that are meant are listed
in ``ALLOWED`` with the reason; anything else fails, and so does an entry that is no longer
needed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("scheduler", "harness", "stagecost", "tests", "asv_bench/benchmarks")

ALLOWED: dict[tuple[str, str], str] = {
    # Dask's and distributed's own internals, where they offer no public hook
    ("harness/backends/dask_backends.py", "_dumps"):
        "dask.multiprocessing's task codec, timed as Dask's dispatch and execute",
    ("harness/backends/dask_backends.py", "_loads"):
        "dask.multiprocessing's task codec, timed as Dask's dispatch and execute",
    ("harness/backends/dask_plugins.py", "_HLGExprSequence"):
        "dask-expr's class of several collections' graphs, whose optimisation is timed",
    ("scheduler/graph/dask_import.py", "_execute_subgraph"):
        "the function Dask's fused tasks call, recognised to import them",
    ("scheduler/graph/dask_import.py", "_identity_cast"):
        "the function Dask rebuilds containers with, recognised to import them",
    ("tests/test_dask_backends.py", "_expr"):
        "dask._expr: the timing hooks are checked to be removed from it",
    ("tests/test_dask_backends.py", "_materialize_graph"):
        "distributed's graph materialisation: the timing hooks are checked to be removed",
    ("harness/backends/dask_plugins.py", "_expr"):
        "dask._expr, where the collections' graph optimisation that is timed lives",
    ("harness/backends/dask_plugins.py", "_task_spec"):
        "dask._task_spec, whose task conversion is timed",
    ("scheduler/graph/dask_import.py", "_task_spec"):
        "dask._task_spec: Dask's task objects, read to import Dask graphs",
    ("tests/test_dask_import.py", "_execute_subgraph"):
        "a fused Dask task built as Dask builds it, to check its import",
    # CPython's C pickle module, checked to be unreachable from decoding
    ("tests/test_security.py", "_pickle"): "the C pickle module, forbidden to decoders",
    ("tests/test_wire_encodings.py", "_pickle"): "the C pickle module, forbidden to decoders",
    # namedtuple's public copy-with-changes method (its leading underscore avoids fields)
    ("scheduler/stages.py", "_replace"): "namedtuple API",
    # white-box tests that provoke what no public call can
    ("tests/test_scheduler_state.py", "_transition"):
        "an illegal move, forced to check the error and the task's story",
    ("tests/test_convergence.py", "_Worker"):
        "a scheduler server driven without sockets: its worker records are made by hand",
    ("tests/test_convergence.py", "_apply"):
        "a scheduler server driven without sockets: instructions applied by hand",
    ("tests/test_faults.py", "_comm"): "a client's connection cut from its own loop",
    ("tests/test_faults.py", "_loop"): "a client's connection cut from its own loop",
    ("tests/test_dask_backends.py", "_gather"):
        "the distributed backend's progress polling, timed with a slowed query",
}


def _defined(tree: ast.AST) -> set[str]:
    """Names a module defines or binds itself (functions, classes, attributes it assigns,
    arguments, import aliases, and string constants such as ``__slots__`` entries)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def crossings(source: str) -> set[str]:
    """Underscore names that ``source`` uses but does not define."""
    tree = ast.parse(source)
    own = _defined(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.update(a.name for a in node.names if _private(a.name))
        elif isinstance(node, ast.Import):
            found.update(part for a in node.names for part in a.name.split(".")
                         if _private(part))
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr not in own:
                found.add(node.attr)
    return found


def project_crossings() -> set[tuple[str, str]]:
    out = set()
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            out.update((rel, name) for name in crossings(path.read_text(encoding="utf-8")))
    return out


def test_no_module_reads_another_modules_private_names() -> None:
    unexpected = sorted(project_crossings() - set(ALLOWED))
    assert not unexpected, (
        "private names used outside the module that defines them (make them public, or "
        f"add an accessor): {unexpected}")


def test_every_allowed_use_is_still_needed() -> None:
    stale = sorted(set(ALLOWED) - project_crossings())
    assert not stale, f"entries of ALLOWED no longer used; remove them: {stale}"


def test_the_scan_sees_imports_and_attributes_of_private_names() -> None:
    src = ("from scheduler.runtime.worker import _hidden\n"
           "import dask._expr\n"
           "def f(rec, x):\n"
           "    return rec._rows, self._mine, x._own\n"
           "class A:\n"
           "    def __init__(self):\n"
           "        self._own = 1\n"
           "        self.__dict__\n")
    assert crossings(src) == {"_hidden", "_expr", "_rows"}
