"""Clocks shared between processes, and the offset between hosts.

Rule: spans use ``time.perf_counter_ns`` (CLOCK_MONOTONIC on Linux). Processes that booted
from the same kernel share it exactly, so their offset is 0; otherwise the offset is
estimated at connect time from one round trip, NTP-style: the peer sends ``t0``, the other
side answers with its ``t1``, the peer reads it at ``t2``; ``offset = t1 - (t0 + t2) / 2``
(error at most half the round trip).
"""

from __future__ import annotations

import socket
import time
from functools import cache

__all__ = ["clock_identity", "estimate_offset", "now_ns"]

now_ns = time.perf_counter_ns


@cache
def clock_identity() -> str:
    """A string equal for processes that share a monotonic clock (same host, same boot)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "unknown-boot"
    return f"{socket.gethostname()}/{boot}"


def estimate_offset(t0: int, t1: int, t2: int, peer_identity: str) -> int:
    """Nanoseconds to add to our clock to get the peer's (0 when the clock is shared)."""
    if peer_identity == clock_identity():
        return 0
    return int(t1 - (t0 + t2) / 2)
