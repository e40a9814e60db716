"""Samples to stages: every sampled stack gets one category, then tables are built from that.

Rules of this module:

- Categories are the ``Stage`` names, ``"idle"``, ``"import"`` and ``"unattributed"``. Every
  sample gets exactly one, so the category counts add up to the total.
- Idle first: if the leaf frame (with ``--native``: the native leaf frames up to and including
  the first Python frame) matches one of the map's idle patterns, the sample is ``idle``, even
  if a stage's code is below it on the stack: a thread waiting in ``Event.wait`` inside
  ``update_graph`` is waiting, not working. Idle samples are reported separately and never
  dilute a stage.
- Then imports: a stack with an import frame anywhere (``importlib``'s ``_find_and_load``) is
  ``import``: module-level code is no stage's work.
- Otherwise walk the stack from the leaf to the root; the first frame that a rule (for the
  process's role, in map order) matches decides the stage; if none does, walk again with the
  ``fallback`` rules (see ``rules.py``). No match: ``unattributed``.
- The function reported for a sample is its leaf (the code running: "self" samples), grouped
  by (name, file) and labelled ``name (short/path.py)``; paths are cut after
  ``site-packages/`` or ``lib/pythonX.Y/`` and otherwise kept to their last three components,
  so no machine paths end up in tables.
- Shares are of ALL samples (idle and import included), so a full ``stage_table`` sums to 1.
  ``attributed_share`` is of busy samples (neither idle nor import): how much of the work the
  map explains.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pandas as pd

from scheduler.stages import Stage

from .rules import FramePattern, FunctionGlobs, ModuleGlob, StageMap, split_path
from .speedscope import Frame, StackTable

__all__ = [
    "CATEGORIES",
    "IDLE",
    "IMPORT",
    "UNATTRIBUTED",
    "Attribution",
    "attribute",
    "function_label",
    "stage_table",
    "stage_totals",
    "write_stage_csv",
]

IDLE = "idle"
IMPORT = "import"
UNATTRIBUTED = "unattributed"
CATEGORIES: tuple[str, ...] = (*(s.name for s in Stage), IDLE, IMPORT, UNATTRIBUTED)
"""Every category, in report order: the stages in pipeline order, then idle, import,
unattributed."""

STAGE_CSV_COLUMNS = ("stage", "function", "self_samples", "share")


@dataclass(frozen=True, slots=True)
class Attribution:
    """The result of ``attribute``: per-category counts, per-(category, leaf function) self
    samples, and the category of each stack of the table (aligned with ``table.stacks``, for
    colouring a flame graph)."""

    map_name: str
    role: str
    total: int
    counts: Mapping[str, int]
    functions: tuple[tuple[str, str, int], ...]
    stack_categories: tuple[str, ...]

    @property
    def idle(self) -> int:
        return self.counts.get(IDLE, 0)

    @property
    def imports(self) -> int:
        return self.counts.get(IMPORT, 0)

    @property
    def unattributed(self) -> int:
        return self.counts.get(UNATTRIBUTED, 0)

    @property
    def busy(self) -> int:
        """Samples that were neither idle nor importing."""
        return self.total - self.idle - self.imports

    @property
    def attributed(self) -> int:
        """Samples given to a stage."""
        return self.busy - self.unattributed

    @property
    def attributed_share(self) -> float:
        """Attributed / busy samples; 0.0 when there is no busy sample."""
        return self.attributed / self.busy if self.busy else 0.0

    @property
    def idle_share(self) -> float:
        """Idle / all samples; 0.0 for an empty profile."""
        return self.idle / self.total if self.total else 0.0

    def summary(self) -> dict[str, Any]:
        """Plain numbers for a run's ``meta.json``."""
        return {
            "stage_map": self.map_name,
            "role": self.role,
            "samples": self.total,
            "idle_samples": self.idle,
            "import_samples": self.imports,
            "attributed_samples": self.attributed,
            "unattributed_samples": self.unattributed,
            "attributed_share": self.attributed_share,
            "idle_share": self.idle_share,
            "samples_by_category": {c: self.counts[c] for c in CATEGORIES if c in self.counts},
        }


