"""Errors about graphs. Each says whose fault it is and names the keys involved (as
``keys.key_repr`` shows them: their repr, bounded in length).

All of them are ``GraphError`` (a ``ValueError``): the graph given by the caller is wrong, not
the scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence

from .keys import key_repr

__all__ = ["CycleError", "DuplicateKeyError", "GraphError", "MissingDependencyError",
           "UnknownKeyError"]


def _show(keys: Sequence[object], limit: int = 5) -> str:
    shown = ", ".join(key_repr(k) for k in list(keys)[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return shown + more


class GraphError(ValueError):
    """The graph submitted is invalid (caller's input)."""


class CycleError(GraphError):
    def __init__(self, cycle: Sequence[object]) -> None:
        self.cycle = list(cycle)
        path = " -> ".join(key_repr(k) for k in self.cycle[:8])
        more = " -> ..." if len(self.cycle) > 8 else ""
        super().__init__(f"the graph has a cycle: {path}{more}; a task cannot depend on "
                         f"its own result")


class MissingDependencyError(GraphError):
    def __init__(self, missing: dict[object, object]) -> None:
        # missing: dependency key -> one key of a task that needs it
        self.missing = missing
        pairs = [f"{key_repr(dep)} (needed by {key_repr(needer)})" for dep, needer in list(missing.items())[:5]]
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        super().__init__(f"the graph refers to keys that are neither in it nor held by the "
                         f"cluster: {', '.join(pairs)}{more}")


class UnknownKeyError(GraphError, KeyError):
    def __init__(self, keys: Sequence[object], where: str = "the graph") -> None:
        self.keys = list(keys)
        super().__init__(f"unknown key(s) requested, not in {where}: {_show(self.keys)}")

    def __str__(self) -> str:  # KeyError would print the repr of args
        return str(self.args[0])


class DuplicateKeyError(GraphError):
    def __init__(self, keys: Sequence[object]) -> None:
        self.keys = list(keys)
        super().__init__(f"key(s) defined twice with different tasks: {_show(self.keys)}")
