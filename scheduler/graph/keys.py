"""Keys and blocks of keys.

A key names one task's result. The rule is Dask's (``dask.core.validate_key``): a key is a
``str``, an ``int`` or a ``float`` -- exactly those types, so ``bool``, numpy scalars, ``bytes``
and ``str`` subclasses are not keys -- or a ``tuple`` (exactly, not a namedtuple) of keys,
nested to any depth: ``"x"``, ``("x", 3, 4)``, ``("shuffle-group", 1, (0,))``, ``7``, ``()``.
One limit of ours: tuples nest at most ``MAX_KEY_DEPTH`` levels (deeper than Dask itself can
check at Python's default recursion limit), so that every key can travel in msgpack.

Keys compare as Python values: ``1``, ``1.0`` and ``True`` look up the same entry, as in a
Dask graph (a dict). A key's *name* (``key_name``) is what blocks of keys are indexed by: the
key itself for a ``str``, the first element of a tuple that starts with a ``str``, and for any
other key (``7``, ``()``, ``((1, 2), "x")``) the key itself.

Most tasks of a big graph come in regular blocks: every key of a layer is ``(name, *index)``
for every index of a shape. ``RegularKeys`` stores such a block as its name and shape, so a
million keys cost nothing until someone asks for one, and a key's position is computed, not
looked up. ``ExplicitKeys`` holds any other list of keys with a dict for look-up.

Rules: a block never holds the same key twice; positions are C-order (row-major).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Sequence
from itertools import product
from operator import itemgetter
from typing import Union

import numpy as np

Key = Union[str, int, float, tuple]  # noqa: UP007  (a runtime alias, used in isinstance-free annotations)

__all__ = ["MAX_KEY_DEPTH", "ExplicitKeys", "InvalidKeyError", "Key", "KeyBlock", "RegularKeys",
           "check_key", "key_name", "key_repr"]

MAX_KEY_DEPTH = 400
"""Most levels of tuples nested in one key (``("x", (0,))`` has 2). Dask's own check stops at
about 330 levels at Python's default recursion limit; msgpack carries about 500."""

_ATOMS = frozenset({str, int, float})


class InvalidKeyError(TypeError):
    """A value that is not a valid key was given where a key was expected (caller's input)."""


def check_key(key: object) -> Key:
    """Return ``key`` if it is a key (see the module docstring), else raise
    ``InvalidKeyError`` saying which part is wrong and why. Flat tuples cost one type test
    per part; only nested tuples take the general path."""
    t = type(key)
    if t is str or t is int or t is float:
        return key  # type: ignore[return-value]
    if t is tuple:
        for part in key:  # type: ignore[attr-defined]
            tp = type(part)
            if tp is not str and tp is not int and tp is not float and (
                    tp is not tuple or not _nested_ok(part)):
                raise InvalidKeyError(_why(key))
        return key  # type: ignore[return-value]
    raise InvalidKeyError(_why(key))


def _nested_ok(top: tuple) -> bool:
    """Whether the tuple ``top``, found one level down in a key, is a key (no recursion)."""
    stack = [(top, 2)]
    while stack:
        tup, depth = stack.pop()
        if depth > MAX_KEY_DEPTH:
            return False
        for part in tup:
            tp = type(part)
            if tp is tuple:
                stack.append((part, depth + 1))
            elif tp not in _ATOMS:
                return False
    return True


