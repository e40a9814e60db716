"""Progress of a run on stderr: a bar with the overall count and an ETA on a terminal (tqdm),
plain lines when stderr is not a terminal (a log, CI, a pipe).

Rules of this module:

- What a run says about itself is an *event*: a run started (``started``), outputs or tasks
  finished (``outputs``, ``tasks``), a run ended (``done``). ``run_cell`` tells its events to a
  sink; ``PlainEvents`` prints them as lines, ``JsonEvents`` writes them (one JSON object per
  line, after ``EVENT_PREFIX``) on a child's stderr for the parent, and ``GridProgress`` shows
  the events of every cell of a grid with the overall count.
- A child's stderr lines that are not events (a warning, a traceback) are passed through as
  they are, above the bar.
- Plain lines come at most once a second per run, besides one line when a run starts and one
  when it ends; the bar redraws at most ten times a second. Nothing here is per task.
- The ETA weighs runs by their task count: the bar counts tasks (warmups included), so a
  million-task cell weighs a hundred times a ten-thousand-task one.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

__all__ = ["EVENT_PREFIX", "CellPlan", "Events", "GridProgress", "JsonEvents", "PlainEvents"]

EVENT_PREFIX = "\x1estagecost-event "
"""Start of an event line on a child's stderr (ASCII record separator, then a tag)."""


class Events(Protocol):
    """Where a cell's runs report: ``run_cell`` calls these, the backend calls the object
    itself (outputs) and ``tasks`` while a run computes."""

    def started(self, what: str, n_tasks: int) -> None: ...
    def __call__(self, done: int, total: int) -> None: ...
    def tasks(self, done: int, total: int) -> None: ...
    def done(self, what: str, wall_s: float) -> None: ...


