"""How a command line names a run: a run folder, or a stored run.

Syntax (``report`` and ``compare`` take either):

- ``PATH`` — a run folder;
- ``@ID`` — stored run number ID (``stagecost history`` lists them);
- ``@last`` — the latest stored run; ``@last~K`` the K-th before it (``@last~1``: the one
  before the latest);
- ``@NAME`` — the stored run whose folder was called NAME (the latest, if several).

Anything not starting with ``@`` is a path. A reference the store cannot resolve is the
caller's mistake: ``UsageError``, naming the store and how to list what it holds.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.exit_codes import UsageError
from harness.report.schema import Run, read_run
from harness.store.db import ResultsStore

__all__ = ["is_store_ref", "load_runs", "resolve"]

_LAST = re.compile(r"last(?:~(\d+))?")


def is_store_ref(text: str) -> bool:
    return text.startswith("@")


def resolve(store: ResultsStore, ref: str) -> int:
    """The id of the stored run ``ref`` names (``@ID``, ``@last``, ``@last~K``, ``@NAME``)."""
    body = ref[1:] if ref.startswith("@") else ref
    hint = f"`stagecost history --store {store.path}` lists the stored runs"
    if body.isdigit():
        run_id = int(body)
        if run_id not in {r.id for r in store.runs()}:
            raise UsageError(f"{ref}: the store {store.path} has no run {run_id}; {hint}")
        return run_id
    m = _LAST.fullmatch(body)
    if m:
        back = int(m.group(1) or 0)
        runs = store.runs()
        if back >= len(runs):
            raise UsageError(f"{ref}: the store {store.path} holds {len(runs)} run(s); {hint}")
        return runs[-1 - back].id
    named = store.by_name(body)
    if not named:
        raise UsageError(f"{ref}: no stored run is called {body!r}; {hint}")
    return named[-1].id


def load_runs(refs: list[str], store_path: Path) -> list[Run]:
    """The runs named by ``refs`` (folders and stored runs, in order)."""
    out: list[Run] = []
    store: ResultsStore | None = None
    try:
        for ref in refs:
            if is_store_ref(ref):
                if store is None:
                    store = ResultsStore(store_path, create=False)
                out.append(store.load_run(resolve(store, ref)))
            else:
                out.append(read_run(Path(ref)))
    finally:
        if store is not None:
            store.close()
    return out