def _why(key: object) -> str:
    """Why ``key`` is not a key: the first offending part, where it is, and what to do."""
    stack: list[tuple[object, tuple[int, ...]]] = [(key, ())]
    while stack:
        value, path = stack.pop()
        t = type(value)
        if t is tuple:
            if len(path) + 1 > MAX_KEY_DEPTH:
                return (f"{key_repr(key)} is not a valid key: its tuples nest deeper than "
                        f"{MAX_KEY_DEPTH} levels (the most stagecost carries); flatten it")
            for i in range(len(value) - 1, -1, -1):  # type: ignore[arg-type]
                stack.append((value[i], (*path, i)))  # type: ignore[index]
            continue
        if t in _ATOMS:
            continue
        where = "" if not path else f" at position {list(path)}"
        hint = _HINTS.get(t.__name__, "")
        if not hint:
            for base, tip in ((bool, "use int(x)"), (int, "use int(x)"),
                              (float, "use float(x)"), (str, "use str(x)"),
                              (tuple, "use tuple(x)"), (list, "use a tuple")):
                if isinstance(value, base):
                    hint = tip
                    break
        hint = f"; {hint}" if hint else ""
        return (f"{key_repr(key)} is not a valid key: the part{where} is a {t.__name__}. A key "
                f"is a str, int or float, or a tuple of keys, nested to any depth (Dask's "
                f"rule: subclasses such as bool or numpy integers are not keys){hint}")
    return f"{key_repr(key)} is not a valid key"  # pragma: no cover (unreachable)


_HINTS = {"bytes": "decode it to a str", "NoneType": "use a str or an int",
          "list": "use a tuple"}


def key_repr(key: object, limit: int = 200) -> str:
    """``key`` as messages show it: its ``repr`` (what a user would type to name it, nested
    tuples included), at most ``limit`` characters (both ends kept, `` ... `` between). An int
    too long for ``repr`` (Python's 4,300-digit limit) shows as ``<int of N bits>``; a value
    whose ``repr`` fails, as ``<type>``. Never raises."""
    try:
        text = repr(key)
    except ValueError:  # an int beyond Python's digit limit somewhere inside
        text = _parts_repr(key)
    except Exception:  # a broken __repr__ (only in something that is not a key)
        text = f"<{type(key).__name__}>"
    if len(text) <= limit:
        return text
    keep = max(1, (limit - 5) // 2)
    return f"{text[:keep]} ... {text[-keep:]}"


def _parts_repr(value: object) -> str:
    if type(value) is tuple:
        inner = ", ".join(_parts_repr(p) for p in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    try:
        return repr(value)
    except ValueError:
        if isinstance(value, int):
            return f"<int of {value.bit_length()} bits>"
        return f"<{type(value).__name__}>"
    except Exception:
        return f"<{type(value).__name__}>"


def key_name(key: Key) -> Hashable:
    """The name of a key: a ``str`` key itself, the first element of a tuple key that starts
    with a ``str``, else the key itself."""
    if type(key) is tuple and key and type(key[0]) is str:
        return key[0]
    return key


class KeyBlock:
    """A sequence of distinct keys with O(1) ``position``."""

    __slots__ = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def key(self, i: int) -> Key:
        raise NotImplementedError

    def position(self, key: object) -> int:
        """Position of ``key`` in this block, or -1 if it is not here."""
        raise NotImplementedError

    def tolist(self) -> list[Key]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Key]:
        return iter(self.tolist())

    def names(self) -> set[Hashable]:
        """The distinct key names in this block (used to index blocks by name)."""
        raise NotImplementedError


class RegularKeys(KeyBlock):
    """Keys ``(name, *index)`` for every index of ``shape`` in C order.

    ``shape == ()`` means the single key ``name`` (a plain string).
    """

    __slots__ = ("name", "shape", "_size", "_strides")

    def __init__(self, name: str, shape: Sequence[int]) -> None:
        if not isinstance(name, str):
            raise InvalidKeyError(f"a key block name must be a str, got {name!r}")
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"negative extent in key block shape {shape}")
        self.name = name
        self.shape = shape
        self._size = math.prod(shape)
        strides = []
        acc = 1
        for s in reversed(shape):
            strides.append(acc)
            acc *= s
        self._strides = tuple(reversed(strides))

    def __len__(self) -> int:
        return self._size

    def key(self, i: int) -> Key:
        if not 0 <= i < self._size:
            raise IndexError(f"position {i} outside key block {self.name!r} of {self._size}")
        if not self.shape:
            return self.name
        idx = []
        for st, s in zip(self._strides, self.shape, strict=True):
            idx.append((i // st) % s)
        return (self.name, *idx)

    def index(self, i: int) -> tuple[int, ...]:
        """The block index (without the name) of position ``i``."""
        k = self.key(i)
        return k[1:] if type(k) is tuple else ()

    def position(self, key: object) -> int:
        shape = self.shape
        if not shape:
            return 0 if key == self.name else -1
        if (not isinstance(key, tuple) or len(key) != len(shape) + 1
                or key[0] != self.name):
            return -1
        pos = 0
        for part, s, st in zip(key[1:], shape, self._strides, strict=True):
            if type(part) is not int or not 0 <= part < s:
                return -1
            pos += part * st
        return pos

    def positions(self, keys: list) -> np.ndarray | None:
        """Positions of many keys at once, or ``None`` if the fast path does not apply (not all
        keys are ``(name, *ints)`` of this block); -1 for keys outside the shape.

        Every check is a C-level pass (``map`` with ``set``), not a Python loop per key: this
        maps the outputs of a million-task graph before it is sent."""
        name, nd = self.name, len(self.shape)
        if not nd or not keys:
            return None
        if set(map(type, keys)) != {tuple} or set(map(len, keys)) != {nd + 1}:
            return None
        try:
            if set(map(itemgetter(0), keys)) != {name}:
                return None
        except TypeError:  # an unhashable first part: not a key of this block
            return None
        n = len(keys)
        idx = np.empty((n, nd), dtype=np.int64)
        for d in range(nd):
            column = list(map(itemgetter(d + 1), keys))
            if set(map(type, column)) != {int}:  # bool and numpy integers are not key parts
                return None
            try:
                idx[:, d] = np.fromiter(column, dtype=np.int64, count=n)
            except OverflowError:
                return None
        ok = ((idx >= 0) & (idx < np.asarray(self.shape))).all(axis=1)
        pos = idx @ np.asarray(self._strides, dtype=np.int64)
        return np.where(ok, pos, -1)

    def indices(self, positions: np.ndarray) -> list[tuple]:
        """Block indices of many positions (``index(i)`` for each)."""
        if not self.shape:
            return [()] * len(positions)
        if len(self.shape) == 1:
            return [(p,) for p in positions.tolist()]
        parts = np.unravel_index(positions, self.shape)
        return list(zip(*(p.tolist() for p in parts), strict=True))

    def tolist(self) -> list[Key]:
        name = self.name
        if not self.shape:
            return [name]
        if len(self.shape) == 1:
            return [(name, i) for i in range(self.shape[0])]
        return [(name, *idx) for idx in product(*(range(s) for s in self.shape))]

    def names(self) -> set[Hashable]:
        return {self.name}

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, RegularKeys) and other.name == self.name
                and other.shape == self.shape)

    def __hash__(self) -> int:
        return hash((self.name, self.shape))

    def __repr__(self) -> str:
        return f"RegularKeys({self.name!r}, {self.shape})"


