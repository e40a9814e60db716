"""Export stored runs as asv results, so that ``asv publish`` draws their history.

Rules of this module:

- One asv benchmark per (workload, stage): ``stagecost.<workload>.time_<stage>`` (the eight
  stages, ``time_to_first_task`` and ``wall``), of type ``time`` in seconds, parameterised by
  ``backend``, ``n_tasks`` and ``setup`` (workers×threads, encoding, ... as
  ``configs.config_label`` writes them). A value is the median over a run's repeats;
  min and max over repeats go to asv's ``stats_ci_99_a`` / ``stats_ci_99_b``.
- One results file per (machine, commit), in asv's results format (version 2): the latest
  stored run of each configuration at that commit wins. Runs without a commit, or made from
  a tree with uncommitted changes (``-dirty``), are left out: asv places results on commits,
  and such a run belongs to none. Left-out runs are counted in the return value.
- Written beside them: ``benchmarks.json``, ``<machine>/machine.json`` and an
  ``asv.conf.json`` whose ``repo`` is the repository the commits come from, so that
  ``asv publish --config DIR/asv.conf.json`` works in that folder.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.store.configs import config_label
from harness.store.db import ResultsStore

__all__ = ["ENV_NAME", "export_asv"]

ENV_NAME = "stagecost"
_COLUMNS = ["result", "params", "version", "started_at", "duration", "stats_ci_99_a",
            "stats_ci_99_b", "stats_q_25", "stats_q_75", "stats_number", "stats_repeat",
            "samples", "profile"]


def _js_ms(iso: str) -> int:
    return int(_dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def export_asv(store: ResultsStore, out_dir: Path, run_ids: Sequence[int] | None = None,
               repo: str = "..") -> tuple[int, int]:
    """Write the stored runs ``run_ids`` (default: all) as asv results under ``out_dir``;
    return (result files written, runs left out for lack of a clean commit)."""
    listing = store.listing()
    if run_ids is not None:
        listing = listing[listing["id"].isin(list(run_ids))]
    dirty = listing["git_commit"].isna() | listing["git_commit"].astype(str).str.endswith(
        "-dirty") | (listing["git_commit"].astype(str) == "")
    left_out = int(listing.loc[dirty, "id"].nunique())
    listing = listing[~dirty]
    meas = store.measures(listing["id"].unique().tolist())
    if listing.empty:
        return 0, left_out
    listing = listing.assign(setup=[config_label(k).split(" · ", 3)[-1]
                                    for k in listing["config"]])
    key = ["id", "backend", "workload", "n_tasks"]
    med = meas[meas["applicable"]].rename(columns={"run_id": "id"}).groupby(
        [*key, "stage"])["seconds"].agg(["median", "min", "max"]).reset_index()
    rows = listing.merge(med, on=key)
    params: dict[str, list[list[str]]] = {}
    for (workload, stage), g in rows.groupby(["workload", "stage"]):
        params[f"stagecost.{workload}.time_{stage}"] = [
            [repr(str(v)) for v in sorted(g["backend"].unique())],
            [repr(int(v)) for v in sorted(g["n_tasks"].unique())],
            [repr(str(v)) for v in sorted(g["setup"].unique())]]
    benchmarks: dict[str, Any] = {}
    for name, p in params.items():
        version = hashlib.sha256(f"{name}{p}".encode()).hexdigest()
        benchmarks[name] = {"name": name, "type": "time", "unit": "seconds", "params": p,
                            "param_names": ["backend", "n_tasks", "setup"],
                            "version": version, "timeout": 0, "code": name,
                            "pretty_name": name}
    out = Path(out_dir)
    _write(out / "results" / "benchmarks.json", {**benchmarks, "version": 2})
    written = 0
    for (machine, commit), g in rows.groupby(["machine", "git_commit"]):
        latest = g.sort_values(["created_utc", "id"]).groupby(
            ["workload", "stage", "backend", "n_tasks", "setup"]).tail(1)
        results: dict[str, list[Any]] = {}
        for (workload, stage), part in latest.groupby(["workload", "stage"]):
            name = f"stagecost.{workload}.time_{stage}"
            p = params[name]
            at = {(repr(str(r.backend)), repr(int(r.n_tasks)), repr(str(r.setup))): r
                  for r in part.itertuples(index=False)}
            combos = list(itertools.product(*p))
            picked = [at.get(c) for c in combos]
            started = max(_js_ms(str(r.created_utc)) for r in picked if r is not None)
            results[name] = [
                [None if r is None else float(r.median) for r in picked], p,
                benchmarks[name]["version"], started, None,
                [None if r is None else float(r.min) for r in picked],
                [None if r is None else float(r.max) for r in picked]]
        doc = {"commit_hash": commit, "env_name": ENV_NAME,
               "date": int(g["created_utc"].map(_js_ms).max()),
               "params": {"machine": machine, "python": "", "stagecost": ""},
               "python": "", "requirements": {}, "env_vars": {}, "result_columns": _COLUMNS,
               "results": results, "durations": {}, "version": 2}
        _write(out / "results" / str(machine) / f"{str(commit)[:8]}-{ENV_NAME}.json", doc)
        _write(out / "results" / str(machine) / "machine.json",
               {"machine": machine, "arch": "", "cpu": "", "num_cpu": "", "os": "",
                "ram": "", "version": 1})
        written += 1
    _write(out / "asv.conf.json", {
        "version": 1, "project": "stagecost", "project_url": "", "repo": repo,
        "branches": ["HEAD"], "environment_type": "existing", "results_dir": "results",
        "html_dir": "html", "env_dir": "env"})
    return written, left_out
