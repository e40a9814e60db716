"""Graph optimisations on a ``TaskGraph``: culling and linear-chain fusion, by columns.

``cull(graph, keys)`` keeps the tasks needed, transitively, to compute ``keys``.

- Groups are walked once, last to first. That order is enough because a regular group depends
  only on earlier groups, so by the time a group is reached every task that could need it has
  been marked. A regular group marks the dependencies of its needed tasks in one numpy step;
  only an explicit group with edges between its own tasks walks those edges task by task.
- Kept tasks get new ids (``cumsum`` of the keep mask); groups left empty are dropped, and so
  are external keys no longer referenced (an external key that was requested stays).
- A group kept whole keeps its key block, template or specs (shared, not copied). A regular
  group kept in part gets ``ExplicitKeys`` of the kept keys; it keeps its template unless the
  template uses ``IndexSlot`` and its keys were ``RegularKeys``: ``TaskGroup.block_index``
  knows the index only for ``RegularKeys``, so such a group becomes explicit, each kept task's
  spec having its index values filled in. That costs a few µs per kept task of such groups
  and nothing for groups kept whole (the common case: a whole output layer is requested).
- Nothing to drop: the same graph object is returned.

``fuse_linear(graph, keep)`` inlines task ``a`` into task ``b`` when

- ``a`` is listed as a dependency exactly once in the whole graph, by ``b``;
- ``b`` has exactly one dependency, ``a``, and its spec uses it exactly once (so the fused
  task computes each step once, in the same order, and waits for nothing it did not wait for
  before: fusion never costs parallelism);
- ``a`` is not in ``keep`` (the keys the caller will ask for must stay) and is not external.

The fused task keeps ``b``'s key and position; its spec is ``b``'s with ``a``'s spec in place
of ``DepSlot(0)``, and its dependencies are ``a``'s. Chains fuse end to end, up to
``max_chain`` tasks per fused task (a fused spec nests one level per link, and compiling or
running it recurses that deep; Python's recursion limit breaks chains of a few hundred).

- Groups fuse whole first: ``G2`` (regular, one dependency per task) absorbs ``G1`` (same
  length) when ``G2``'s task ``i`` depends on ``G1``'s task ``i``, nothing else depends on
  ``G1`` and no key of ``G1`` is kept. If ``G1`` is regular too, this is O(1) Python work:
  the templates are composed (``G1``'s ``IndexSlot``s stay valid only when both key blocks are
  ``RegularKeys`` of one shape, so otherwise the pair is not fused). If ``G1`` is explicit
  (say, left by a partial cull), the fused group is explicit, one spec per task.
- Then a per-task pass fuses into tasks ``b`` of explicit groups, with ``a`` in any group
  (explicit groups are small or imported; regular ``b``s fuse only as whole groups above).
- External keys are kept as they are. Nothing fused: the same graph object is returned.

Both return graphs built without re-validation: they satisfy ``TaskGraph.validate`` whenever
the input did. Key blocks, templates and specs are immutable values and are shared with the
input graph, never copied.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from itertools import repeat
from operator import itemgetter
from typing import Any, cast

import numpy as np

from .errors import UnknownKeyError
from .keys import ExplicitKeys, Key, KeyBlock, RegularKeys
from .lowgraph import TaskGraph, TaskGroup
from .task import BlockArg, DepList, DepSlot, IndexSlot, Ref, Task, placeholders

__all__ = ["DEFAULT_MAX_CHAIN", "cull", "fuse_linear", "inline_dependency"]

DEFAULT_MAX_CHAIN = 64
"""Most tasks fused into one by ``fuse_linear`` unless told otherwise."""


# --- cull ----------------------------------------------------------------------------------

def cull(graph: TaskGraph, keys: Iterable[Key]) -> TaskGraph:
    """The part of ``graph`` needed to compute ``keys`` (task keys or external keys).

    Raises ``UnknownKeyError`` naming every key of ``keys`` that is not in ``graph``, and
    ``TypeError`` if ``keys`` is a single ``str`` (pass a list). No keys: an empty graph.
    """
    if isinstance(keys, str):
        raise TypeError(f"cull takes an iterable of keys, got the str {keys!r}: pass [{keys!r}]")
    n = graph.n
    needed = np.zeros(n + len(graph.external), dtype=bool)
    needed[key_ids(graph, list(keys))] = True
    offsets = graph.offsets.tolist()
    for gi in range(len(graph.groups) - 1, -1, -1):
        g = graph.groups[gi]
        lo, hi = offsets[gi], offsets[gi + 1]
        mine = needed[lo:hi]  # a view: marks made below show through
        if not mine.any():
            continue
        if not g.regular:
            _close_within_group(g, lo, needed)
        if mine.all():
            needed[g.indices] = True
        else:
            needed[g.indices[np.repeat(mine, np.diff(g.indptr))]] = True
    if needed.all():
        return graph
    return _compact(graph, graph.groups, needed)


def _close_within_group(g: TaskGroup, lo: int, needed: np.ndarray) -> None:
    """Mark, in ``needed``, every task of explicit group ``g`` (ids from ``lo``) that a needed
    task of ``g`` depends on through ``g``'s own edges (per-task walk)."""
    hi = lo + len(g)
    if not ((g.indices >= lo) & (g.indices < hi)).any():
        return
    ptr, ind = g.indptr.tolist(), g.indices.tolist()
    flag = needed[lo:hi].tolist()
    stack = [i for i, f in enumerate(flag) if f]
    while stack:
        i = stack.pop()
        for d in ind[ptr[i]:ptr[i + 1]]:
            if lo <= d < hi and not flag[d - lo]:
                flag[d - lo] = True
                stack.append(d - lo)
    needed[lo:hi] = flag


