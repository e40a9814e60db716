"""Validation of run-folder tables and ``meta.json`` against the contract in ``columns``.

Rules of this module:

- Pure: functions take DataFrames or parsed JSON and return converted copies, or raise
  ``RunFolderError``. No file I/O (``schema`` reads and writes).
- An error names the source (file), the CSV line(s) (header is line 1) or key, the problem,
  and what to do. Those errors are the writer's fault (the runner, or a hand-edited file).
- A stage a backend lacks is ``applicable=False`` with every number empty (NaN / NA), never 0.
  An applicable stage always has ``seconds``. Run-level measures (wall time, time to first task)
  are not stages: they live in ``runs.csv``, and an error says so.
- Extra columns and extra ``meta.json`` keys are kept and ignored, so the runner can add
  information without a schema bump; removing or retyping a column needs a new version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from harness.report.columns import (
    KEYS,
    META_FILE,
    PROFILE_CATEGORIES,
    PROFILE_STAGES_COLUMNS,
    PROFILE_STAGES_FILE,
    RUN_KEY,
    RUNS_COLUMNS,
    RUNS_FILE,
    RUNS_OPTIONAL,
    SCHEMA_VERSION,
    SPANS_COLUMNS,
    SPANS_FILE,
    STAGE_NAMES,
    STAGES_COLUMNS,
    STAGES_FILE,
    RunFolderError,
)

__all__ = ["check_runs_cover", "fail", "validate_meta", "validate_table"]

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


def fail(source: str, problem: str, fix: str) -> RunFolderError:
    return RunFolderError(f"{source}: {problem}. {fix}")


def _lines(mask: pd.Series) -> str:
    """CSV line numbers (header is line 1) of the rows where ``mask`` holds, abbreviated."""
    idx = [int(i) + 2 for i in np.flatnonzero(mask.to_numpy())]
    shown = ", ".join(str(i) for i in idx[:5])
    return f"line {shown}" if len(idx) == 1 else f"lines {shown}" + (
        f" (and {len(idx) - 5} more)" if len(idx) > 5 else "")


def _convert(col: pd.Series, kind: str, source: str, name: str) -> pd.Series:
    """Turn a column of text (or of values) into its schema type, or raise naming the rows."""
    already_numbers = (kind in ("float", "int", "Int64") and pd.api.types.is_numeric_dtype(col)
                       and not pd.api.types.is_bool_dtype(col))
    if already_numbers:  # a typed read, or frames about to be written: no text to parse
        text = empty = pd.Series(dtype=object)
    else:
        text = col.astype("string").str.strip().fillna("")
        empty = text == ""
    if kind in ("str", "stage", "pstage"):
        if empty.any():
            raise fail(source, f"column {name!r} is empty on {_lines(empty)}",
                        "Every row needs a value there; fix the writer of this file")
        if kind == "str":
            return text.astype(object)
        allowed = PROFILE_CATEGORIES if kind == "pstage" else STAGE_NAMES
        bad = ~text.isin(allowed)
        if bad.any():
            names = sorted(set(text[bad]))
            hint = ("Run-level measures belong in runs.csv (wall_s, time_to_first_task_s)"
                    if set(names) & {"wall", "time_to_first_task"} else
                    f"Use one of: {', '.join(allowed)}")
            raise fail(source, f"unknown stage name(s) {names} in column {name!r} on "
                        f"{_lines(bad)}", hint)
        return text.astype(object)
    if kind == "bool":
        low = text.str.lower()
        bad = ~low.isin(_TRUE | _FALSE)
        if bad.any():
            raise fail(source, f"column {name!r} is not True/False on {_lines(bad)}",
                        "Write booleans as True or False")
        return low.isin(_TRUE).astype(bool)
    if already_numbers:
        num = col.astype("float64")
    else:
        num = pd.to_numeric(text.astype(object).where(~empty, np.nan), errors="coerce")
        bad = num.isna() & ~empty & ~text.str.lower().isin({"nan", "na", "<na>"})
        if bad.any():
            raise fail(source, f"column {name!r} is not a number on {_lines(bad)}",
                        "Write plain decimal numbers (empty for missing)")
        num = num.astype("float64")
    if kind == "float":
        return num
    missing = num.isna()
    if kind == "int" and missing.any():
        raise fail(source, f"column {name!r} is empty on {_lines(missing)}",
                    "This column is required on every row")
    frac = num.notna() & (num != np.floor(num))
    if frac.any():
        raise fail(source, f"column {name!r} is not a whole number on {_lines(frac)}",
                    "Counts are integers")
    return num.astype("Int64") if kind == "Int64" else num.astype("int64")


def validate_table(df: pd.DataFrame, columns: Mapping[str, str], source: str) -> pd.DataFrame:
    """Return ``df`` converted to the schema ``columns`` (schema columns first, extras kept).

    ``source`` names the file in error messages. Accepts text (as read from CSV) or already
    typed values. Raises ``RunFolderError`` on a missing column, bad value, duplicate key or a
    broken rule (negative time, n/a stage with numbers, span ending before it starts).
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise fail(source, f"missing column(s) {missing}",
                    f"Expected columns, in order: {', '.join(columns)}")
    df = df.reset_index(drop=True)
    out = pd.DataFrame({name: _convert(df[name], kind, source, name)
                        for name, kind in columns.items()})
    base = _file_of(columns)
    optional = RUNS_OPTIONAL if base == RUNS_FILE else {}
    for extra in (c for c in df.columns if c not in columns):
        kind = optional.get(extra)
        out[extra] = df[extra].to_numpy() if kind is None else \
            _convert(df[extra], kind, source, extra).to_numpy()
    _check_rules(out, base, source)
    return out