# --- labels -----------------------------------------------------------------------------


def _short_path(file: str) -> str:
    parts = split_path(file)
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            i = len(parts) - 1 - parts[::-1].index(marker)
            return "/".join(parts[i + 1:])
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "lib" and i + 1 < len(parts) and parts[i + 1].startswith("python"):
            return "/".join(parts[i + 2:])
    if os.path.isabs(file) or file.startswith("/"):
        return "/".join(parts[-3:])
    return "/".join(parts) if parts else file


def function_label(frame: Frame) -> str:
    """``name (short/path.py)``, or the bare name for frames without a file."""
    return f"{frame.name} ({_short_path(frame.file)})" if frame.file else frame.name


# --- matching ---------------------------------------------------------------------------


class _CompiledMap:
    """A stage map's rules for one role, compiled, with per-frame memo tables."""

    __slots__ = ("stages", "modules", "functions", "withins", "fallback", "idle", "imports")

    def __init__(self, stage_map: StageMap, role: str) -> None:
        rules = stage_map.rules_for(role)
        self.stages = [r.stage.name for r in rules]
        self.modules = [[ModuleGlob(m) for m in r.module] for r in rules]
        self.functions = [FunctionGlobs(r.function) if r.function else None for r in rules]
        self.withins = [FunctionGlobs(r.within) if r.within else None for r in rules]
        self.fallback = [r.fallback for r in rules]
        self.idle = [_compile_pattern(p) for p in stage_map.idle]
        self.imports = [_compile_pattern(p) for p in stage_map.imports]

    def candidates(self, frame: Frame) -> list[int]:
        """Indices of the rules whose module and function match ``frame`` (roles already
        filtered; ``within`` is checked per stack)."""
        path = split_path(frame.file)
        out = []
        for i, (mods, fn) in enumerate(zip(self.modules, self.functions, strict=True)):
            if mods and not any(m.matches(path) for m in mods):
                continue
            if fn is not None and not fn.matches(frame.name):
                continue
            out.append(i)
        return out

    @staticmethod
    def any_matches(patterns: list[_Pattern], frame: Frame) -> bool:
        path = split_path(frame.file)
        python = frame.is_python
        for mods, fn, native in patterns:
            if native and python:
                continue
            if mods and not any(m.matches(path) for m in mods):
                continue
            if fn is not None and not fn.matches(frame.name):
                continue
            return True
        return False


_Pattern = tuple[list[ModuleGlob], FunctionGlobs | None, bool]


def _compile_pattern(p: FramePattern) -> _Pattern:
    return ([ModuleGlob(m) for m in p.module], FunctionGlobs(p.function) if p.function else None,
            p.native)


def _leaf_is_idle(stack: tuple[int, ...], idle: list[bool], python: list[bool]) -> bool:
    for fid in reversed(stack):
        if idle[fid]:
            return True
        if python[fid]:
            return False
    return False


