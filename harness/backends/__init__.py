"""Backends by name. Each is imported when first used, so that a run of the reference
system does not pay for importing Dask."""

from __future__ import annotations

import importlib
from types import MappingProxyType

from harness.backends.base import Backend, BackendError, Measurement, RunOptions

__all__ = ["BACKENDS", "Backend", "BackendError", "Measurement", "RunOptions", "make_backend"]

BACKENDS = MappingProxyType({
    "reference": "harness.backends.reference:ReferenceBackend",
    "reference-inproc": "harness.backends.reference:InprocBackend",
    "dask-distributed": "harness.backends.dask_backends:DistributedBackend",
    "dask-threads": "harness.backends.dask_backends:ThreadsBackend",
    "dask-processes": "harness.backends.dask_backends:ProcessesBackend",
    "dask-sync": "harness.backends.dask_backends:SyncBackend",
    "floor": "harness.backends.floor:FloorBackend",
})
"""Backend name -> "module:class"."""


def make_backend(name: str, options: RunOptions) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(options)
