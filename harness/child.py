"""Child process of the runner: ``python -m harness.child CELL_JSON RESULT_PATH``.

Runs one cell (see ``harness.runner.run_cell``) and writes its result as JSON to
RESULT_PATH. Exit code 0 on success; on failure the error is printed, RESULT_PATH holds
``{"error": message}`` and the code is 1.
On Ctrl-C the finished repeats are written (``interrupted`` true) and the code is 130; no
traceback, since stopping is what the user asked for. Only the first Ctrl-C counts: later
ones are ignored so that the cluster is closed cleanly (the parent kills a child that takes
longer than its grace period). With ``STAGECOST_PROGRESS_EVENTS``
set, progress goes to stderr as events for the parent (``harness.progress``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from types import FrameType


def main(argv: list[str]) -> int:
    from harness.exit_codes import ExitCode
    from harness.progress import JsonEvents
    from harness.runner import EVENTS_ENV, Cell, run_cell

    if len(argv) != 2:
        print("usage: python -m harness.child CELL_JSON RESULT_PATH", file=sys.stderr)
        return 2
    cell = Cell.from_json(argv[0])
    events = JsonEvents(sys.stderr) if os.environ.get(EVENTS_ENV) else None

    def interrupted(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if events is not None:
            events.interrupted()
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, interrupted)
    try:
        result = run_cell(cell, events=events)
    except KeyboardInterrupt:  # before the first run or while closing: nothing to keep
        return ExitCode.INTERRUPTED
    except Exception as e:
        traceback.print_exc()
        print(f"error: {cell.label()} failed (see above)", file=sys.stderr)
        with open(argv[1], "w") as f:  # the parent puts the message in the report
            json.dump({"error": f"{type(e).__name__}: {e}"}, f)
        return 1
    with open(argv[1], "w") as f:
        json.dump(result, f)
    return ExitCode.INTERRUPTED if result.get("interrupted") else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # a second Ctrl-C while writing: leave quietly
        sys.exit(130)