# --- linear fusion -------------------------------------------------------------------------

def fuse_linear(graph: TaskGraph, keep: Iterable[Key] = (), *,
                max_chain: int | None = DEFAULT_MAX_CHAIN) -> TaskGraph:
    """``graph`` with one-in-one-out chains of tasks fused (rules in the module docstring).

    ``keep``: keys that must stay (the keys the caller will request); an unknown one raises
    ``UnknownKeyError``. ``max_chain``: most original tasks in one fused task (``None``: no
    limit); must be at least 1, and 1 fuses nothing.
    """
    if max_chain is not None and max_chain < 1:
        raise ValueError(f"max_chain must be at least 1 (or None), got {max_chain}")
    limit = max_chain if max_chain is not None else graph.n + 1
    if limit < 2 or not graph.n:
        return graph
    n, total = graph.n, graph.n + len(graph.external)
    kept = np.zeros(total, dtype=bool)
    kept[key_ids(graph, list(keep))] = True
    edges = [g.indices for g in graph.groups]
    counts = (np.bincount(np.concatenate(edges), minlength=total) if edges
              else np.zeros(total, dtype=np.int64))
    # counts[d]: how often d is listed as a dependency; 1 means one dependent, through one
    # slot. Fusing a into b hands a's dependencies to b, so counts stay right for the tasks
    # that remain and are computed once.
    removed = np.zeros(n, dtype=bool)
    groups = list(graph.groups)
    chain = _fuse_groups(graph, groups, counts, kept, removed, limit)
    changed = _fuse_tasks(graph, groups, counts, kept, removed, chain, limit)
    if not removed.any():
        return graph
    for gi, replaced in changed.items():
        groups[gi] = _replace_tasks(groups[gi], replaced)
    mask = np.ones(total, dtype=bool)
    mask[:n] = ~removed
    return _compact(graph, groups, mask)


