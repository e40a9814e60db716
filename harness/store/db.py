"""The results store: one sqlite file holding every recorded run.

Rules of this module:

- A stored run keeps its run folder's data files byte for byte (``meta.json``, ``stages.csv``,
  ``runs.csv``, ``spans.csv``, ``profile_stages.csv``, zlib-compressed), so a stored run reads
  back through the same validation as a folder (``schema.read_run``) and exports to an equal
  folder. Besides, the store keeps queryable rows: one per (run, configuration) with the
  configuration key, commit, versions and machine, and the run's ``tables.measures`` (busy
  seconds per stage, time to first task, wall) per repeat, for history, trends and
  ``compare``.
- The same run is stored once: a run is identified by the sha-256 of its data files; adding
  it again returns its id.
- Runs are ordered by ``created_utc``, then id. "The previous run of a configuration" is the
  latest earlier run with the same configuration key on the same machine (hostname): timings
  from another machine are not a baseline.
- The file's schema has a version (``STORE_VERSION``); a file of another version is refused
  with what to do, never migrated silently. Writes happen in one transaction per run.
- Where the store is: ``--store PATH``, else ``$STAGECOST_STORE``, else
  ``reports/stagecost.sqlite`` (beside the run folders).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report.schema import (
    META_FILE,
    PROFILE_STAGES_FILE,
    RUNS_FILE,
    SPANS_FILE,
    STAGES_FILE,
    Run,
    read_run,
)
from harness.report.tables import measures
from harness.store.configs import config_key

__all__ = ["DEFAULT_STORE", "STORE_ENV", "STORE_VERSION", "ResultsStore", "StoreError",
           "StoredRun", "default_store_path"]

STORE_VERSION = 1
DEFAULT_STORE = Path("reports") / "stagecost.sqlite"
STORE_ENV = "STAGECOST_STORE"
_FILES = (META_FILE, STAGES_FILE, RUNS_FILE, SPANS_FILE, PROFILE_STAGES_FILE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    created_utc TEXT NOT NULL,
    git_commit TEXT,
    machine TEXT NOT NULL,
    versions TEXT NOT NULL,
    source TEXT,
    fingerprint TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS files (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS configs (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS run_configs (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    config_id INTEGER NOT NULL REFERENCES configs(id),
    backend TEXT NOT NULL,
    workload TEXT NOT NULL,
    n_tasks INTEGER NOT NULL,
    PRIMARY KEY (run_id, backend, workload, n_tasks)
);
CREATE TABLE IF NOT EXISTS measures (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    backend TEXT NOT NULL,
    workload TEXT NOT NULL,
    n_tasks INTEGER NOT NULL,
    repeat INTEGER NOT NULL,
    stage TEXT NOT NULL,
    seconds REAL,
    applicable INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS run_configs_by_config ON run_configs (config_id);
CREATE INDEX IF NOT EXISTS measures_by_run ON measures (run_id);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (created_utc, id);
"""


class StoreError(RuntimeError):
    """The store file cannot be used (not sqlite, another schema version, no such run)."""


def default_store_path(option: Path | None = None) -> Path:
    """``option`` if given, else ``$STAGECOST_STORE``, else ``reports/stagecost.sqlite``."""
    if option is not None:
        return option
    env = os.environ.get(STORE_ENV)
    return Path(env) if env else DEFAULT_STORE


@dataclass(frozen=True)
class StoredRun:
    """A run's row in the store."""

    id: int
    name: str
    created_utc: str
    git_commit: str | None
    machine: str
    source: str | None

    @property
    def ref(self) -> str:
        return f"@{self.id}"


