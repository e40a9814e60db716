"""The low-level task graph, stored by columns.

A ``TaskGraph`` is a list of ``TaskGroup``s. Task ids are integers: group ``g`` holds ids
``offsets[g] .. offsets[g] + len(group) - 1``. Ids ``n .. n + len(external) - 1`` stand for
``external`` keys: results the cluster already holds, which this graph uses but does not define.

A group is either

- *regular*: every task runs one ``template`` spec (with ``DepSlot``/``DepList``/``IndexSlot``
  placeholders) on its own dependencies and block index; or
- *explicit*: each task has its own spec (``specs[i]``, with ``DepSlot`` placeholders).

Dependencies are CSR arrays per group: task ``i``'s dependencies are the global ids
``indices[indptr[i]:indptr[i+1]]``, in the order its spec's ``DepSlot``s number them.

Rules (checked by ``validate``):

- keys are distinct across the whole graph;
- every dependency id is in ``0 .. n + len(external) - 1``;
- a regular group depends only on earlier groups or external keys, so groups are in
  topological order and regular groups need no cycle check; an explicit group may also depend
  on its own tasks, and is checked for cycles.

Building a graph costs O(groups) Python work plus numpy work on the arrays for regular
groups; only explicit groups do per-task Python work.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import CycleError, DuplicateKeyError, MissingDependencyError, UnknownKeyError
from .keys import ExplicitKeys, Key, KeyBlock, RegularKeys, check_key, key_name
from .task import compile_spec, map_placeholders, refs_to_slots

__all__ = ["DEEP", "TaskGraph", "TaskGroup", "by_level"]

DEEP = 32
"""Explicit groups deeper than this many levels are ordered task by task, not by numpy."""


def by_level(level: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """``(ids, bounds)``: positions sorted by level, then by position; level ``L``'s are
    ``ids[bounds[L]:bounds[L + 1]]``. One pass per level up to ``DEEP`` levels, else a
    stable sort."""
    depth = int(level.max()) + 1 if len(level) else 0
    bounds = np.zeros(depth + 1, dtype=np.int64)
    np.cumsum(np.bincount(level, minlength=depth), out=bounds[1:])
    if depth <= DEEP:
        ids = np.concatenate([np.flatnonzero(level == lv) for lv in range(depth)]
                             or [np.zeros(0, dtype=np.int64)])
    else:
        ids = np.argsort(level, kind="stable")
    return ids, bounds.tolist()

_EMPTY = np.zeros(0, dtype=np.int64)


class TaskGroup:
    """Tasks sharing a key block, stored as a template or per-task specs plus CSR deps."""

    __slots__ = ("keys", "template", "specs", "indptr", "indices")

    def __init__(self, keys: KeyBlock, *, indptr: np.ndarray, indices: np.ndarray,
                 template: Any = None, specs: list[Any] | None = None) -> None:
        n = len(keys)
        if (specs is None) == (template is None):
            raise ValueError("a task group has either one template or a list of specs")
        if specs is not None and len(specs) != n:
            raise ValueError(f"{len(specs)} specs for {n} keys")
        indptr = np.asarray(indptr, dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        if indptr.shape != (n + 1,) or (n + 1 and (indptr[0] != 0 or indptr[-1] != len(indices))):
            raise ValueError(f"indptr must have {n + 1} entries from 0 to len(indices)")
        self.keys = keys
        self.template = template
        self.specs = specs
        self.indptr = indptr
        self.indices = indices

    @classmethod
    def uniform(cls, keys: KeyBlock, template: Any, deps: np.ndarray) -> TaskGroup:
        """A regular group whose task ``i`` depends on ``deps[i, :]`` (a 2-D id array)."""
        deps = np.asarray(deps, dtype=np.int64)
        n = len(keys)
        if deps.ndim == 1:
            deps = deps.reshape(n, -1) if n else deps.reshape(0, 0)
        k = deps.shape[1] if deps.ndim == 2 else 0
        return cls(keys, template=template, indptr=np.arange(0, n * k + 1, k or 1)[: n + 1]
                   if k else np.zeros(n + 1, dtype=np.int64), indices=deps.reshape(-1))

    @property
    def regular(self) -> bool:
        return self.specs is None

    def __len__(self) -> int:
        return len(self.keys)

    def spec(self, i: int) -> Any:
        return self.template if self.specs is None else self.specs[i]

    def block_index(self, i: int) -> tuple:
        keys = self.keys
        return keys.index(i) if isinstance(keys, RegularKeys) else ()

    def deps(self, i: int) -> np.ndarray:
        return self.indices[self.indptr[i]:self.indptr[i + 1]]

    def __repr__(self) -> str:
        kind = "regular" if self.regular else "explicit"
        return f"TaskGroup({self.keys!r}, {kind}, {len(self.indices)} edges)"


class TaskGraph:
    """Groups of tasks with integer ids; see the module docstring for the rules."""

    __slots__ = ("groups", "offsets", "n", "external", "by_name", "_ext_pos")

    def __init__(self, groups: Sequence[TaskGroup], external: Sequence[Key] = (),
                 *, validate: bool = True) -> None:
        self.groups = list(groups)
        sizes = np.fromiter((len(g) for g in self.groups), dtype=np.int64,
                            count=len(self.groups))
        self.offsets = np.zeros(len(self.groups) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.offsets[1:])
        self.n = int(self.offsets[-1])
        self.external = [check_key(k) for k in external]
        self._ext_pos = {k: i for i, k in enumerate(self.external)}
        if len(self._ext_pos) != len(self.external):
            counts: dict[Key, int] = {}
            for k in self.external:
                counts[k] = counts.get(k, 0) + 1
            raise DuplicateKeyError([k for k, c in counts.items() if c > 1])
        # key name -> indices of the groups holding keys of that name (read, never changed,
        # by the scheduler's index of live graphs)
        self.by_name: dict[Hashable, list[int]] = {}
        for gi, g in enumerate(self.groups):
            for name in g.keys.names():
                self.by_name.setdefault(name, []).append(gi)
        if validate:
            self.validate()

    # --- look-ups ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.n

    def id_of(self, key: object) -> int:
        """The id of ``key`` (external ids included), or -1."""
        try:
            gis = self.by_name.get(key_name(key), ())  # type: ignore[arg-type]
            j = self._ext_pos.get(key, -1)  # type: ignore[call-overload]
        except TypeError:  # unhashable: cannot be a key
            return -1
        for gi in gis:
            p = self.groups[gi].keys.position(key)
            if p >= 0:
                return int(self.offsets[gi]) + p
        return self.n + j if j >= 0 else -1

    def ids_of(self, keys: Iterable[object]) -> np.ndarray:
        """Ids of ``keys``; raises ``UnknownKeyError`` naming every key not in the graph.

        Keys that all come from one regular block are mapped with numpy."""
        keys = list(keys)
        ids = self._ids_one_block(keys)
        if ids is None:
            ids = np.asarray([self.id_of(k) for k in keys], dtype=np.int64)
        if len(ids) and ids.min() < 0:
            raise UnknownKeyError([k for k, i in zip(keys, ids.tolist(), strict=True) if i < 0])
        return ids

    def _ids_one_block(self, keys: list) -> np.ndarray | None:
        first = keys[0] if keys else None
        if type(first) is not tuple or not first or not isinstance(first[0], str):
            return None
        for gi in self.by_name.get(first[0], ()):
            block = self.groups[gi].keys
            if isinstance(block, RegularKeys) and len(block.shape) == len(first) - 1:
                pos = block.positions(keys)
                if pos is None:
                    return None
                ids = np.where(pos >= 0, pos + int(self.offsets[gi]), -1)
                for j in np.flatnonzero(ids < 0).tolist():  # may be defined elsewhere
                    ids[j] = self.id_of(keys[j])
                return ids
        return None

    def group_of(self, tid: int) -> tuple[int, int]:
        """(group index, position in group) of a task id."""
        if not 0 <= tid < self.n:
            raise IndexError(f"task id {tid} outside 0..{self.n - 1}")
        gi = int(np.searchsorted(self.offsets, tid, side="right")) - 1
        return gi, tid - int(self.offsets[gi])

    def key_of(self, tid: int) -> Key:
        if tid >= self.n:
            return self.external[tid - self.n]
        gi, i = self.group_of(tid)
        return self.groups[gi].keys.key(i)

    def keys(self) -> list[Key]:
        out: list[Key] = []
        for g in self.groups:
            out.extend(g.keys.tolist())
        return out

    def dependencies(self) -> tuple[np.ndarray, np.ndarray]:
        """Global CSR ``(indptr, indices)`` over all ``n`` tasks."""
        if not self.groups:
            return np.zeros(1, dtype=np.int64), _EMPTY
        ptrs = [np.zeros(1, dtype=np.int64)]
        base = 0
        for g in self.groups:
            ptrs.append(g.indptr[1:] + base)
            base += len(g.indices)
        return np.concatenate(ptrs), np.concatenate([g.indices for g in self.groups])

    @property
    def n_edges(self) -> int:
        return sum(len(g.indices) for g in self.groups)

    # --- validation ----------------------------------------------------------------------

    def validate(self) -> None:
        """Check the rules of the module docstring; raise a ``GraphError`` naming keys."""
        self._check_duplicates()
        limit = self.n + len(self.external)
        for gi, g in enumerate(self.groups):
            if not len(g.indices):
                continue
            lo, hi = int(g.indices.min()), int(g.indices.max())
            if lo < 0 or hi >= limit:
                raise ValueError(f"group {gi} ({g.keys!r}) has dependency ids outside "
                                 f"0..{limit - 1}: a bug in the code that built this graph")
            start = int(self.offsets[gi])
            if g.regular:
                inside = (g.indices >= start) & (g.indices < self.n)
                if inside.any():
                    raise ValueError(f"regular group {gi} ({g.keys!r}) depends on tasks of "
                                     f"its own or a later group: groups are out of "
                                     f"topological order (a bug in lowering)")
            else:
                later = (g.indices >= int(self.offsets[gi + 1])) & (g.indices < self.n)
                if later.any():
                    raise ValueError(f"explicit group {gi} depends on a later group "
                                     f"(a bug in the code that built this graph)")
                self.explicit_order(gi)  # raises CycleError

    def _check_duplicates(self) -> None:
        for gis in self.by_name.values():
            if len(gis) < 2:
                continue
            blocks = [self.groups[gi].keys for gi in gis]
            regular = [b for b in blocks if isinstance(b, RegularKeys) and len(b)]
            ndims = [len(b.shape) for b in regular]
            if len(ndims) != len(set(ndims)):
                b = next(b for b in regular if ndims.count(len(b.shape)) > 1)
                raise DuplicateKeyError([b.key(0)])
            dups: list[Key] = []
            for i, blk in enumerate(blocks):
                if isinstance(blk, ExplicitKeys):
                    for k in blk.keys:
                        if any(o.position(k) >= 0 for j, o in enumerate(blocks) if j != i):
                            dups.append(k)
            if dups:
                raise DuplicateKeyError(dups)
        both = [k for k in self.external if any(
            self.groups[gi].keys.position(k) >= 0
            for gi in self.by_name.get(key_name(k), ()))]
        if both:
            raise DuplicateKeyError(both)

    def explicit_order(self, gi: int) -> list[int]:
        """Positions of explicit group ``gi`` in an order that runs dependencies first: by
        level (``explicit_levels``), then by position."""
        return by_level(self.explicit_levels(gi))[0].tolist()

    def explicit_levels(self, gi: int) -> np.ndarray:
        """The level of each task of explicit group ``gi``: 0 for a task with no dependency
        in the group, else one more than the highest level among its dependencies in the
        group (the longest path to it). Raises ``CycleError`` naming a cycle.

        Cost: one pass of numpy over the group's edges per level (each task takes the
        highest level of its dependencies plus one, until nothing changes); a group deeper
        than ``DEEP`` levels (a long chain, or a cycle) is walked task by task instead.
        """
        g = self.groups[gi]
        start, n = int(self.offsets[gi]), len(g)
        local = g.indices - start
        internal = (local >= 0) & (local < n)
        level = np.zeros(n, dtype=np.int64)
        if not internal.any():
            return level
        owner = np.repeat(np.arange(n, dtype=np.int64), np.diff(g.indptr))
        src, dst = local[internal], owner[internal]   # edge: dst depends on src
        # dst is non-decreasing (edges come task by task): one segment per dependent task
        heads = np.flatnonzero(np.r_[True, dst[1:] != dst[:-1]])
        tasks = dst[heads]
        for _ in range(min(DEEP, n + 1)):  # a level above n - 1 means a cycle
            up = np.maximum.reduceat(level[src], heads) + 1
            now = level[tasks]
            if (up <= now).all():
                return level
            level[tasks] = np.maximum(now, up)
        return self._levels_walk(gi, src, dst)

    def _levels_walk(self, gi: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """``explicit_levels`` task by task (Kahn's walk), for deep groups."""
        n = len(self.groups[gi])
        wait = np.bincount(dst, minlength=n).tolist()
        deps = dst[np.argsort(src, kind="stable")].tolist()
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(src, minlength=n), out=ptr[1:])
        ptr = ptr.tolist()
        level = [0] * n
        ready = [i for i in range(n) if wait[i] == 0]
        done = 0
        while ready:
            i = ready.pop()
            done += 1
            up = level[i] + 1
            for j in deps[ptr[i]:ptr[i + 1]]:
                if level[j] < up:
                    level[j] = up
                wait[j] -= 1
                if wait[j] == 0:
                    ready.append(j)
        if done != n:
            raise CycleError(self._find_cycle(gi, [i for i in range(n) if wait[i] > 0]))
        return np.asarray(level, dtype=np.int64)

    def _find_cycle(self, gi: int, stuck: list[int]) -> list[Key]:
        g = self.groups[gi]
        start, n = int(self.offsets[gi]), len(g)
        stuck_set = set(stuck)
        # Every stuck task has a stuck dependency; walking them must revisit a task.
        path: list[int] = []
        seen: dict[int, int] = {}
        i = stuck[0]
        while i not in seen:
            seen[i] = len(path)
            path.append(i)
            nxt = [int(d) - start for d in g.deps(i)]
            i = next(d for d in nxt if 0 <= d < n and d in stuck_set)
        cycle = path[seen[i]:] + [i]
        return [g.keys.key(j) for j in cycle]

    # --- conversion ----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, dsk: Mapping[Any, Any], external: Iterable[Key] = ()) -> TaskGraph:
        """A graph of one explicit group from ``{key: spec}`` where specs use ``Ref(key)``.

        A ``Ref`` to a key neither in ``dsk`` nor in ``external`` raises
        ``MissingDependencyError`` naming it and a task that needs it.
        """
        keys = ExplicitKeys(list(dsk))
        ext = list(external)
        ext_pos = {k: i for i, k in enumerate(ext)}
        n = len(keys)
        specs: list[Any] = []
        ptr = [0]
        idx: list[int] = []
        missing: dict[Any, Any] = {}
        pos = keys.positions
        for key, value in dsk.items():
            spec, deps = refs_to_slots(value)
            specs.append(spec)
            for d in deps:
                p = pos.get(d)
                if p is None:
                    e = ext_pos.get(d)
                    if e is None:
                        missing.setdefault(d, key)
                        continue
                    p = n + e
                idx.append(p)
            ptr.append(len(idx))
        if missing:
            raise MissingDependencyError(missing)
        group = TaskGroup(keys, specs=specs, indptr=np.asarray(ptr, dtype=np.int64),
                          indices=np.asarray(idx, dtype=np.int64))
        return cls([group], external=ext)

    def spec_with_refs(self, tid: int) -> Any:
        """Task ``tid``'s spec with ``DepSlot``/``DepList``/``IndexSlot`` resolved to ``Ref``s
        and index values (for display, comparison and tests; costs a walk per task)."""
        from .task import DepList, DepSlot, IndexSlot, Ref

        gi, i = self.group_of(tid)
        g = self.groups[gi]
        deps = [Ref(self.key_of(int(d))) for d in g.deps(i)]
        index = g.block_index(i)

        def fn(p: Any) -> Any:
            if type(p) is DepSlot:
                return deps[p.i]
            if type(p) is DepList:
                return list(deps[p.start:p.stop])
            if type(p) is IndexSlot:
                return index[p.axis]
            return p

        return map_placeholders(g.spec(i), fn)

    def to_dict(self) -> dict[Key, Any]:
        """``{key: spec with Ref}`` for every task; per-task work, meant for small graphs."""
        out: dict[Key, Any] = {}
        tid = 0
        for g in self.groups:
            for i in range(len(g)):
                out[g.keys.key(i)] = self.spec_with_refs(tid)
                tid += 1
        return out

    def edges(self) -> set[tuple[Key, Key]]:
        """``{(dependency key, dependent key)}``, for comparing structures in tests."""
        indptr, indices = self.dependencies()
        owners = np.repeat(np.arange(self.n), np.diff(indptr))
        keys = self.keys() + self.external
        return {(keys[int(d)], keys[int(o)]) for d, o in zip(indices, owners, strict=True)}

    # --- reference execution -------------------------------------------------------------

    def execute(self, keys: Iterable[Key] | None = None,
                external_values: Mapping[Key, Any] | None = None) -> dict[Key, Any]:
        """Run every task in this process, in order; return ``{key: value}`` for ``keys``
        (all keys if ``None``). The reference that other executors are tested against."""
        wanted = self.keys() if keys is None else list(keys)
        ids = self.ids_of(wanted)
        values: list[Any] = [None] * (self.n + len(self.external))
        ext = external_values or {}
        for j, k in enumerate(self.external):
            if k not in ext:
                raise MissingDependencyError({k: "(no value given for this external key)"})
            values[self.n + j] = ext[k]
        for gi, g in enumerate(self.groups):
            start = int(self.offsets[gi])
            ptr = g.indptr.tolist()
            ind = g.indices.tolist()
            if g.regular:
                run = compile_spec(g.template)
                for i in range(len(g)):
                    deps = [values[d] for d in ind[ptr[i]:ptr[i + 1]]]
                    values[start + i] = run(deps, g.block_index(i))
            else:
                for i in self.explicit_order(gi):
                    deps = [values[d] for d in ind[ptr[i]:ptr[i + 1]]]
                    values[start + i] = compile_spec(g.specs[i])(deps, ())  # type: ignore[index]
        return {k: values[int(t)] for k, t in zip(wanted, ids, strict=True)}

    def __repr__(self) -> str:
        return (f"TaskGraph({self.n} tasks in {len(self.groups)} groups, {self.n_edges} edges"
                f", {len(self.external)} external)")