def _fuse_groups(graph: TaskGraph, groups: list[TaskGroup], counts: np.ndarray,
                 kept: np.ndarray, removed: np.ndarray, limit: int) -> list[int]:
    """Fuse whole groups into the regular group that maps them one to one.

    Replaces entries of ``groups`` in place (a fused group keeps the position and size of the
    chain's last group, with the first group's dependencies) and marks the absorbed groups'
    tasks in ``removed``. Returns, per group, how many original tasks each of its tasks is.
    """
    offsets = graph.offsets
    n = graph.n
    chain = [1] * len(groups)
    for gi, g in enumerate(graph.groups):
        m = len(g)
        if (not g.regular or not m or len(g.indices) != m
                or not (np.diff(g.indptr) == 1).all()):
            continue
        first = int(g.indices[0])
        if first >= n:
            continue
        p = int(np.searchsorted(offsets, first, side="right")) - 1
        lo = int(offsets[p])
        parent = groups[p]
        if (first != lo or len(parent) != m or chain[p] + 1 > limit
                or not np.array_equal(g.indices, np.arange(lo, lo + m))
                or (counts[lo:lo + m] != 1).any() or kept[lo:lo + m].any()
                or _slot_uses(g.template, 0, 1) != 1):
            continue
        if parent.regular:
            if _has_index_slot(parent.template) and not (
                    isinstance(parent.keys, RegularKeys) and isinstance(g.keys, RegularKeys)
                    and parent.keys.shape == g.keys.shape):
                continue
            template = _splice(g.template, parent.template)
            if template is None:
                continue
            groups[gi] = TaskGroup(g.keys, template=template, indptr=parent.indptr,
                                   indices=parent.indices)
        else:  # an explicit parent (e.g. left by a partial cull): per-task specs
            outer = _spec_getter(g)
            specs = [_splice(outer(i), s) for i, s in enumerate(parent.specs)]  # type: ignore[arg-type]
            if any(s is None for s in specs):
                continue
            groups[gi] = TaskGroup(g.keys, specs=specs, indptr=parent.indptr,
                                   indices=parent.indices)
        removed[lo:lo + m] = True
        chain[gi] = chain[p] + 1
    return chain


def _fuse_tasks(graph: TaskGraph, groups: list[TaskGroup], counts: np.ndarray,
                kept: np.ndarray, removed: np.ndarray, chain: list[int],
                limit: int) -> dict[int, dict[int, tuple[Any, list[int]]]]:
    """Fuse chains ending in explicit groups, task by task.

    Marks absorbed tasks in ``removed`` and returns, for the explicit groups whose tasks
    changed, ``{group index: {position: (new spec, new dependency ids)}}``.
    """
    n = graph.n
    offsets = graph.offsets
    cand_a: list[np.ndarray] = []
    cand_b: list[np.ndarray] = []
    for gi, g in enumerate(groups):
        if g.regular or not len(g):
            continue
        rows = np.flatnonzero(np.diff(g.indptr) == 1)
        a = g.indices[g.indptr[rows]]
        ok = a < n
        ok[ok] = (counts[a[ok]] == 1) & ~kept[a[ok]]
        cand_a.append(a[ok])
        cand_b.append(rows[ok] + offsets[gi])
    if not cand_a or not sum(len(a) for a in cand_a):
        return {}
    a_ids = np.concatenate(cand_a).tolist()
    b_ids = np.concatenate(cand_b).tolist()
    next_of = dict(zip(a_ids, b_ids, strict=True))
    is_b = set(b_ids)
    off = offsets.tolist()

    def locate(t: int) -> tuple[int, int]:
        gi = bisect_right(off, t) - 1
        return gi, t - off[gi]

    changed: dict[int, dict[int, tuple[Any, list[int]]]] = {}
    getters: dict[int, Callable[[int], Any]] = {}

    def store(t: int, spec: Any, deps: list[int]) -> None:
        gi, i = locate(t)
        changed.setdefault(gi, {})[i] = (spec, deps)

    for root in a_ids:
        if root in is_b:
            continue  # not the start of a chain
        gi, i = locate(root)
        if gi not in getters:
            getters[gi] = _spec_getter(groups[gi])
        spec, deps, length = getters[gi](i), groups[gi].deps(i).tolist(), chain[gi]
        t, fused = root, False
        while (b := next_of.get(t)) is not None:
            gb, j = locate(b)
            b_spec = groups[gb].specs[j]  # type: ignore[index]
            fused_spec = _splice(b_spec, spec) if length + chain[gb] <= limit else None
            if fused_spec is not None:
                spec = fused_spec
                removed[t] = True
                length, fused = length + chain[gb], True
            else:  # b starts a new chain
                if fused:
                    store(t, spec, deps)
                spec, deps, fused = b_spec, groups[gb].deps(j).tolist(), False
                length = chain[gb]
            t = b
        if fused:
            store(t, spec, deps)
    return changed


