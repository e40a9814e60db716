"""The reference client–scheduler–worker system of stagecost.

``from scheduler import Client, LocalCluster``. Rules: this package never imports
``harness``; ``scheduler.state`` does no I/O. The names below are loaded on first use, so
that importing the pure state machines (``scheduler.state``) does not load the runtime
(asyncio, threads, msgpack).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Client", "Future", "LocalCluster", "SpanRecorder", "Stage"]

_WHERE = {"Client": ".runtime.client", "Future": ".runtime.client",
          "LocalCluster": ".runtime.cluster", "SpanRecorder": ".stages", "Stage": ".stages"}

if TYPE_CHECKING:
    from .runtime.client import Client, Future
    from .runtime.cluster import LocalCluster
    from .stages import SpanRecorder, Stage


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
