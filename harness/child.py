"""Child process of the runner: ``python -m harness.child CELL_JSON RESULT_PATH``.

Runs one cell (see ``harness.runner.run_cell``) and writes its result as JSON to
RESULT_PATH. Exit code 0 on success; on failure the error is printed, RESULT_PATH holds
``{"error": message}`` and the code is 1.
"""

from __future__ import annotations

import json
import sys
import traceback


def main(argv: list[str]) -> int:
    from harness.runner import Cell, run_cell

    if len(argv) != 2:
        print("usage: python -m harness.child CELL_JSON RESULT_PATH", file=sys.stderr)
        return 2
    cell = Cell.from_json(argv[0])
    try:
        result = run_cell(cell)
    except Exception as e:
        traceback.print_exc()
        print(f"error: {cell.label()} failed (see above)", file=sys.stderr)
        with open(argv[1], "w") as f:  # the parent puts the message in the report
            json.dump({"error": f"{type(e).__name__}: {e}"}, f)
        return 1
    with open(argv[1], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