def _file_of(columns: Mapping[str, str]) -> str:
    """Which file a column mapping describes ("" for a mapping that is not one of ours)."""
    for name, cols in ((STAGES_FILE, STAGES_COLUMNS), (RUNS_FILE, RUNS_COLUMNS),
                       (SPANS_FILE, SPANS_COLUMNS),
                       (PROFILE_STAGES_FILE, PROFILE_STAGES_COLUMNS)):
        if columns is cols:
            return name
    return ""


def _check_rules(df: pd.DataFrame, base: str, source: str) -> None:
    for name in ("n_tasks",):
        if name in df and (df[name] < 1).any():
            raise fail(source, f"{name} < 1 on {_lines(df[name] < 1)}", "A run has tasks")
    for name in ("repeat", "tasks", "self_samples"):
        if name in df and (df[name] < 0).any():
            raise fail(source, f"negative {name} on {_lines(df[name] < 0)}",
                        "Counts start at 0")
    for name in ("seconds", "us_per_task", "wall_s", "time_to_first_task_s", "nbytes",
                 "messages", "tasks_run"):
        if name in df:
            neg = (df[name] < 0).fillna(False).astype(bool)
            if neg.any():
                raise fail(source, f"negative {name} on {_lines(neg)}",
                            "Durations and counts are never negative")
    if base == STAGES_FILE:
        na = ~df["applicable"]
        has_numbers = na & df[["seconds", "us_per_task", "nbytes", "messages"]].notna().any(
            axis=1)
        if has_numbers.any():
            raise fail(source, f"a not-applicable stage carries numbers on "
                        f"{_lines(has_numbers)}",
                        "A stage a backend lacks has applicable=False and empty seconds, "
                        "us_per_task, nbytes and messages (never 0)")
        unmeasured = df["applicable"] & df["seconds"].isna()
        if unmeasured.any():
            raise fail(source, f"an applicable stage has no seconds on {_lines(unmeasured)}",
                        "Record its time, or write applicable=False if the backend lacks it")
    if base == RUNS_FILE and df["wall_s"].isna().any():
        raise fail(source, f"wall_s is empty on {_lines(df['wall_s'].isna())}",
                    "Every recorded run has a wall time")
    if base == SPANS_FILE:
        bad = df["start_s"].isna() | df["end_s"].isna() | (df["end_s"] < df["start_s"])
        if bad.any():
            raise fail(source, f"span without times or ending before it starts on "
                        f"{_lines(bad)}", "Each span needs start_s <= end_s")
    if base == PROFILE_STAGES_FILE:
        bad = df["share"].isna() | (df["share"] < 0) | (df["share"] > 1)
        if bad.any():
            raise fail(source, f"share outside 0..1 on {_lines(bad)}",
                        "share is self_samples divided by all samples of the profile")
    key = list(KEYS.get(base, ()))
    if key:
        dup = df.duplicated(key, keep=False)
        if dup.any():
            raise fail(source, f"duplicate rows for key {tuple(key)} on {_lines(dup)}",
                        "Each key appears once; aggregate before writing")


