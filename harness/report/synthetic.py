"""Synthetic run tables with known answers, for tests and for trying the report layer.

Rules of this module:

- Deterministic: the same arguments give the same tables (numpy ``default_rng(seed)``).
- Stage ``i`` (1-based, pipeline order) of a backend takes ``scale * base_us * i * n**exp``
  microseconds in total (split between the roles that run it), times a noise factor in
  ``1 ± noise``; so growth exponents and ratios between backends are known in advance.
- Stages listed in ``not_applicable`` for a backend are written as the schema says:
  ``applicable=False``, numbers empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.report.schema import IDLE, SCHEMA_VERSION, STAGE_NAMES, UNATTRIBUTED

__all__ = ["SyntheticSpec", "synthetic_meta", "synthetic_profile", "synthetic_tables"]

_ROLES: Mapping[str, tuple[str, ...]] = {
    "generate": ("client",), "optimize": ("client",), "serialize": ("client",),
    "communicate": ("client", "scheduler"), "update_graph": ("scheduler",),
    "schedule": ("scheduler",), "dispatch": ("scheduler", "worker-0", "worker-1"),
    "execute": ("scheduler", "worker-0", "worker-1"),
}


@dataclass(frozen=True)
class SyntheticSpec:
    """What to synthesise. ``exponent`` and ``scale`` map backend -> value (default 1.0)."""

    backends: Sequence[str] = ("reference", "dask-distributed")
    workloads: Sequence[str] = ("elementwise",)
    sizes: Sequence[int] = (1_000, 10_000)
    repeats: int = 3
    base_us: float = 0.5
    exponent: Mapping[str, float] = field(default_factory=dict)
    scale: Mapping[str, float] = field(default_factory=dict)
    not_applicable: Mapping[str, Sequence[str]] = field(default_factory=dict)
    noise: float = 0.02
    seed: int = 0


def synthetic_tables(spec: SyntheticSpec) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(stages, spans, runs)`` tables following ``spec`` (see the module rules)."""
    rng = np.random.default_rng(spec.seed)
    stage_rows, span_rows, run_rows = [], [], []
    for backend in spec.backends:
        exp = spec.exponent.get(backend, 1.0)
        scale = spec.scale.get(backend, 1.0)
        na = set(spec.not_applicable.get(backend, ()))
        for workload in spec.workloads:
            for n in spec.sizes:
                for rep in range(spec.repeats):
                    key = {"backend": backend, "workload": workload, "n_tasks": n,
                           "repeat": rep}
                    t = 0.0
                    first_task = None
                    for i, stage in enumerate(STAGE_NAMES, start=1):
                        roles = _ROLES[stage]
                        if stage in na:
                            stage_rows.append({**key, "stage": stage, "role": roles[0],
                                               "seconds": np.nan, "us_per_task": np.nan,
                                               "nbytes": pd.NA, "messages": pd.NA,
                                               "applicable": False})
                            continue
                        factor = 1.0 + spec.noise * rng.uniform(-1.0, 1.0)
                        total = scale * spec.base_us * i * n ** exp * factor * 1e-6
                        per_role = total / len(roles)
                        for role in roles:
                            stage_rows.append({
                                **key, "stage": stage, "role": role, "seconds": per_role,
                                "us_per_task": per_role / n * 1e6, "nbytes": 40 * n,
                                "messages": len(roles), "applicable": True})
                            span_rows.append({
                                **key, "stage": stage, "role": role, "start_s": t,
                                "end_s": t + per_role, "tasks": n, "nbytes": 40 * n,
                                "messages": 1})
                        if stage == "execute" and first_task is None:
                            first_task = t
                        t += total
                    run_rows.append({**key, "wall_s": t, "time_to_first_task_s": first_task,
                                     "tasks_run": n})
    return pd.DataFrame(stage_rows), pd.DataFrame(span_rows), pd.DataFrame(run_rows)


def synthetic_meta(spec: SyntheticSpec, **extra: object) -> dict[str, object]:
    """A valid ``meta.json`` document for ``spec``; ``extra`` keys are added or replace."""
    meta: dict[str, object] = {
        "schema_version": SCHEMA_VERSION,
        "created_utc": "2024-01-01T00:00:00Z",
        "parameters": {"backends": list(spec.backends), "workloads": list(spec.workloads),
                       "sizes": list(spec.sizes), "repeats": spec.repeats},
        "versions": {"python": "3.11", "stagecost": "0.1.0"},
        "machine": {"cpus": 2, "platform": "synthetic"},
        "git_commit": "0" * 40,
        "warmups": 1,
        "notes": ["synthetic data"],
    }
    meta.update(extra)
    return meta


def synthetic_profile() -> pd.DataFrame:
    """A small ``profile_stages.csv`` table (shares sum to 1)."""
    rows = [("update_graph", "build_tasks", 40), ("update_graph", "decode", 20),
            ("schedule", "pick_worker", 15), ("execute", "run_task", 8),
            (UNATTRIBUTED, "helper", 5), (IDLE, "select", 12)]
    total = sum(r[2] for r in rows)
    return pd.DataFrame([{"stage": s, "function": f, "self_samples": k, "share": k / total}
                         for s, f, k in rows])