def _replace_tasks(g: TaskGroup, replaced: dict[int, tuple[Any, list[int]]]) -> TaskGroup:
    """Explicit group ``g`` with the spec and dependencies of some tasks replaced
    (``{position: (spec, dependency ids)}``); the CSR arrays are rebuilt with numpy."""
    n = len(g)
    pos = np.fromiter(replaced, dtype=np.int64, count=len(replaced))
    new_deps = [d for _, d in replaced.values()]
    old_len = np.diff(g.indptr)
    new_len = old_len.copy()
    new_len[pos] = [len(d) for d in new_deps]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(new_len, out=indptr[1:])
    indices = np.empty(int(indptr[-1]), dtype=np.int64)
    # Edges of the other tasks move by how much the rows before them grew or shrank.
    edge_row = np.repeat(np.arange(n), old_len)
    moved = np.ones(n, dtype=bool)
    moved[pos] = False
    stays = moved[edge_row]
    shift = (indptr[:-1] - g.indptr[:-1])[edge_row]
    indices[(np.arange(len(g.indices)) + shift)[stays]] = g.indices[stays]
    # The new rows go where their rows now start.
    lens = new_len[pos]
    flat = np.fromiter((d for deps in new_deps for d in deps), dtype=np.int64,
                       count=int(lens.sum()))
    before = np.cumsum(lens) - lens
    indices[np.repeat(indptr[pos] - before, lens) + np.arange(len(flat))] = flat
    specs = list(g.specs)  # type: ignore[arg-type]
    for i, (spec, _) in replaced.items():
        specs[i] = spec
    return TaskGroup(g.keys, specs=specs, indptr=indptr, indices=indices)


def _spec_getter(g: TaskGroup) -> Callable[[int], Any]:
    """``i -> task i's spec in g``, ``IndexSlot``s filled in where the index is known."""
    specs, template, keys = g.specs, g.template, g.keys
    if specs is not None:
        return specs.__getitem__
    if isinstance(keys, RegularKeys) and _has_index_slot(template):
        fill = _index_filler(template)
        return lambda i: fill(keys.index(i))
    return lambda i: template


# --- splicing specs ------------------------------------------------------------------------

def inline_dependency(outer: Any, slot: int, inner: Any, *, n_outer: int,
                      n_inner: int | None = None) -> Any:
    """``outer`` with its dependency ``slot`` computed in place by ``inner``.

    ``outer`` has ``n_outer`` dependencies, ``inner`` has ``n_inner``. The result's
    dependencies are ``inner``'s, then ``outer``'s other than ``slot``, in order; its
    ``DepSlot``/``DepList`` placeholders are renumbered to match. A ``DepList`` of ``outer``
    that covers ``slot`` becomes a list of specs. ``n_inner`` may be omitted when
    ``n_outer == 1`` (``inner``'s placeholders then stay as they are). A ``DepSlot`` of
    ``outer`` outside its dependencies raises ``ValueError`` (a bug in whoever built it).
    """
    if not 0 <= slot < n_outer:
        raise ValueError(f"slot {slot} is not one of {n_outer} dependencies")
    if n_outer == 1:
        shift, body = 0, inner
    elif n_inner is None:
        raise ValueError("n_inner is needed when the outer spec has other dependencies")
    else:
        shift, body = n_inner, _remap(inner, lambda p: _normalise(p, n_inner))

    def renumber(j: int) -> int:
        return shift + j - (j > slot)

    def fn(p: Any) -> Any:
        t = type(p)
        if t is DepSlot:
            j = p.i + n_outer if p.i < 0 else p.i
            if not 0 <= j < n_outer:
                raise ValueError(f"{p!r} in {outer!r}, which has {n_outer} dependencies")
            return body if j == slot else DepSlot(renumber(j))
        if t is DepList:
            js = range(n_outer)[p.start:p.stop]
            if slot in js:
                return [body if j == slot else DepSlot(renumber(j)) for j in js]
            if not js:
                return DepList(0, 0)
            return DepList(renumber(js[0]), renumber(js[-1]) + 1)
        return p

    return _remap(outer, fn)