def _fingerprint(texts: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in _FILES:
        if name in texts:
            h.update(name.encode() + b"\0" + hashlib.sha256(texts[name]).digest())
    return h.hexdigest()


class ResultsStore:
    """An open store. Use as a context manager (``with ResultsStore(path) as store``)."""

    def __init__(self, path: Path | str, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"no results store at {self.path}: run `stagecost run` first, or "
                             "pass --store PATH")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30.0)
            self.db.execute("PRAGMA foreign_keys = ON")
            self._init()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} is not a stagecost results store ({e}); pass "
                             "--store with another file") from None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def _init(self) -> None:
        with self.db:
            self.db.executescript(_SCHEMA)
            row = self.db.execute("SELECT value FROM store_info WHERE key = 'version'"
                                  ).fetchone()
            if row is None:
                self.db.execute("INSERT INTO store_info VALUES ('version', ?)",
                                (str(STORE_VERSION),))
            elif row[0] != str(STORE_VERSION):
                raise StoreError(f"{self.path} has store version {row[0]}; this stagecost "
                                 f"reads version {STORE_VERSION}. Use a stagecost of that "
                                 "version, or start a new store with --store")

    # --- writing ---------------------------------------------------------------------------

    def add_folder(self, run_dir: Path | str) -> tuple[int, bool]:
        """Store the run folder ``run_dir`` (validated first); return (id, newly added).

        Raises ``RunFolderError`` for a bad folder."""
        run_dir = Path(run_dir)
        run = read_run(run_dir)
        texts = {name: (run_dir / name).read_bytes() for name in _FILES
                 if (run_dir / name).is_file()}
        return self._add(run, texts, source=str(run_dir))

    def _add(self, run: Run, texts: dict[str, bytes], source: str | None) -> tuple[int, bool]:
        fp = _fingerprint(texts)
        found = self.db.execute("SELECT id FROM runs WHERE fingerprint = ?", (fp,)).fetchone()
        if found:
            return int(found[0]), False
        meta = run.meta
        machine = str((meta.get("machine") or {}).get("hostname") or "unknown")
        meas = measures(run.stages, run.runs)
        with self.db:
            cur = self.db.execute(
                "INSERT INTO runs (name, created_utc, git_commit, machine, versions, source, "
                "fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run.path.name, meta["created_utc"], meta.get("git_commit"), machine,
                 json.dumps(meta.get("versions") or {}, sort_keys=True), source, fp))
            run_id = int(cur.lastrowid or 0)
            self.db.executemany("INSERT INTO files VALUES (?, ?, ?)",
                                [(run_id, n, zlib.compress(t, 6)) for n, t in texts.items()])
            configs = run.runs[["backend", "workload", "n_tasks"]].drop_duplicates()
            for b, w, n in configs.itertuples(index=False, name=None):
                key = config_key(meta, str(b), str(w), int(n))
                self.db.execute("INSERT OR IGNORE INTO configs (key) VALUES (?)", (key,))
                cid = self.db.execute("SELECT id FROM configs WHERE key = ?", (key,)
                                      ).fetchone()[0]
                self.db.execute("INSERT INTO run_configs VALUES (?, ?, ?, ?, ?)",
                                (run_id, cid, str(b), str(w), int(n)))
            self.db.executemany(
                "INSERT INTO measures VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, str(r.backend), str(r.workload), int(r.n_tasks), int(r.repeat),
                  str(r.stage), None if pd.isna(r.seconds) else float(r.seconds),
                  int(bool(r.applicable)))
                 for r in meas.itertuples(index=False)])
        return run_id, True

    # --- reading ---------------------------------------------------------------------------

    def stored_run(self, run_id: int) -> StoredRun:
        row = self.db.execute("SELECT id, name, created_utc, git_commit, machine, source "
                              "FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"the store {self.path} has no run @{run_id}; "
                             "`stagecost history` lists the stored runs")
        return StoredRun(*row)

    def runs(self) -> list[StoredRun]:
        """Every stored run, oldest first."""
        rows = self.db.execute("SELECT id, name, created_utc, git_commit, machine, source "
                               "FROM runs ORDER BY created_utc, id").fetchall()
        return [StoredRun(*r) for r in rows]

    def by_name(self, name: str) -> list[StoredRun]:
        rows = self.db.execute("SELECT id, name, created_utc, git_commit, machine, source "
                               "FROM runs WHERE name = ? ORDER BY created_utc, id", (name,)
                               ).fetchall()
        return [StoredRun(*r) for r in rows]

    def find_folder(self, run_dir: Path | str) -> int | None:
        """The id of the stored copy of run folder ``run_dir`` (same data files), if any."""
        run_dir = Path(run_dir)
        texts = {name: (run_dir / name).read_bytes() for name in _FILES
                 if (run_dir / name).is_file()}
        row = self.db.execute("SELECT id FROM runs WHERE fingerprint = ?",
                              (_fingerprint(texts),)).fetchone()
        return int(row[0]) if row else None

    def export_folder(self, run_id: int, out_dir: Path | str) -> Path:
        """Write stored run ``run_id``'s data files into ``out_dir`` (created); return it."""
        self.stored_run(run_id)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, data in self.db.execute("SELECT name, data FROM files WHERE run_id = ?",
                                          (run_id,)):
            (out / name).write_bytes(zlib.decompress(data))
        return out

    def load_run(self, run_id: int) -> Run:
        """Stored run ``run_id`` as a validated ``Run`` labelled ``@ID`` (its ``path`` is
        the folder it came from, which may no longer exist)."""
        row = self.stored_run(run_id)
        with tempfile.TemporaryDirectory(prefix="stagecost-stored-") as tmp:
            run = read_run(self.export_folder(run_id, Path(tmp) / row.name))
        source = Path(row.source) if row.source else Path(row.name)
        return Run(source, run.meta, run.stages, run.runs, run.spans, run.profile_stages,
                   label=f"@{row.id}")

    def measures(self, run_ids: Sequence[int]) -> pd.DataFrame:
        """The stored ``tables.measures`` rows of ``run_ids``, with a ``run_id`` column."""
        if not run_ids:
            return pd.DataFrame(columns=["run_id", "backend", "workload", "n_tasks", "repeat",
                                         "stage", "seconds", "applicable"])
        marks = ",".join("?" * len(run_ids))
        df = pd.read_sql_query(f"SELECT * FROM measures WHERE run_id IN ({marks})", self.db,
                               params=[int(i) for i in run_ids])
        df["applicable"] = df["applicable"].astype(bool)
        df["seconds"] = df["seconds"].astype(float)
        return df

    def listing(self) -> pd.DataFrame:
        """One row per (run, configuration): ``id``, ``created_utc``, ``git_commit``,
        ``machine``, ``name``, ``config_id``, ``config``, ``backend``, ``workload``,
        ``n_tasks``, ``versions`` (JSON), oldest first."""
        return pd.read_sql_query(
            "SELECT r.id, r.created_utc, r.git_commit, r.machine, r.name, c.id AS config_id, "
            "c.key AS config, rc.backend, rc.workload, rc.n_tasks, r.versions "
            "FROM runs r JOIN run_configs rc ON rc.run_id = r.id "
            "JOIN configs c ON c.id = rc.config_id ORDER BY r.created_utc, r.id, "
            "rc.backend, rc.workload, rc.n_tasks", self.db)

    def config_runs(self, config_id: int, machine: str, *, upto: int | None = None
                    ) -> list[StoredRun]:
        """Runs of configuration ``config_id`` on ``machine``, oldest first; with ``upto``,
        only runs up to and including run ``upto`` (in store order)."""
        rows = self.db.execute(
            "SELECT r.id, r.name, r.created_utc, r.git_commit, r.machine, r.source "
            "FROM runs r JOIN run_configs rc ON rc.run_id = r.id "
            "WHERE rc.config_id = ? AND r.machine = ? ORDER BY r.created_utc, r.id",
            (config_id, machine)).fetchall()
        out = [StoredRun(*r) for r in rows]
        if upto is not None:
            ids = [r.id for r in out]
            out = out[:ids.index(upto) + 1] if upto in ids else []
        return out

    def configs_of(self, run_id: int) -> pd.DataFrame:
        """(``backend``, ``workload``, ``n_tasks``, ``config_id``, ``config``) of a run."""
        return pd.read_sql_query(
            "SELECT rc.backend, rc.workload, rc.n_tasks, c.id AS config_id, c.key AS config "
            "FROM run_configs rc JOIN configs c ON c.id = rc.config_id WHERE rc.run_id = ? "
            "ORDER BY rc.backend, rc.workload, rc.n_tasks", self.db, params=[run_id])

    def previous(self, run_id: int, config_id: int) -> StoredRun | None:
        """The latest run before ``run_id`` of the same configuration on the same machine."""
        row = self.stored_run(run_id)
        earlier = self.config_runs(config_id, row.machine, upto=run_id)[:-1]
        return earlier[-1] if earlier else None


@contextmanager
def open_store(path: Path | str, *, create: bool = True) -> Iterator[ResultsStore]:
    store = ResultsStore(path, create=create)
    try:
        yield store
    finally:
        store.close()


def stored_run_fields(store: ResultsStore, run_id: int) -> dict[str, Any]:
    """A stored run's row as a dict (for ``--json``)."""
    r = store.stored_run(run_id)
    return {"id": r.id, "name": r.name, "created_utc": r.created_utc,
            "git_commit": r.git_commit, "machine": r.machine, "source": r.source}