def validate_meta(meta: object, source: str = META_FILE) -> dict[str, Any]:
    """Check a ``meta.json`` document and return it; raise ``RunFolderError`` if it is bad.

    Required: ``schema_version`` (== 1), ``created_utc`` (ISO 8601 text), ``parameters``,
    ``versions``, ``machine`` (objects), ``git_commit`` (text or null), ``warmups`` (int >= 0),
    ``notes`` (list of text). Optional: ``merged_stages`` ({"a+b": why}), ``profile``
    ({attributed_share: 0..1, samples: int, errors: int}), ``reference_backend`` (text),
    ``failed_cells`` ([{cell, error}]: configurations abandoned, whose rows are absent).
    """
    if not isinstance(meta, dict):
        raise fail(source, "is not a JSON object", "Write a JSON object at top level")
    version = meta.get("schema_version")
    if version is None:
        raise fail(source, "has no schema_version",
                    f"Add \"schema_version\": {SCHEMA_VERSION}")
    if not isinstance(version, int) or isinstance(version, bool) or version != SCHEMA_VERSION:
        fix = ("It was written by a newer stagecost; upgrade this one"
               if isinstance(version, int) and version > SCHEMA_VERSION else
               f"This stagecost reads schema_version {SCHEMA_VERSION} only")
        raise fail(source, f"schema_version is {version!r}", fix)
    expect: dict[str, tuple[type, ...]] = {
        "created_utc": (str,), "parameters": (dict,), "versions": (dict,), "machine": (dict,),
        "git_commit": (str, type(None)), "warmups": (int,), "notes": (list,),
    }
    for key, types in expect.items():
        if key not in meta:
            raise fail(source, f"missing key {key!r}", "The runner must record it")
        value = meta[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise fail(source, f"{key!r} has type {type(value).__name__}",
                        f"Expected {' or '.join(t.__name__ for t in types)}")
    if meta["warmups"] < 0:
        raise fail(source, "warmups is negative", "Count the warmup runs that were dropped")
    if not all(isinstance(n, str) for n in meta["notes"]):
        raise fail(source, "notes contains non-text items", "notes is a list of strings")
    merged = meta.get("merged_stages", {})
    if not isinstance(merged, dict):
        raise fail(source, "merged_stages is not an object",
                    'Write {"schedule+dispatch": "why"}')
    for key, why in merged.items():
        parts = str(key).split("+")
        if len(parts) < 2 or any(p not in STAGE_NAMES for p in parts) or not isinstance(
                why, str):
            raise fail(source, f"merged_stages entry {key!r} is not 'stage+stage' -> text",
                        f"Join stage names with '+' ({', '.join(STAGE_NAMES)})")
    profile = meta.get("profile")
    if profile is not None:
        ok = isinstance(profile, dict)
        share = profile.get("attributed_share") if ok else None
        ok = ok and isinstance(share, int | float) and not isinstance(share, bool) and (
            0.0 <= share <= 1.0)
        for k in ("samples", "errors"):
            v = profile.get(k) if isinstance(profile, dict) else None
            ok = ok and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        if not ok:
            raise fail(source, f"profile is {profile!r}",
                        'Write {"attributed_share": 0..1, "samples": N, "errors": M}')
    ref = meta.get("reference_backend")
    if ref is not None and not isinstance(ref, str):
        raise fail(source, "reference_backend is not text", "Name a backend, or omit it")
    return meta


def check_runs_cover(stages: pd.DataFrame, runs: pd.DataFrame, source: str) -> None:
    known = set(runs[list(RUN_KEY)].itertuples(index=False, name=None))
    keys = set(stages[list(RUN_KEY)].itertuples(index=False, name=None))
    orphans = sorted(keys - known)
    if orphans:
        raise fail(source, f"has runs that {RUNS_FILE} lacks, e.g. {orphans[0]}",
                    "Write one runs.csv row per (backend, workload, n_tasks, repeat)")