def _splice(outer: Any, inner: Any) -> Any:
    """``outer``, a spec of one dependency, with that dependency computed in place by
    ``inner`` (whose placeholders stay as they are); ``None`` unless ``outer`` reads its
    dependency exactly once and reads no other (``inline_dependency`` for one dependency,
    answering ``None`` where that would raise or duplicate work)."""
    if type(outer) is Task and not outer.kwargs:  # the usual shape: f(DepSlot(0), consts)
        args = outer.args
        walked = [i for i, x in enumerate(args) if type(x) in _WALKED]
        if len(walked) == 1 and type(args[walked[0]]) is DepSlot:
            if args[walked[0]].i not in (0, -1):
                return None
            new = list(args)
            new[walked[0]] = inner
            return Task(outer.func, *new)
    uses, stray = 0, False

    def fn(p: Any) -> Any:
        nonlocal uses, stray
        t = type(p)
        if t is DepSlot:
            if p.i == 0 or p.i == -1:
                uses += 1
                return inner
            stray = True
        elif t is DepList:
            if range(1)[p.start:p.stop]:
                uses += 1
                return [inner]
            return DepList(0, 0)
        return p

    out = _remap(outer, fn)
    return out if uses == 1 and not stray else None


_PLACEHOLDER_TYPES = frozenset({Ref, DepSlot, DepList, IndexSlot, BlockArg})
_WALKED = _PLACEHOLDER_TYPES | {Task, list, tuple, dict}


def _remap(spec: Any, fn: Callable[[Any], Any]) -> Any:
    """``task.map_placeholders`` with less work per node: values that cannot hold a
    placeholder are not visited, and unchanged parts are returned as they are."""
    t = type(spec)
    if t in _PLACEHOLDER_TYPES:
        return fn(spec)
    if t is Task:
        args = _remap_items(spec.args, fn)
        kwargs = _remap_values(spec.kwargs, fn) if spec.kwargs else spec.kwargs
        if args is None and kwargs is spec.kwargs:
            return spec
        return Task(spec.func, *(spec.args if args is None else args), **kwargs)
    if t is list or t is tuple:
        items = _remap_items(spec, fn)
        if items is None:
            return spec
        return items if t is list else tuple(items)
    if t is dict:
        return _remap_values(spec, fn)
    return spec


def _remap_items(items: Any, fn: Callable[[Any], Any]) -> list | None:
    """The items of a list or tuple, remapped; ``None`` if none changed."""
    out = [_remap(a, fn) if type(a) in _WALKED else a for a in items]
    for a, b in zip(items, out, strict=True):
        if a is not b:
            return out
    return None


def _remap_values(d: dict, fn: Callable[[Any], Any]) -> dict:
    """``d`` with its values remapped (``d`` itself if none changed)."""
    out = {k: _remap(v, fn) if type(v) in _WALKED else v for k, v in d.items()}
    for k, v in d.items():
        if out[k] is not v:
            return out
    return d


def _normalise(p: Any, n: int) -> Any:
    """``p`` with negative or open-ended dependency positions made explicit, for ``n`` deps."""
    t = type(p)
    if t is DepSlot and -n <= p.i < 0:
        return DepSlot(p.i + n)
    if t is DepList:
        r = range(n)[p.start:p.stop]
        return DepList(r.start, r.stop) if r else DepList(0, 0)
    return p


