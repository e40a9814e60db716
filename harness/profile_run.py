"""``stagecost profile``: a run with py-spy attached to the roles asked for.

Rules: py-spy attaches once per configuration, after its processes started and before the
first (warmup) run, and stops after the last run; so a profile covers the warmups and the
repeats of that configuration, all of them recorded (stage spans are what samples are
attributed with, so a profile has no record-off repeats). Each profiled process gives a
speedscope file and a flame graph in ``profiles/``; samples are attributed to stages with the reference system's stage
map (or Dask's, for Dask backends). ``profile_stages.csv`` adds up every profiled process's
samples by (stage, function), with unattributed, idle and import samples as rows of their
own, so that its shares add up to 100 % of the samples. ``meta.json``'s ``profile`` counts
them: attributed + unattributed = busy; busy + idle + import = samples. The attributed share
is attributed / busy: the part of the work the stage map could place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.backends.base import Backend, RunOptions
from harness.profiling import ProfileSession, PySpyOptions, get_stage_map
from harness.profiling.outputs import write_profile_outputs
from harness.report.columns import PROFILE_CATEGORIES, PROFILES_DIR
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


def _pyspy_facts(result: Any) -> dict[str, Any]:
    """py-spy's facts about a profile, its own sample count as ``pyspy_samples``: the
    ``samples`` of a summary are those of the profile file, which every share divides."""
    facts = result.metadata()
    facts["pyspy_samples"] = facts.pop("samples", None)
    return facts


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
                                       **_pyspy_facts(result)})
                continue
            stem = result.output.name.removesuffix(".speedscope.json")
            po = write_profile_outputs(result.output, out, stage_map=get_stage_map(stage_map),
                                       role=role, csv_name=f"{stem}-stages.csv",
                                       svg_name=f"{stem}-flamegraph.svg",
                                       title=f"{backend.name} {role}")
            self.tables.append(po.stages)
            self.summaries.append({**_pyspy_facts(result), **po.summary()})
        self.sessions = []

    def extra(self) -> tuple[pd.DataFrame | None, dict[str, Any]]:
        if not self.tables:
            return None, {"profile": None, "notes_profile": self.summaries}
        table = pd.concat(self.tables, ignore_index=True)
        table = table[table["stage"].isin(PROFILE_CATEGORIES)]
        table = table.groupby(["stage", "function"], as_index=False)["self_samples"].sum()

        def total(key: str) -> int:
            return sum(int(s.get(key) or 0) for s in self.summaries)

        samples = total("samples")
        table["share"] = table["self_samples"] / (samples or 1)
        attributed, unattributed = total("attributed_samples"), total("unattributed_samples")
        busy = attributed + unattributed
        meta = {"profile": {"attributed_share": attributed / busy if busy else 0.0,
                            "samples": samples, "errors": total("errors"),
                            "attributed_samples": attributed,
                            "unattributed_samples": unattributed, "busy_samples": busy,
                            "idle_samples": total("idle_samples"),
                            "import_samples": total("import_samples")},
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
