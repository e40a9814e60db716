"""The structure of lowered layers: keys and dependency arrays, from plain parameters.

Rules: these functions take data (names, shapes, sizes, ids where inputs were placed) and
return, per task group, ``(key block, indptr, indices)``. They never see a task's function,
so the scheduler can lower layers a client sent as data (the ``layers`` encoding) while the
client-side ``Layer.lower`` pairs the same structures with real templates. Everything is
vectorised with numpy; only explicit (materialized) tasks cost Python work per task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import GraphError, MissingDependencyError
from .keys import ExplicitKeys, Key, KeyBlock, RegularKeys

__all__ = ["Placed", "Structure", "blockwise_structure", "explicit_structure",
           "reduction_levels", "reduction_structure", "shuffle_plan", "shuffle_stage_sizes",
           "shuffle_structure"]

Structure = tuple[KeyBlock, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Placed:
    """Where a lowered layer's output block sits: first task id and the block's shape."""

    offset: int
    shape: tuple[int, ...]


def _uniform(keys: KeyBlock, deps: np.ndarray) -> Structure:
    n, k = deps.shape
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64) if k else np.zeros(n + 1, np.int64)
    return keys, indptr, deps.reshape(-1).astype(np.int64, copy=False)


def blockwise_structure(name: str, shape: tuple[int, ...],
                        inputs: Sequence[tuple[str, Placed]]) -> list[Structure]:
    """Task ``(name, *i)`` reads block ``i`` of each input (or its single block)."""
    n = math.prod(shape)
    ar = np.arange(n, dtype=np.int64)
    cols = []
    for nm, src in inputs:
        if src.shape == tuple(shape):
            cols.append(ar + src.offset)
        elif math.prod(src.shape) == 1:
            cols.append(np.full(n, src.offset, dtype=np.int64))
        else:
            raise GraphError(f"layer {name!r} of shape {tuple(shape)} reads layer {nm!r} of "
                             f"shape {src.shape}: shapes must match (or the input must be a "
                             f"single block)")
    deps = np.stack(cols, axis=1) if cols else np.zeros((n, 0), dtype=np.int64)
    return [_uniform(RegularKeys(name, shape), deps)]


def reduction_levels(n_in: int, split_every: int) -> list[int]:
    """Task count of each tree level, the last being the final aggregate (1)."""
    if split_every < 2:
        raise GraphError(f"split_every must be >= 2, got {split_every}")
    sizes = []
    m = n_in
    while m > split_every:
        m = -(-m // split_every)
        sizes.append(m)
    sizes.append(1)
    return sizes


def reduction_structure(name: str, split_every: int, src: Placed, start: int,
                        input_name: str = "?") -> list[Structure]:
    """Levels ``(name-partialL, i)`` then the final ``(name, 0)``; each task reads a run of
    up to ``split_every`` consecutive results of the level below."""
    m = math.prod(src.shape)
    if m == 0:
        raise GraphError(f"layer {name!r} reduces an empty layer {input_name!r}")
    prev_off = src.offset
    out: list[Structure] = []
    off = start
    sizes = reduction_levels(m, split_every)
    for level, size in enumerate(sizes):
        last = level == len(sizes) - 1
        indptr = np.minimum(np.arange(size + 1, dtype=np.int64) * split_every, m)
        indices = np.arange(m, dtype=np.int64) + prev_off
        keys = RegularKeys(name if last else f"{name}-partial{level}", (size,))
        out.append((keys, indptr, indices))
        prev_off, m = off, size
        off += size
    return out


def shuffle_plan(n: int, max_branch: int) -> tuple[int, int]:
    """(stages, branching k) for ``n`` partitions: ``k**stages >= n``, ``k <= max_branch``."""
    if max_branch < 2:
        raise GraphError(f"max_branch must be >= 2, got {max_branch}")
    if n <= max_branch:
        return 1, max(n, 1)
    s = math.ceil(math.log(n, max_branch) - 1e-9)
    k = math.ceil(n ** (1 / s) - 1e-9)
    while k ** s < n:
        k += 1
    return s, k


def shuffle_stage_sizes(n: int, max_branch: int) -> list[tuple[int, int]]:
    """(split tasks, combine tasks) per stage."""
    s, k = shuffle_plan(n, max_branch)
    p = k ** s
    return [(n if t == 0 else p, n if t == s - 1 else p) for t in range(s)]


def shuffle_structure(name: str, max_branch: int, src: Placed, start: int,
                      input_name: str = "?") -> list[Structure]:
    """Per stage ``t``: splits ``(name-split{t}, i)`` each reading one partition, then combines
    (``(name-stage{t}, j)``, the last stage ``(name, j)``) reading the ``k`` splits whose index
    differs from ``j`` only in digit ``t`` (base ``k``)."""
    if len(src.shape) != 1:
        raise GraphError(f"layer {name!r} shuffles {input_name!r} of shape {src.shape}: a "
                         f"shuffle needs a 1-d layer")
    n = src.shape[0]
    s, k = shuffle_plan(n, max_branch)
    out: list[Structure] = []
    prev_off = src.offset
    off = start
    for t, (n_split, n_comb) in enumerate(shuffle_stage_sizes(n, max_branch)):
        deps = (np.arange(n_split, dtype=np.int64) + prev_off).reshape(-1, 1)
        out.append(_uniform(RegularKeys(f"{name}-split{t}", (n_split,)), deps))
        split_off = off
        off += n_split
        j = np.arange(n_comb, dtype=np.int64)
        step = k ** t
        base = j - ((j // step) % k) * step
        cand = base[:, None] + np.arange(k, dtype=np.int64)[None, :] * step
        ok = cand < n_split
        indptr = np.zeros(n_comb + 1, dtype=np.int64)
        np.cumsum(ok.sum(axis=1), out=indptr[1:])
        keys = RegularKeys(name if t == s - 1 else f"{name}-stage{t}", (n_comb,))
        out.append((keys, indptr, cand[ok] + split_off))
        prev_off = off
        off += n_comb
    return out


def explicit_structure(keys: ExplicitKeys, deps: Sequence[Sequence[Key]], start: int,
                       resolve: Callable[[Key], int]) -> Structure:
    """Explicit tasks whose dependencies are given by key: a key of this block, or one that
    ``resolve`` finds among the layers placed before (else ``MissingDependencyError``)."""
    pos = keys.positions
    ptr = [0]
    idx: list[int] = []
    missing: dict[object, object] = {}
    for key, dks in zip(keys.keys, deps, strict=True):
        for d in dks:
            p = pos.get(d)
            tid = start + p if p is not None else resolve(d)
            if tid < 0:
                missing.setdefault(d, key)
            idx.append(tid)
        ptr.append(len(idx))
    if missing:
        raise MissingDependencyError(missing)
    return keys, np.asarray(ptr, dtype=np.int64), np.asarray(idx, dtype=np.int64)