def _slot_uses(spec: Any, slot: int, n_deps: int) -> int:
    """How many times ``spec`` reads dependency ``slot`` of its ``n_deps``."""
    uses = 0
    for p in placeholders(spec):
        t = type(p)
        if t is DepSlot:
            uses += (p.i + n_deps if p.i < 0 else p.i) == slot
        elif t is DepList:
            uses += slot in range(n_deps)[p.start:p.stop]
    return uses


def _has_index_slot(spec: Any) -> bool:
    return any(type(p) is IndexSlot for p in placeholders(spec))


def _index_filler(template: Any) -> Callable[[tuple], Any]:
    """A function ``index -> template with IndexSlot(axis) replaced by index[axis]``.

    Built once per template so that filling it for many tasks costs about one ``Task``
    construction each, not a walk of the template.
    """
    t = type(template)
    if t is IndexSlot:
        axis = template.axis
        return lambda index: index[axis]
    if t is Task:
        func = template.func
        args = [(a, _index_filler(a) if _has_index_slot(a) else None) for a in template.args]
        kwargs = [(k, v, _index_filler(v) if _has_index_slot(v) else None)
                  for k, v in template.kwargs.items()]
        if not kwargs:
            filled = [k for k, (_, f) in enumerate(args) if f is not None]
            if len(filled) == 1 and type(template.args[filled[0]]) is IndexSlot:
                # the usual shape, Task(f, ..., IndexSlot(axis), ...): one Task call per task
                k = filled[0]
                axis, head, tail = template.args[k].axis, template.args[:k], template.args[k + 1:]
                return lambda index: Task(func, *head, index[axis], *tail)
            return lambda index: Task(func, *[a if f is None else f(index) for a, f in args])
        return lambda index: Task(func, *[a if f is None else f(index) for a, f in args],
                                  **{k: v if f is None else f(index) for k, v, f in kwargs})
    if t is list or t is tuple:
        items = [(a, _index_filler(a) if _has_index_slot(a) else None) for a in template]
        if t is list:
            return lambda index: [a if f is None else f(index) for a, f in items]
        return lambda index: tuple([a if f is None else f(index) for a, f in items])
    if t is dict:
        entries = [(k, v, _index_filler(v) if _has_index_slot(v) else None)
                   for k, v in template.items()]
        return lambda index: {k: v if f is None else f(index) for k, v, f in entries}
    return lambda index: template


# --- rebuilding ----------------------------------------------------------------------------

def _compact(graph: TaskGraph, groups: list[TaskGroup], mask: np.ndarray) -> TaskGraph:
    """A graph of the tasks and external keys where ``mask`` is true, renumbered.

    ``groups`` are ``graph``'s groups or replacements of the same sizes, with dependency ids
    in ``graph``'s numbering; a kept task must not depend on a dropped one.
    """
    n = graph.n
    remap = np.cumsum(mask, dtype=np.int64) - 1
    offsets = graph.offsets.tolist()
    out: list[TaskGroup] = []
    for gi, g in enumerate(groups):
        mine = mask[offsets[gi]:offsets[gi + 1]]
        kept = int(np.count_nonzero(mine))
        if kept == len(g):
            if kept:
                out.append(TaskGroup(g.keys, template=g.template, specs=g.specs,
                                     indptr=g.indptr, indices=remap[g.indices]))
        elif kept:
            out.append(_subgroup(g, mine, remap))
    external = [k for k, m in zip(graph.external, mask[n:].tolist(), strict=True) if m]
    return TaskGraph(out, external, validate=False)


def _subgroup(g: TaskGroup, mine: np.ndarray, remap: np.ndarray) -> TaskGroup:
    """The tasks of ``g`` where ``mine`` is true, with dependency ids mapped by ``remap``."""
    pos = np.flatnonzero(mine)
    lengths = np.diff(g.indptr)
    indptr = np.zeros(len(pos) + 1, dtype=np.int64)
    np.cumsum(lengths[pos], out=indptr[1:])
    indices = remap[g.indices[np.repeat(mine, lengths)]]
    keys = _subset_keys(g.keys, pos)
    if g.specs is not None:
        specs = g.specs
        return TaskGroup(ExplicitKeys(keys, validate=False), specs=[specs[i] for i in pos.tolist()],
                         indptr=indptr, indices=indices)
    if isinstance(g.keys, RegularKeys) and _has_index_slot(g.template):
        fill = _index_filler(g.template)
        return TaskGroup(ExplicitKeys(keys, validate=False),
                         specs=[fill(k[1:]) for k in cast(list[tuple], keys)],  # (name, *index)
                         indptr=indptr, indices=indices)
    return TaskGroup(ExplicitKeys(keys, validate=False), template=g.template,
                     indptr=indptr, indices=indices)


