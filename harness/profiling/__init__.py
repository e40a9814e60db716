"""py-spy profiling of a run, and attribution of its samples to the eight stages.

Modules, each with its rules in its docstring:

- ``pyspy``: ``PySpyOptions`` -> ``build_argv``; ``ProfileSession`` runs/attaches py-spy and
  always stops it within bounded time; ``ProfileResult`` keeps py-spy's ``Samples``/``Errors``.
- ``speedscope``: pure parsers of speedscope JSON and raw collapsed stacks -> ``StackTable``;
  self/total samples per function.
- ``rules``: the stage-map format (``Rule``, ``FramePattern``, ``StageMap``).
- ``stage_map``: ``REFERENCE_MAP`` (our ``scheduler/``) and the shared idle/import patterns;
  ``dask_map``: ``DASK_MAP`` (dask/distributed) and its ``MERGED`` notes.
- ``attribution``: samples -> stages (leaf-first), ``profile_stages.csv`` tables.
- ``flamegraph``: a self-contained SVG flame graph, optionally coloured by stage.
- ``outputs``: profile file -> CSV + SVG + summary in one call.

This package never imports the rest of ``harness``; it imports ``scheduler.stages`` for
``Stage``.
"""

from types import MappingProxyType

from .attribution import (
    CATEGORIES,
    IDLE,
    IMPORT,
    UNATTRIBUTED,
    Attribution,
    attribute,
    function_label,
    stage_table,
    stage_totals,
    write_stage_csv,
)
from .dask_map import DASK_MAP
from .flamegraph import STAGE_COLOURS, render_flamegraph
from .outputs import ProfileOutputs, write_profile_outputs
from .pyspy import (
    FORMATS,
    ProfileResult,
    ProfileSession,
    PySpyError,
    PySpyMessages,
    PySpyNotFound,
    PySpyOptions,
    build_argv,
    find_pyspy,
    parse_pyspy_messages,
    pyspy_version,
)
from .rules import FramePattern, Rule, StageMap
from .speedscope import (
    Frame,
    FunctionSamples,
    ProfileFormatError,
    StackTable,
    function_samples,
    load_profile,
    merge_tables,
    parse_raw,
    parse_speedscope,
    self_samples,
    total_samples,
)
from .stage_map import IDLE_PATTERNS, IMPORT_PATTERNS, REFERENCE_MAP

STAGE_MAPS = MappingProxyType({m.name: m for m in (REFERENCE_MAP, DASK_MAP)})
"""The stage maps by name: ``"reference"`` and ``"dask"``."""


def get_stage_map(name: str) -> StageMap:
    """The stage map called ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return STAGE_MAPS[name]
    except KeyError:
        raise KeyError(f"no stage map {name!r}; known: {', '.join(sorted(STAGE_MAPS))}") from None

__all__ = [
    "CATEGORIES",
    "DASK_MAP",
    "FORMATS",
    "IDLE",
    "IDLE_PATTERNS",
    "IMPORT",
    "IMPORT_PATTERNS",
    "REFERENCE_MAP",
    "STAGE_COLOURS",
    "STAGE_MAPS",
    "UNATTRIBUTED",
    "Attribution",
    "Frame",
    "FunctionSamples",
    "FramePattern",
    "ProfileFormatError",
    "ProfileOutputs",
    "ProfileResult",
    "ProfileSession",
    "PySpyError",
    "PySpyMessages",
    "PySpyNotFound",
    "PySpyOptions",
    "Rule",
    "StackTable",
    "StageMap",
    "attribute",
    "build_argv",
    "find_pyspy",
    "function_label",
    "function_samples",
    "get_stage_map",
    "load_profile",
    "merge_tables",
    "parse_pyspy_messages",
    "parse_raw",
    "parse_speedscope",
    "pyspy_version",
    "render_flamegraph",
    "self_samples",
    "stage_table",
    "stage_totals",
    "total_samples",
    "write_profile_outputs",
    "write_stage_csv",
]
