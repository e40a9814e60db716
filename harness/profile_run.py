"""``stagecost profile``: a run with py-spy attached to the roles asked for.

Rules: py-spy attaches once per configuration, after its processes started and before the
first (warmup) run, and stops after the last run; so a profile covers the warmups and the
repeats of that configuration, all of them recorded (stage spans are what samples are
attributed with, so a profile has no record-off repeats). Each profiled process gives a
speedscope file and a flame graph in ``profiles/``; samples are attributed to stages with the reference system's stage
map (or Dask's, for Dask backends). ``profile_stages.csv`` adds up every profiled process's
samples by (stage, function); idle and import samples are reported in ``meta.json`` but not
in that table. The attributed share is attributed / (attributed + unattributed): the part
of the busy (non-idle) samples the stage map could place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.backends.base import Backend, RunOptions
from harness.profiling import ProfileSession, PySpyOptions, get_stage_map
from harness.profiling.outputs import write_profile_outputs
from harness.report.columns import PROFILES_DIR, STAGE_NAMES, UNATTRIBUTED
from harness.runner import run_grid

__all__ = ["ROLES", "profile_grid", "select_pids"]

ROLES = ("scheduler", "client", "workers", "all")


def select_pids(pids: dict[str, int], role: str) -> dict[str, int]:
    """Processes to profile for ``role`` (distinct pids, first role name kept)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if role == "all":
        chosen = dict(pids)
    elif role == "workers":
        chosen = {r: p for r, p in pids.items() if r.startswith("worker")}
    else:
        chosen = {r: p for r, p in pids.items() if r == role}
    if not chosen:
        raise ValueError(f"this backend has no {role} process to profile (it has: "
                         f"{', '.join(pids) or 'none'})")
    out: dict[str, int] = {}
    for r, p in chosen.items():
        if p not in out.values():
            out[r] = p
    return out


@dataclass
class _Profiler:
    run_dir: Path
    role: str
    rate: int
    sessions: list[tuple[str, str, ProfileSession]] = field(default_factory=list)
    tables: list[pd.DataFrame] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""

    def started(self, backend: Backend) -> None:
        out = self.run_dir / PROFILES_DIR
        out.mkdir(parents=True, exist_ok=True)
        label = f"{backend.name}-{len(self.summaries) + len(self.sessions)}"
        stage_map = "dask" if backend.name.startswith("dask") else "reference"
        for role, pid in select_pids(backend.pids(), self.role).items():
            opts = PySpyOptions(output=out / f"{label}-{role}.speedscope.json",
                                rate=self.rate)
            session = ProfileSession(opts, pid=pid, role=role)
            session.start()
            self.sessions.append((role, stage_map, session))

    def finished(self, backend: Backend) -> None:
        out = self.run_dir / PROFILES_DIR
        for role, stage_map, session in self.sessions:
            result = session.stop(check=False)
            if not result.ok:
                self.summaries.append({"role": role, "error": "py-spy wrote no profile",
                                       **result.metadata()})
                continue
            stem = result.output.name.removesuffix(".speedscope.json")
            po = write_profile_outputs(result.output, out, stage_map=get_stage_map(stage_map),
                                       role=role, csv_name=f"{stem}-stages.csv",
                                       svg_name=f"{stem}-flamegraph.svg",
                                       title=f"{backend.name} {role}")
            self.tables.append(po.stages)
            self.summaries.append({**po.summary(), **result.metadata()})
        self.sessions = []

    def extra(self) -> tuple[pd.DataFrame | None, dict[str, Any]]:
        if not self.tables:
            return None, {"profile": None, "notes_profile": self.summaries}
        table = pd.concat(self.tables, ignore_index=True)
        table = table[table["stage"].isin([*STAGE_NAMES, UNATTRIBUTED])]
        table = table.groupby(["stage", "function"], as_index=False)["self_samples"].sum()
        samples = sum(int(s.get("samples") or 0) for s in self.summaries)
        errors = sum(int(s.get("errors") or 0) for s in self.summaries)
        attributed = sum(int(s.get("attributed_samples") or 0) for s in self.summaries)
        unattributed = sum(int(s.get("unattributed_samples") or 0) for s in self.summaries)
        total = sum(int(s.get("samples") or 0) for s in self.summaries) or 1
        table["share"] = table["self_samples"] / total
        busy = attributed + unattributed
        meta = {"profile": {"attributed_share": attributed / busy if busy else 0.0,
                            "samples": samples, "errors": errors},
                "profiles": self.summaries}
        return table, meta


def profile_grid(workloads: list[str], sizes: list[int], backends: list[str],
                 options: RunOptions, *, repeats: int, warmups: int, run_dir: Path,
                 role: str, rate: int, parameters: dict[str, Any] | None = None
                 ) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    if rate < 1:
        raise ValueError(f"--rate must be at least 1 sample per second, got {rate}")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    prof = _Profiler(run_dir, role, rate)
    return run_grid(workloads, sizes, backends, options, repeats=repeats, warmups=warmups,
                    run_dir=run_dir, parameters={**(parameters or {}), "role": role,
                                                 "rate": rate}, hooks=prof,
                    overhead=False)