class PlainEvents:
    """A cell's events as lines on ``stream`` (progress at most once a second)."""

    def __init__(self, label: str, stream: TextIO,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.stream = stream
        self.clock = clock
        self.what = ""
        self.last = -math.inf
        self.outputs: tuple[int, int] | None = None
        self.finished: tuple[int, int] | None = None

    def _line(self, text: str) -> None:
        print(f"[{self.label}] {text}", file=self.stream, flush=True)

    def started(self, what: str, n_tasks: int) -> None:
        self.what, self.last, self.outputs, self.finished = what, -math.inf, None, None
        self._line(f"{what}: {n_tasks:,} tasks, submitting ...")

    def __call__(self, done: int, total: int) -> None:
        self.outputs = (done, total)
        self._show(done == total)

    def tasks(self, done: int, total: int) -> None:
        self.finished = (done, total)
        self._show(False)

    def _show(self, final: bool) -> None:
        now = self.clock()
        if now - self.last < 1.0 and not final:
            return
        self.last = now
        parts = []
        if self.finished is not None and not final:
            parts.append(f"{self.finished[0]:,}/{self.finished[1]:,} tasks finished")
        if self.outputs is not None:
            parts.append(f"{self.outputs[0]:,}/{self.outputs[1]:,} outputs in memory")
        print(f"  [{self.label}] {self.what}: {', '.join(parts)}", file=self.stream,
              flush=True)

    def done(self, what: str, wall_s: float) -> None:
        self._line(f"{what}: done in {wall_s:.2f} s")


class JsonEvents:
    """A cell's events as JSON lines on ``stream`` (a child's stderr), read by the parent's
    ``GridProgress.feed``. Progress is sent at most ten times a second."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.last = -math.inf

    def _send(self, **event: Any) -> None:
        self.stream.write(EVENT_PREFIX + json.dumps(event) + "\n")
        self.stream.flush()

    def started(self, what: str, n_tasks: int) -> None:
        self.last = -math.inf
        self._send(ev="started", what=what, n_tasks=n_tasks)

    def _progress(self, kind: str, done: int, total: int) -> None:
        now = self.clock()
        if now - self.last < 0.1 and done != total:
            return
        self.last = now
        self._send(ev=kind, done=done, total=total)

    def __call__(self, done: int, total: int) -> None:
        self._progress("outputs", done, total)

    def tasks(self, done: int, total: int) -> None:
        self._progress("tasks", done, total)

    def done(self, what: str, wall_s: float) -> None:
        self._send(ev="done", what=what, wall_s=wall_s)

    def interrupted(self) -> None:
        """Tell the parent that this child got Ctrl-C (so it need not pass it on)."""
        self._send(ev="interrupted")


@dataclass(frozen=True)
class CellPlan:
    """One cell of a grid as the progress display sees it."""

    label: str
    runs: int        # warmups + repeats
    n_tasks: int     # requested size (the real count may differ a little)


class _CellEvents:
    """Events of the cell being run, forwarded to the grid's display (in-process cells)."""

    def __init__(self, grid: GridProgress) -> None:
        self.grid = grid

    def started(self, what: str, n_tasks: int) -> None:
        self.grid._started(what, n_tasks)

    def __call__(self, done: int, total: int) -> None:
        self.grid._fraction("outputs", done, total)

    def tasks(self, done: int, total: int) -> None:
        self.grid._fraction("tasks", done, total)

    def done(self, what: str, wall_s: float) -> None:
        self.grid._done(what, wall_s)


class GridProgress:
    """The progress of a whole grid: overall runs done / runs, and an ETA.

    ``terminal`` chooses a tqdm bar (default: whether ``stream`` is a terminal); otherwise
    plain lines, each prefixed with the overall count. Use ``cell(i)`` before running cell
    ``i``, pass ``events()`` to an in-process ``run_cell`` or ``feed`` a child's stderr lines,
    then ``cell_ended``; ``close`` at the end (also after an error).
    """

    def __init__(self, plans: Sequence[CellPlan], stream: TextIO | None = None,
                 terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.plans = list(plans)
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.clock = clock
        self.total_runs = sum(p.runs for p in self.plans)
        self.total_units = sum(p.runs * p.n_tasks for p in self.plans)
        self.runs_done = 0
        self.units_done = 0          # tasks of finished runs (and of abandoned cells)
        self.index = -1
        self.run_units = 0           # size of the run under way
        self.runs_of_cell = 0
        self.started_at = clock()
        self.last_refresh = -math.inf
        self.plain: PlainEvents | None = None
        self.child_interrupted = threading.Event()
        self.hidden = 0              # child lines not shown after Ctrl-C
        self.quiet = False
        self.bar: Any = None
        if self.terminal:
            import shutil

            from tqdm import tqdm

            # A terminal that reports no size (0×0, as a bare pty or `script` may) gets a
            # usable one: tqdm draws nothing at all when it reads 0 rows.
            size = shutil.get_terminal_size((100, 24))
            self.bar = tqdm(total=self.total_units, file=self.stream, unit=" tasks",
                            unit_scale=True, ncols=size.columns or 100,
                            nrows=size.lines or 24, mininterval=0.1,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| "
                                       "[{elapsed}<{remaining}]{postfix}")
            self._describe("")

    # --- the grid's side ---------------------------------------------------------------------

    def cell(self, index: int) -> None:
        self.index = index
        self.runs_of_cell = 0
        plan = self.plans[index]
        self.plain = None if self.terminal else PlainEvents(self._prefix(plan), self.stream,
                                                            self.clock)

    def events(self) -> Events:
        return _CellEvents(self)

    def feed(self, line: str) -> None:
        """A line of a child's stderr: an event is shown, anything else printed as is."""
        if line.startswith(EVENT_PREFIX):
            try:
                ev = json.loads(line[len(EVENT_PREFIX):])
            except json.JSONDecodeError:
                ev = None
            if isinstance(ev, dict):
                kind = ev.get("ev")
                if kind == "started":
                    self._started(str(ev["what"]), int(ev["n_tasks"]))
                elif kind in ("outputs", "tasks"):
                    self._fraction(kind, int(ev["done"]), int(ev["total"]))
                elif kind == "done":
                    self._done(str(ev["what"]), float(ev["wall_s"]))
                elif kind == "interrupted":
                    self.child_interrupted.set()
                    self.hush()
                return
        if self.quiet:
            self.hidden += 1
            return
        self.write(line.rstrip("\n"))

    def hush(self) -> None:
        """After Ctrl-C: what children print while they shut down (Dask's cancelled tasks,
        tracebacks of interrupted worker processes) is counted, not shown."""
        self.quiet = True

    def write(self, text: str) -> None:
        """A message above the bar (or a plain line)."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def cell_ended(self) -> None:
        """The cell finished or was abandoned: its runs not done count as done."""
        plan = self.plans[self.index]
        left = plan.runs - self.runs_of_cell
        self.runs_done += left
        self.units_done += left * plan.n_tasks
        self.runs_of_cell = plan.runs
        self._update(0.0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.hidden:
            print(f"({self.hidden:,} lines the interrupted processes printed while stopping "
                  "are not shown)", file=self.stream, flush=True)
            self.hidden = 0

    # --- events of the cell under way --------------------------------------------------------

    def _prefix(self, plan: CellPlan) -> str:
        return f"run {min(self.runs_done + 1, self.total_runs)}/{self.total_runs} · {plan.label}"

    def _eta(self) -> str:
        spent = self.clock() - self.started_at
        if self.units_done <= 0 or spent <= 0:
            return ""
        left = (self.total_units - self.units_done) * spent / self.units_done
        return f" · ETA {_clock_text(left)}"

    def _describe(self, what: str) -> None:
        if self.bar is None:
            return
        label = self.plans[self.index].label if 0 <= self.index < len(self.plans) else ""
        self.bar.set_description_str(f"run {min(self.runs_done + 1, self.total_runs)}/"
                                     f"{self.total_runs}", refresh=False)
        self.bar.set_postfix_str(f"{label} {what}".strip(), refresh=False)

    def _started(self, what: str, n_tasks: int) -> None:
        self.run_units = self.plans[self.index].n_tasks
        if self.plain is not None:
            self.plain.label = self._prefix(self.plans[self.index])
            self.plain.started(what, n_tasks)
        self._describe(what)
        self._update(0.0)

    def _fraction(self, kind: str, done: int, total: int) -> None:
        if self.plain is not None:
            (self.plain if kind == "outputs" else self.plain.tasks)(done, total)
        self._update(done / total if total else 0.0)

    def _done(self, what: str, wall_s: float) -> None:
        self.runs_done += 1
        self.runs_of_cell += 1
        self.units_done += self.run_units
        if self.plain is not None:
            self.plain.done(what, wall_s)
            if self.runs_done < self.total_runs:
                print(f"  {self.runs_done}/{self.total_runs} runs done{self._eta()}",
                      file=self.stream, flush=True)
        self._update(0.0)

    def _update(self, fraction: float) -> None:
        if self.bar is None:
            return
        now = self.clock()
        if fraction and now - self.last_refresh < 0.1:
            return
        self.last_refresh = now
        self.bar.n = min(self.total_units,
                         self.units_done + int(min(1.0, fraction) * self.run_units))
        self.bar.refresh()


def _clock_text(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
