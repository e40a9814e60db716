"""Which patterns of a stage map match no code that exists: how a rename shows up.

Rules of this module:

- A module glob is checked against the source files on disk under some roots (this
  repository's ``scheduler/``, the installed Dask, distributed and the libraries their
  frames come from, the standard library), with the same ``ModuleGlob`` attribution uses on
  py-spy's file names. A glob that matches no file is reported.
- A function glob (``function`` of a rule or a frame pattern) is checked against the
  functions defined in the files its rule's module globs match (in any file when it has
  none). Functions are read from the source with ``ast``, named as py-spy names a frame
  (``co_qualname``: ``Class.method``, ``outer.<locals>.inner``), so nothing is imported or
  run. A ``within`` glob may match a caller in any file: it is looked for in the rule's files
  first, then everywhere.
- Native patterns (C symbols such as ``epoll_wait``) have no Python source: not checked.
  py-spy names the frozen import machinery ``<frozen importlib._bootstrap>``; that name is
  checked as the file it is frozen from (``importlib/_bootstrap.py``).
- Pure reading: the result is a list of problems, each naming the map, the rule and the
  pattern, empty when every pattern matches something.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from .rules import FramePattern, FunctionGlobs, ModuleGlob, Rule, StageMap, split_path

__all__ = ["default_roots", "defined_functions", "source_files", "unmatched_patterns"]

_FROZEN = {"<frozen importlib._bootstrap>": "importlib/_bootstrap.py",
           "<frozen importlib._bootstrap_external>": "importlib/_bootstrap_external.py"}
_SKIP_DIRS = frozenset({"tests", "test", "site-packages", "dist-packages", "idlelib",
                        "lib2to3", "tkinter", "turtledemo", "ensurepip", "pydoc_data",
                        "__pycache__"})


def default_roots() -> list[Path]:
    """Where the code the maps name lives: this repository's ``scheduler`` package, the
    installed dask, distributed, tornado, msgpack and cloudpickle (those present), and the
    standard library."""
    import importlib.util

    roots = [Path(__file__).resolve().parents[2] / "scheduler"]
    for name in ("dask", "distributed", "tornado", "msgpack", "cloudpickle"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots += [Path(p) for p in spec.submodule_search_locations]
    roots.append(Path(sysconfig.get_paths()["stdlib"]))
    return roots


def source_files(roots: Iterable[Path]) -> list[tuple[str, ...]]:
    """Every ``.py`` file below ``roots`` (test suites and bundled apps left out), as path
    components."""
    out: list[tuple[str, ...]] = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
            out += [split_path(os.path.join(folder, f)) for f in files if f.endswith(".py")]
    return out


@lru_cache(maxsize=4096)
def defined_functions(path: tuple[str, ...]) -> frozenset[str]:
    """The qualified names of every function defined in the file ``path`` (components)."""
    try:
        tree = ast.parse(Path("/" + "/".join(path)).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return frozenset()
    names: set[str] = set()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(prefix + child.name)
                visit(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return frozenset(names)


def _files_of(globs: Sequence[str], files: Sequence[tuple[str, ...]],
              problems: list[str], where: str) -> list[tuple[str, ...]]:
    matched: list[tuple[str, ...]] = []
    for text in globs:
        glob = ModuleGlob(_FROZEN.get(text, text))
        hits = [f for f in files if glob.matches(f)]
        if not hits:
            problems.append(f"{where}: module {text!r} matches no source file")
        matched += hits
    return matched


def _find(glob: str, files: Iterable[tuple[str, ...]]) -> bool:
    match = FunctionGlobs(glob).matches
    return any(match(name) for f in files for name in defined_functions(f))


def _check(where: str, module: Sequence[str], function: Sequence[str], within: Sequence[str],
           files: Sequence[tuple[str, ...]], problems: list[str]) -> None:
    own = _files_of(module, files, problems, where) if module else list(files)
    if module and not own:
        return  # already reported: its functions cannot be looked for
    for glob in function:
        if not _find(glob, own):
            problems.append(f"{where}: function {glob!r} matches no function defined in "
                            f"{', '.join(module) or 'any file'}")
    for glob in within:
        if not _find(glob, own) and not _find(glob, files):
            problems.append(f"{where}: within {glob!r} matches no function anywhere")


def _rule_name(stage_map: StageMap, i: int, rule: Rule) -> str:
    return f"{stage_map.name} map, rule {i} ({rule.stage.name})"


def unmatched_patterns(stage_map: StageMap, roots: Iterable[Path] | None = None) -> list[str]:
    """The patterns of ``stage_map`` (rules, idle and import patterns) that match no file or
    no function under ``roots`` (default: ``default_roots()``); empty when all match."""
    files = source_files(default_roots() if roots is None else roots)
    problems: list[str] = []
    for i, rule in enumerate(stage_map.rules):
        _check(_rule_name(stage_map, i, rule), rule.module, rule.function, rule.within,
               files, problems)
    patterns: list[tuple[str, FramePattern]] = [
        *((f"{stage_map.name} map, idle pattern {i}", p) for i, p in enumerate(stage_map.idle)),
        *((f"{stage_map.name} map, import pattern {i}", p)
          for i, p in enumerate(stage_map.imports))]
    for where, pattern in patterns:
        if not pattern.native:
            _check(where, pattern.module, pattern.function, (), files, problems)
    return problems
