"""The configuration of a measurement: what must be equal for two runs to be compared.

Rules of this module:

- A configuration is (backend label, workload, real task count) and the run options that
  change what is measured: workers, threads per worker, the graph encoding the backend really
  used, fusion, recording on/off, Dask settings, and whether stagecost started the cluster
  (``local``) or used a running one (``external``). The timeout is left out: it changes
  nothing that is measured.
- The key is canonical JSON (sorted keys), so equal configurations have equal keys whatever
  order the options were given in. The machine, the commit and the versions are not part of
  it: they are what history compares across (the store records them beside the key).
- Pure functions: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["config_key", "config_label"]

_ENCODED = frozenset({"reference", "reference-inproc"})  # backends that take ``-e``


def config_key(meta: Mapping[str, Any], backend: str, workload: str, n_tasks: int) -> str:
    """The canonical configuration key of one (backend, workload, n_tasks) of a run."""
    params = meta.get("parameters") or {}
    options = params.get("options") or {}
    base, _, label_encoding = backend.partition("/")
    enc = label_encoding or (options.get("encoding") if base in _ENCODED else None)
    key = {
        "backend": backend, "workload": workload, "n_tasks": int(n_tasks),
        "workers": options.get("workers"), "threads": options.get("threads"),
        "encoding": enc, "fuse": options.get("fuse"), "record": options.get("record"),
        "dask_config": sorted(options.get("dask_config") or []),
        "cluster": "external" if options.get("scheduler_address") else "local",
    }
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def config_label(key: str) -> str:
    """A short human form of a key: ``reference · elementwise · n=10,000 · 2×1 · compact``."""
    k = json.loads(key)
    parts = [str(k["backend"]), str(k["workload"]), f"n={int(k['n_tasks']):,}",
             f"{k['workers']}×{k['threads']}"]
    if k.get("encoding") and "/" not in str(k["backend"]):
        parts.append(str(k["encoding"]))
    if k.get("fuse"):
        parts.append("fused")
    if k.get("record") is False:
        parts.append("no-record")
    if k.get("dask_config"):
        parts.append(" ".join(k["dask_config"]))
    if k.get("cluster") == "external":
        parts.append("external cluster")
    return " · ".join(parts)
