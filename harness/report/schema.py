"""The run folder: read it (validated) and write it (validated, deterministic).

Rules of this module:

- The contract is in ``columns`` (files, columns, types) and ``validate`` (the rules); this
  module re-exports both, so ``harness.report.schema`` is the one import for the runner and
  the report layer.
- ``read_run`` validates everything it returns; a bad folder raises ``RunFolderError`` naming
  the file, the line or key, the problem and what to do.
- ``write_tables`` applies the same checks before writing anything, so a runner bug is caught
  when the run is recorded rather than when it is reported, and writes deterministically:
  fixed column order, rows sorted by key (stages in pipeline order), floats in shortest
  round-trip form, ``\\n`` line ends, JSON with sorted keys. Each file is written to a
  temporary name and renamed.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.report.columns import (
    IDLE,
    IMPORT,
    META_FILE,
    PROFILE_CATEGORIES,
    PROFILE_STAGES_COLUMNS,
    PROFILE_STAGES_FILE,
    PROFILES_DIR,
    RUN_KEY,
    RUNS_COLUMNS,
    RUNS_FILE,
    SCHEMA_VERSION,
    SPANS_COLUMNS,
    SPANS_FILE,
    STAGE_NAMES,
    STAGES_COLUMNS,
    STAGES_FILE,
    UNATTRIBUTED,
    RunFolderError,
)
from harness.report.validate import check_runs_cover, fail, validate_meta, validate_table

__all__ = [
    "IDLE",
    "IMPORT",
    "META_FILE",
    "PROFILE_CATEGORIES",
    "PROFILE_STAGES_COLUMNS",
    "PROFILE_STAGES_FILE",
    "PROFILES_DIR",
    "RUN_KEY",
    "RUNS_COLUMNS",
    "RUNS_FILE",
    "SCHEMA_VERSION",
    "SPANS_COLUMNS",
    "SPANS_FILE",
    "STAGE_NAMES",
    "STAGES_COLUMNS",
    "STAGES_FILE",
    "UNATTRIBUTED",
    "Run",
    "RunFolderError",
    "read_run",
    "validate_meta",
    "validate_table",
    "write_tables",
]


@dataclass(frozen=True)
class Run:
    """A validated run folder. Tables have exactly the schema columns first, then any extras."""

    path: Path
    meta: dict[str, Any]
    stages: pd.DataFrame
    runs: pd.DataFrame
    spans: pd.DataFrame
    profile_stages: pd.DataFrame | None
    label: str = ""

    @property
    def name(self) -> str:
        """How reports label the run: ``label`` if set (a stored run: ``@ID``), else the
        folder name."""
        return self.label or self.path.name

    @property
    def profiles_dir(self) -> Path | None:
        """``profiles/`` if the folder has one, else None."""
        p = self.path / PROFILES_DIR
        return p if p.is_dir() else None


def _read_csv(path: Path, columns: Mapping[str, str]) -> pd.DataFrame:
    """Read and validate one table: a typed read first (fast); if that fails, a read as text,
    whose validation names the offending rows."""
    if not path.is_file():
        raise fail(str(path), "file is missing",
                    "Is this a run folder written by `stagecost run`? Re-run it if the run was "
                    "interrupted")
    numeric = {c: ("float64" if k == "float" else "Int64") for c, k in columns.items()
               if k in ("float", "int", "Int64")}
    try:
        head = pd.read_csv(path, nrows=0)
        present = {c: t for c, t in numeric.items() if c in head.columns}
        typed = {c: (present.get(c) or str) for c in head.columns}
        raw = pd.read_csv(path, dtype=typed, keep_default_na=False,
                          na_values={c: ["", "nan", "NaN", "NA", "<NA>"] for c in present})
    except pd.errors.EmptyDataError:
        raise fail(str(path), "file is empty (not even a header)",
                    f"Write the header: {','.join(columns)}") from None
    except (ValueError, TypeError, OverflowError, pd.errors.ParserError, UnicodeDecodeError):
        try:
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise fail(str(path), f"is not valid CSV ({e})",
                        "Rewrite it with write_tables") from e
    return validate_table(raw, columns, str(path))


def read_run(run_dir: Path | str) -> Run:
    """Read and validate a run folder.

    Raises ``RunFolderError`` (a ``ValueError``) naming the file and the problem: folder or file
    missing, bad JSON, wrong ``schema_version``, missing column, unknown stage name, bad value,
    duplicate key, or stages.csv rows for runs that runs.csv does not list.
    ``profile_stages.csv`` is optional; tables may have zero rows.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise fail(str(run_dir), "is not a folder", "Pass the folder of one run")
    meta_path = run_dir / META_FILE
    if not meta_path.is_file():
        raise fail(str(meta_path), "file is missing", "Is this a run folder?")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise fail(str(meta_path), f"is not valid JSON ({e})", "Rewrite it") from e
    meta = validate_meta(meta, str(meta_path))
    stages = _read_csv(run_dir / STAGES_FILE, STAGES_COLUMNS)
    runs = _read_csv(run_dir / RUNS_FILE, RUNS_COLUMNS)
    spans = _read_csv(run_dir / SPANS_FILE, SPANS_COLUMNS)
    check_runs_cover(stages, runs, str(run_dir / STAGES_FILE))
    prof_path = run_dir / PROFILE_STAGES_FILE
    profile = _read_csv(prof_path, PROFILE_STAGES_COLUMNS) if prof_path.exists() else None
    return Run(run_dir, meta, stages, runs, spans, profile)


