"""The run-folder contract, schema version 1: file names, columns and their types.

Rules of this module:

- These constants are the contract between the runner (which writes run folders) and the report
  layer (which reads them); nothing else hard-codes a column name, order or type.
- A run folder holds ``meta.json``, ``stages.csv``, ``runs.csv``, ``spans.csv`` and, for
  profiled runs, ``profile_stages.csv`` and ``profiles/``.
- Constants only: no I/O, no validation (that is ``validate``), no mutable module state
  (mappings are read-only views).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from scheduler.stages import Stage

__all__ = [
    "KEYS",
    "META_FILE",
    "PROFILE_STAGES_COLUMNS",
    "PROFILE_STAGES_FILE",
    "PROFILES_DIR",
    "RUN_KEY",
    "RUNS_COLUMNS",
    "RUNS_FILE",
    "RUNS_OPTIONAL",
    "SCHEMA_VERSION",
    "SPANS_COLUMNS",
    "SPANS_FILE",
    "STAGE_NAMES",
    "STAGES_COLUMNS",
    "STAGES_FILE",
    "UNATTRIBUTED",
    "IDLE",
    "IMPORT",
    "PROFILE_CATEGORIES",
    "RunFolderError",
]

SCHEMA_VERSION = 1

META_FILE = "meta.json"
STAGES_FILE = "stages.csv"
RUNS_FILE = "runs.csv"
SPANS_FILE = "spans.csv"
PROFILE_STAGES_FILE = "profile_stages.csv"
PROFILES_DIR = "profiles"

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in Stage)
"""The eight stage names in pipeline order (``generate`` .. ``execute``)."""

UNATTRIBUTED = "unattributed"
"""The ``stage`` of busy profile samples that the stage map gives no stage
(``profile_stages.csv`` only)."""
IDLE = "idle"
"""The ``stage`` of profile samples taken while the thread waited (``profile_stages.csv``)."""
IMPORT = "import"
"""The ``stage`` of profile samples taken while a module was imported (``profile_stages.csv``)."""
PROFILE_CATEGORIES: tuple[str, ...] = (*STAGE_NAMES, IDLE, IMPORT, UNATTRIBUTED)
"""Every ``stage`` of ``profile_stages.csv``, in report order: its shares add up to 1."""

RUN_KEY: tuple[str, ...] = ("backend", "workload", "n_tasks", "repeat")
"""The columns that identify one measured run (one repeat of one configuration)."""

# Column types, as used by the validator:
#   str      non-empty text
#   int      integer, never missing (int64)
#   Int64    integer or empty (pandas nullable Int64)
#   float    number or empty (float64, empty -> NaN)
#   bool     True/False (also true/false/1/0), never missing
#   stage    one of STAGE_NAMES
#   pstage   one of PROFILE_CATEGORIES (the stages, idle, import, unattributed)
STAGES_COLUMNS: Mapping[str, str] = MappingProxyType({
    "backend": "str",
    "workload": "str",
    "n_tasks": "int",
    "repeat": "int",
    "stage": "stage",
    "role": "str",
    "seconds": "float",
    "us_per_task": "float",
    "nbytes": "Int64",
    "messages": "Int64",
    "applicable": "bool",
})
"""``stages.csv``: busy time per (run, stage, role). ``role`` is ``client``, ``scheduler``,
``worker-N``, ... or ``all`` (already summed over roles)."""

RUNS_COLUMNS: Mapping[str, str] = MappingProxyType({
    "backend": "str",
    "workload": "str",
    "n_tasks": "int",
    "repeat": "int",
    "wall_s": "float",
    "time_to_first_task_s": "float",
    "tasks_run": "Int64",
})
"""``runs.csv``: one row per run; ``wall_s`` is ``compute()`` to last result (required),
``time_to_first_task_s`` is ``compute()`` to the first task started (empty if unknown)."""

RUNS_OPTIONAL: Mapping[str, str] = MappingProxyType({
    "recorded": "bool",
    "record_overhead": "float",
    "calibration_s": "float",
    "other_load": "float",
    "cpu_s": "float",
    "record_overhead_cpu": "float",
})
"""Columns of ``runs.csv`` that runs written before them lack; typed like the others where
present. ``recorded``: stage recording was on in that run. ``record_overhead``: for the run's
configuration, median wall time of its recorded runs / that of its unrecorded ones - 1
(empty without both kinds). ``calibration_s``: seconds a fixed piece of work took just before
that run, ``other_load``: cores other processes used while it ran, ``cpu_s``: CPU seconds
of stagecost and its cluster's processes during it (``harness.machine_check``),
``record_overhead_cpu``: as ``record_overhead``, of ``cpu_s``. A table without ``recorded``
reads as all recorded."""

SPANS_COLUMNS: Mapping[str, str] = MappingProxyType({
    "backend": "str",
    "workload": "str",
    "n_tasks": "int",
    "repeat": "int",
    "stage": "stage",
    "role": "str",
    "start_s": "float",
    "end_s": "float",
    "tasks": "int",
    "nbytes": "int",
    "messages": "int",
})
"""``spans.csv``: every recorded span, times in seconds relative to the run's ``compute()``."""

PROFILE_STAGES_COLUMNS: Mapping[str, str] = MappingProxyType({
    "stage": "pstage",
    "function": "str",
    "self_samples": "int",
    "share": "float",
})
"""``profile_stages.csv``: py-spy self samples per (stage, function); ``share`` is the fraction
of all samples of the profile (0..1). Idle, import and unattributed samples are rows of their
own, so the shares of a whole profile add up to 1."""

KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    STAGES_FILE: (*RUN_KEY, "stage", "role"),
    RUNS_FILE: RUN_KEY,
    SPANS_FILE: (),
    PROFILE_STAGES_FILE: ("stage", "function"),
})
"""The columns that must be unique together in each file (none for spans)."""


class RunFolderError(ValueError):
    """A run folder (or the tables about to be written to one) breaks the schema."""