def _subset_keys(block: KeyBlock, pos: np.ndarray) -> list[Key]:
    """The keys of ``block`` at positions ``pos`` (built by columns for regular blocks)."""
    if isinstance(block, RegularKeys) and block.shape:
        if len(block.shape) == 1:
            name = block.name
            return [(name, i) for i in pos.tolist()]
        cols = [c.tolist() for c in np.unravel_index(pos, block.shape)]
        return list(zip(repeat(block.name), *cols))
    if isinstance(block, ExplicitKeys):
        keys = block.keys
        return [keys[i] for i in pos.tolist()]
    return [block.key(i) for i in pos.tolist()]


# --- key look-up ---------------------------------------------------------------------------

_MAX_NAMES_BY_COLUMN = 16


def key_ids(graph: TaskGraph, keys: list[Any]) -> np.ndarray:
    """Ids of ``keys`` in ``graph``; raises ``UnknownKeyError`` naming the missing ones.

    Same answer as ``graph.ids_of``, faster when many keys are tuples of one length naming a
    few ``RegularKeys`` blocks (a whole output layer): those are resolved by columns with
    numpy; anything else is looked up one key at a time.
    """
    ids = np.full(len(keys), -1, dtype=np.int64)
    if len(keys) > 1 and set(map(type, keys)) == {tuple}:
        lengths = set(map(len, keys))
        if len(lengths) == 1 and (width := lengths.pop()) >= 2:
            _ids_by_columns(graph, keys, width, ids)
    todo = np.flatnonzero(ids < 0).tolist()
    for i in todo:
        ids[i] = graph.id_of(keys[i])
    if todo and (ids < 0).any():
        raise UnknownKeyError([keys[i] for i in np.flatnonzero(ids < 0).tolist()])
    return ids


def _ids_by_columns(graph: TaskGraph, keys: list[tuple], width: int, ids: np.ndarray) -> None:
    """Fill ``ids`` for keys ``(name, i0, ..., i{width-2})`` of ``RegularKeys`` blocks."""
    try:
        name_col = list(map(itemgetter(0), keys))
        names = set(name_col)
    except TypeError:  # an unhashable name: not a key; the slow path reports it
        return
    if len(names) > _MAX_NAMES_BY_COLUMN:
        return
    blocks: dict[str, tuple[int, tuple[int, ...]]] = {}
    for gi, g in enumerate(graph.groups):
        b = g.keys
        if isinstance(b, RegularKeys) and len(b.shape) == width - 1 and b.name in names:
            blocks[b.name] = (int(graph.offsets[gi]), b.shape)
    if not blocks:
        return
    parts = []
    for axis in range(1, width):
        col = list(map(itemgetter(axis), keys))
        if set(map(type, col)) != {int}:  # as RegularKeys.position: ints only, no bool
            return
        try:
            parts.append(np.fromiter(col, dtype=np.int64, count=len(col)))
        except OverflowError:
            return
    names_arr = np.asarray(name_col, dtype=object) if len(names) > 1 else None
    for name, (start, shape) in blocks.items():
        sel = (names_arr == name) if names_arr is not None else np.ones(len(keys), dtype=bool)
        idx = [p[sel] for p in parts]
        inside = np.ones(len(idx[0]), dtype=bool)
        for p, s in zip(idx, shape, strict=True):
            inside &= (p >= 0) & (p < s)
        where = np.flatnonzero(sel)[inside]
        ids[where] = start + np.ravel_multi_index([p[inside] for p in idx], shape)