def _sorted(df: pd.DataFrame, key: tuple[str, ...]) -> pd.DataFrame:
    if df.empty or not key:
        return df.reset_index(drop=True)
    rank = {name: i for i, name in enumerate(STAGE_NAMES, start=1)}

    def order(col: pd.Series) -> pd.Series:
        if col.name != "stage":
            return col
        return col.map(rank).fillna(len(STAGE_NAMES) + 1)

    return df.sort_values(list(key), key=order, kind="mergesort").reset_index(drop=True)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        # mkstemp makes the file private; give it the mode a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _csv_text(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, lineterminator="\n", na_rep="")


def _json_ready(obj: object, where: str) -> object:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise fail(META_FILE, f"{where} is {obj}", "JSON has no NaN/inf; write null")
    if isinstance(obj, dict):
        return {str(k): _json_ready(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return _json_ready(obj.item(), where)
    return obj


def write_tables(run_dir: Path | str, stages_df: pd.DataFrame, spans_df: pd.DataFrame,
                 runs_df: pd.DataFrame, meta: Mapping[str, Any],
                 profile_stages_df: pd.DataFrame | None = None) -> Path:
    """Validate the tables and write them into ``run_dir`` (created if needed); return it.

    Writes ``meta.json``, ``stages.csv``, ``runs.csv``, ``spans.csv`` and, if given,
    ``profile_stages.csv``. Validation happens before anything is written, so a bad table
    leaves the folder untouched. ``schema_version`` is filled in when ``meta`` lacks it.
    Output is byte-identical for equal inputs.
    """
    run_dir = Path(run_dir)
    full_meta = {"schema_version": SCHEMA_VERSION, **dict(meta)}
    meta_doc = validate_meta(_json_ready(full_meta, "meta"), META_FILE)
    def source(name: str) -> str:
        return f"{name} (table to write; line = row position + 2)"

    tables = {
        STAGES_FILE: validate_table(stages_df, STAGES_COLUMNS, source(STAGES_FILE)),
        RUNS_FILE: validate_table(runs_df, RUNS_COLUMNS, source(RUNS_FILE)),
        SPANS_FILE: validate_table(spans_df, SPANS_COLUMNS, source(SPANS_FILE)),
    }
    if profile_stages_df is not None:
        tables[PROFILE_STAGES_FILE] = validate_table(profile_stages_df, PROFILE_STAGES_COLUMNS,
                                                     source(PROFILE_STAGES_FILE))
    check_runs_cover(tables[STAGES_FILE], tables[RUNS_FILE], source(STAGES_FILE))
    sort_keys = {STAGES_FILE: (*RUN_KEY, "stage", "role"), RUNS_FILE: RUN_KEY,
                 SPANS_FILE: (*RUN_KEY, "start_s", "role", "stage", "end_s"),
                 PROFILE_STAGES_FILE: ("stage", "function")}
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(run_dir / META_FILE, json.dumps(meta_doc, indent=2, sort_keys=True,
                                                  ensure_ascii=False, allow_nan=False) + "\n")
    for name, df in tables.items():
        _write_atomic(run_dir / name, _csv_text(_sorted(df, sort_keys[name])))
    return run_dir