class ExplicitKeys(KeyBlock):
    """Any list of distinct keys."""

    __slots__ = ("keys", "positions")

    def __init__(self, keys: Sequence[Key], *, validate: bool = True) -> None:
        keys = list(keys)
        if validate:
            for k in keys:
                check_key(k)
        pos = {k: i for i, k in enumerate(keys)}
        if len(pos) != len(keys):
            seen: set[Key] = set()
            dup = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise ValueError(f"key {dup!r} appears twice in one key block")
        self.keys = keys
        self.positions = pos  # key -> its index in the block (read-only for callers)

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, i: int) -> Key:
        return self.keys[i]

    def position(self, key: object) -> int:
        try:
            return self.positions.get(key, -1)  # type: ignore[call-overload]
        except TypeError:  # unhashable: cannot be a key
            return -1

    def tolist(self) -> list[Key]:
        return list(self.keys)

    def names(self) -> set[Hashable]:
        out: set[Hashable] = set()
        add = out.add
        for k in self.keys:
            add(k[0] if type(k) is tuple and k and type(k[0]) is str else k)
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExplicitKeys) and other.keys == self.keys

    def __hash__(self) -> int:
        return hash(tuple(self.keys))

    def __repr__(self) -> str:
        head = ", ".join(key_repr(k) for k in self.keys[:3])
        more = ", ..." if len(self.keys) > 3 else ""
        return f"ExplicitKeys([{head}{more}] ({len(self.keys)} keys))"
