"""The reference client–scheduler–worker system of stagecost.

``from scheduler import Client, LocalCluster``. Rules: this package never imports
``harness``; ``scheduler.state`` does no I/O.
"""

from .runtime.client import Client, Future
from .runtime.cluster import LocalCluster
from .stages import SpanRecorder, Stage

__all__ = ["Client", "Future", "LocalCluster", "SpanRecorder", "Stage"]
