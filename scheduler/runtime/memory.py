"""Peak resident memory of this process, per run, measured cheaply.

Rules: one read of the kernel's high-water mark at the end of a run, never per task. On Linux
the peak (``VmHWM`` in ``/proc/self/status``) can be reset to the current resident size by
writing ``5`` to ``/proc/self/clear_refs``, so a long-lived process (a cluster's scheduler and
workers serve many runs) reports the peak of each run, not of its whole life. Elsewhere, or
when the reset is refused, the figure is ``getrusage``'s lifetime peak (``ru_maxrss``), which
is still an upper bound of the run's peak.
"""

from __future__ import annotations

import resource
import sys

__all__ = ["peak_rss"]

_STATUS = "/proc/self/status"
_CLEAR = "/proc/self/clear_refs"


def _high_water_mark() -> int | None:
    try:
        with open(_STATUS, "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss(reset: bool = False) -> int:
    """Bytes: the peak resident size of this process since the last reset (or since it
    started). ``reset`` starts a new period afterwards, where the system allows it."""
    peak = _high_water_mark()
    if peak is None:
        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = usage if sys.platform == "darwin" else usage * 1024  # bytes on macOS, else kB
    if reset:
        try:
            with open(_CLEAR, "w") as f:
                f.write("5")
        except OSError:
            pass  # no reset: later figures are lifetime peaks, still upper bounds
    return peak
