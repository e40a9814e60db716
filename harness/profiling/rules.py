"""The format of a stage map: ordered rules that send a stack frame to a ``Stage``.

A stage map is data. ``attribution.attribute`` walks each sampled stack from the leaf (the
code running) towards the root and gives the sample to the stage of the FIRST frame that some
rule matches; for that frame, the first matching rule in map order wins. Before that, the
sample is checked against the map's idle and import patterns.

Two tiers: rules marked ``fallback=True`` are only tried, in a second leaf-to-root walk, when
no other rule matches any frame of the stack. Broad module catch-alls ("anything in
``scheduler/graph/`` is generate", "asyncio writes on the scheduler are dispatch") are
fallbacks, so that a specific function further up the stack (``SchedulerServer._on_graph``,
``_task_to_msg``) decides first: the nearest stage-defining caller wins over a helper module.

A ``Rule`` matches a frame when every field it sets matches (unset fields match anything):

``module``    globs on the frame's file path, matched on path components from the right:
              ``"distributed/scheduler.py"`` matches ``.../site-packages/distributed/scheduler.py``
              and py-spy's shortened ``distributed/scheduler.py``; ``"scheduler/wire/compact*"``
              any file whose last three components match. A glob ending in ``/`` matches every
              file below such a directory, anywhere in the path: ``"dask/array/"``. A bare name
              (``"threading.py"``) matches the file name. ``*`` stays within one component.
``function``  globs on the function name as py-spy gives it (qualified, ``Class.method``); a
              glob matches if it matches the qualified name or the part after its last dot, so
              ``"update_graph"`` matches ``Scheduler.update_graph`` and ``"Scheduler.*"`` only
              methods of ``Scheduler``.
``roles``     the process roles the rule applies to. A role matches its family: ``"worker"``
              matches roles ``worker`` and ``worker-3``. Unset: every role, including ``""``
              (role unknown, e.g. everything in one process).
``within``    function globs of which at least one must match this frame or a frame ROOTWARD
              of it (a caller), e.g. serialisation code counts as ``update_graph`` only when
              called from ``update_graph``.

Each field takes a string or a tuple of strings (any of them). A rule must set ``module`` or
``function``.

Besides rules, a map has two lists of ``FramePattern`` (``module``/``function`` in the same
sense, plus ``native``) for samples that are no stage's work:

``idle``      checked on the leaf frame (for ``--native`` profiles: on the native frames from
              the leaf up to and including the first Python frame): the thread is waiting.
``imports``   checked on every frame: the sample was taken while a module was being imported
              (module-level code of ``dask/array/...`` would otherwise look like ``generate``).

A native-only pattern (``native=True``: C symbols such as ``epoll_wait``) never matches a
Python frame, so a Python function that happens to be called ``select`` is not taken for a
wait.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from scheduler.stages import Stage

__all__ = ["FunctionGlobs", "FramePattern", "ModuleGlob", "Rule", "StageMap", "role_matches",
           "split_path"]

Globs = str | tuple[str, ...]


def _as_tuple(value: Globs, what: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(f"stage map: {what} patterns must be non-empty strings, got "
                             f"{item!r} (a bug in the stage map)")
    return items


@dataclass(frozen=True, slots=True)
class Rule:
    """Frames matching ``module``/``function``/``roles``/``within`` count as ``stage``."""

    stage: Stage
    module: Globs = ()
    function: Globs = ()
    roles: Globs = ()
    within: Globs = ()
    fallback: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.stage, Stage):
            raise TypeError(f"stage map rule: stage must be a Stage, got {self.stage!r}")
        for name in ("module", "function", "roles", "within"):
            object.__setattr__(self, name, _as_tuple(getattr(self, name), name))
        if not self.module and not self.function:
            raise ValueError(f"stage map rule for {self.stage.name} sets neither module nor "
                             "function, so it would match every frame (a bug in the map)")


@dataclass(frozen=True, slots=True)
class FramePattern:
    """A frame that marks a sample as no stage's work (see ``StageMap.idle``/``imports``)."""

    module: Globs = ()
    function: Globs = ()
    native: bool = False

    def __post_init__(self) -> None:
        for name in ("module", "function"):
            object.__setattr__(self, name, _as_tuple(getattr(self, name), name))
        if not self.module and not self.function:
            raise ValueError("frame pattern sets neither module nor function (a bug in the map)")


@dataclass(frozen=True, slots=True)
class StageMap:
    """A named, ordered set of rules, idle and import patterns, and notes on functions that do
    the work of several stages (``merged``: ``"file:function" -> explanation``)."""

    name: str
    rules: tuple[Rule, ...]
    idle: tuple[FramePattern, ...] = ()
    imports: tuple[FramePattern, ...] = ()
    merged: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for name in ("rules", "idle", "imports"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "merged", MappingProxyType(dict(self.merged)))

    def with_rules(self, *rules: Rule, name: str | None = None) -> StageMap:
        """A copy with ``rules`` placed BEFORE the existing ones (so they take precedence)."""
        return StageMap(name or self.name, rules + self.rules, self.idle, self.imports,
                        self.merged)

    def rules_for(self, role: str) -> tuple[Rule, ...]:
        """The rules that can apply to a process of ``role``, in order."""
        return tuple(r for r in self.rules if role_matches(r.roles, role))


def role_matches(families: Globs, role: str) -> bool:
    """True if ``families`` is empty, or ``role`` is one of them or ``family-<anything>``."""
    fams = (families,) if isinstance(families, str) else families
    return not fams or any(role == f or role.startswith(f + "-") for f in fams)


def split_path(file: str) -> tuple[str, ...]:
    """A file path as its non-empty components (``/`` or ``\\`` separated)."""
    return tuple(p for p in file.replace("\\", "/").split("/") if p)


class ModuleGlob:
    """A compiled ``module`` glob (see the module docstring)."""

    __slots__ = ("text", "_parts", "_directory")

    def __init__(self, text: str) -> None:
        parts = split_path(text)
        if not parts:
            raise ValueError(f"stage map: module pattern {text!r} has no path component")
        self.text = text
        self._directory = text.endswith("/")
        self._parts: tuple[Callable[[str], object], ...] = tuple(
            re.compile(fnmatch.translate(p)).match for p in parts)

    def matches(self, path: tuple[str, ...]) -> bool:
        pats = self._parts
        k = len(pats)
        if self._directory:
            dirs = path[:-1]
            return any(all(m(dirs[i + j]) for j, m in enumerate(pats))
                       for i in range(len(dirs) - k + 1))
        return len(path) >= k and all(m(c) for m, c in zip(pats, path[-k:], strict=True))


class FunctionGlobs:
    """Compiled ``function``/``within`` globs: any glob matching the qualified or bare name."""

    __slots__ = ("_match",)

    def __init__(self, globs: Globs) -> None:
        items = _as_tuple(globs, "function")
        self._match = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in items)).match

    def matches(self, name: str) -> bool:
        if self._match(name):
            return True
        bare = name.rpartition(".")[2]
        return bare != name and self._match(bare) is not None