def attribute(table: StackTable, stage_map: StageMap, role: str = "") -> Attribution:
    """Give every sample of ``table`` a category using ``stage_map`` for a process of ``role``
    (``"client"``, ``"scheduler"``, ``"worker-2"``, or ``""`` when unknown: then only rules
    without ``roles`` apply). An empty table gives an empty attribution (total 0)."""
    cm = _CompiledMap(stage_map, role)
    frames = table.frames
    matching = [cm.candidates(f) for f in frames]
    tiers = ([[r for r in c if not cm.fallback[r]] for c in matching],
             [[r for r in c if cm.fallback[r]] for c in matching])
    idle = [cm.any_matches(cm.idle, f) for f in frames]
    importing = [cm.any_matches(cm.imports, f) for f in frames]
    python = [f.is_python for f in frames]
    within_ok: dict[int, list[bool]] = {}  # rule index -> per frame: matches its `within`

    def ancestor_matches(rule: int, stack: tuple[int, ...], pos: int) -> bool:
        table_ = within_ok.get(rule)
        if table_ is None:
            glob = cm.withins[rule]
            assert glob is not None
            table_ = within_ok[rule] = [glob.matches(f.name) for f in frames]
        return any(table_[stack[j]] for j in range(pos + 1))

    def category(stack: tuple[int, ...]) -> str:
        if _leaf_is_idle(stack, idle, python):
            return IDLE
        if any(importing[fid] for fid in stack):
            return IMPORT
        for cands in tiers:
            for pos in range(len(stack) - 1, -1, -1):
                for rule in cands[stack[pos]]:
                    if cm.withins[rule] is None or ancestor_matches(rule, stack, pos):
                        return cm.stages[rule]
        return UNATTRIBUTED

    counts: dict[str, int] = {}
    per_function: dict[tuple[str, str], int] = {}
    labels: dict[int, str] = {}
    stack_categories = []
    for stack, n in table.stacks:
        cat = category(stack) if stack else UNATTRIBUTED
        stack_categories.append(cat)
        counts[cat] = counts.get(cat, 0) + n
        if stack:
            leaf = stack[-1]
            label = labels.get(leaf)
            if label is None:
                label = labels[leaf] = function_label(frames[leaf])
        else:
            label = "(empty stack)"
        per_function[(cat, label)] = per_function.get((cat, label), 0) + n
    order = {c: i for i, c in enumerate(CATEGORIES)}
    functions = tuple(sorted(((c, f, n) for (c, f), n in per_function.items()),
                             key=lambda r: (order[r[0]], -r[2], r[1])))
    return Attribution(stage_map.name, role, table.total, MappingProxyType(counts), functions,
                       tuple(stack_categories))


# --- tables -----------------------------------------------------------------------------


def stage_table(attribution: Attribution, top_n: int | None = 10) -> pd.DataFrame:
    """``profile_stages.csv`` as a DataFrame: columns ``stage, function, self_samples, share``.

    Rows per category in ``CATEGORIES`` order (categories without samples are left out),
    the ``top_n`` leaf functions by self samples, then one ``(other: K functions)`` row for
    the rest, so the shares of a table always sum to 1 (0 rows for an empty profile).
    ``top_n=None`` keeps every function.
    """
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be at least 1 or None, got {top_n}")
    total = attribution.total
    rows: list[tuple[str, str, int, float]] = []
    by_cat: dict[str, list[tuple[str, int]]] = {}
    for cat, fn, n in attribution.functions:
        by_cat.setdefault(cat, []).append((fn, n))
    for cat in CATEGORIES:
        fns = by_cat.get(cat)
        if not fns:
            continue
        keep = fns if top_n is None else fns[:top_n]
        rows.extend((cat, fn, n, n / total) for fn, n in keep)
        rest = fns[len(keep):]
        if rest:
            n = sum(k for _, k in rest)
            rows.append((cat, f"(other: {len(rest)} functions)", n, n / total))
    df = pd.DataFrame(rows, columns=list(STAGE_CSV_COLUMNS))
    return df.astype({"stage": "object", "function": "object", "self_samples": "int64",
                      "share": "float64"})


def stage_totals(attribution: Attribution) -> pd.DataFrame:
    """Samples per category: columns ``stage, samples, share`` (share of all samples)."""
    total = attribution.total
    rows = [(c, attribution.counts[c], attribution.counts[c] / total)
            for c in CATEGORIES if attribution.counts.get(c)]
    return pd.DataFrame(rows, columns=["stage", "samples", "share"]).astype(
        {"stage": "object", "samples": "int64", "share": "float64"})


def write_stage_csv(attribution: Attribution, path: str | os.PathLike[str],
                    top_n: int | None = 10) -> pd.DataFrame:
    """Write ``stage_table(attribution, top_n)`` to ``path`` (CSV, no index) and return it."""
    df = stage_table(attribution, top_n)
    df.to_csv(path, index=False)
    return df
