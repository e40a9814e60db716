"""Keys and blocks of keys.

A key names one task's result. It is a ``str`` or a flat tuple whose first element is a ``str``
and whose other elements are ``str``, ``int`` or ``float`` (Dask's convention:
``("x", 3, 4)``).

Most tasks of a big graph come in regular blocks: every key of a layer is ``(name, *index)``
for every index of a shape. ``RegularKeys`` stores such a block as its name and shape, so a
million keys cost nothing until someone asks for one, and a key's position is computed, not
looked up. ``ExplicitKeys`` holds any other list of keys with a dict for look-up.

Rules: a block never holds the same key twice; positions are C-order (row-major).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import product
from typing import Union

import numpy as np

Key = Union[str, tuple]  # noqa: UP007  (a runtime alias, used in isinstance-free annotations)

__all__ = ["ExplicitKeys", "Key", "KeyBlock", "RegularKeys", "check_key", "key_name"]

_KEY_PARTS = (str, int, float)


class InvalidKeyError(TypeError):
    """A value that is not a valid key was given where a key was expected (caller's input)."""


def check_key(key: object) -> Key:
    """Return ``key`` if it is valid, else raise ``InvalidKeyError`` saying why."""
    if isinstance(key, str):
        return key
    if isinstance(key, tuple):
        if not key or not isinstance(key[0], str):
            raise InvalidKeyError(f"a tuple key must start with a str name, got {key!r}")
        for part in key:
            if not isinstance(part, _KEY_PARTS) or isinstance(part, bool):
                raise InvalidKeyError(f"key parts must be str, int or float; {key!r} has "
                                      f"{type(part).__name__}")
        return key
    raise InvalidKeyError(f"a key is a str or a tuple starting with a str, got "
                          f"{type(key).__name__}: {key!r}")


def key_name(key: Key) -> str:
    """The name part of a key: the key itself if it is a str, else its first element."""
    return key if isinstance(key, str) else key[0]


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

    def names(self) -> set[str]:
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
        return () if isinstance(k, str) else k[1:]

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
        keys are ``(name, *ints)`` of this block); -1 for keys outside the shape."""
        name, nd = self.name, len(self.shape)
        if not nd or not keys:
            return None
        try:
            if not all(type(k) is tuple and len(k) == nd + 1 and k[0] == name
                       and all(type(i) is int for i in k[1:]) for k in keys):
                return None
            idx = np.array([k[1:] for k in keys], dtype=np.int64).reshape(len(keys), nd)
        except (TypeError, ValueError, OverflowError):
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

    def names(self) -> set[str]:
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

    __slots__ = ("keys", "_pos")

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
        self._pos = pos

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, i: int) -> Key:
        return self.keys[i]

    def position(self, key: object) -> int:
        try:
            return self._pos.get(key, -1)  # type: ignore[call-overload]
        except TypeError:  # unhashable: cannot be a key
            return -1

    def tolist(self) -> list[Key]:
        return list(self.keys)

    def names(self) -> set[str]:
        return {key_name(k) for k in self.keys}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExplicitKeys) and other.keys == self.keys

    def __hash__(self) -> int:
        return hash(tuple(self.keys))

    def __repr__(self) -> str:
        head = ", ".join(repr(k) for k in self.keys[:3])
        more = ", ..." if len(self.keys) > 3 else ""
        return f"ExplicitKeys([{head}{more}] ({len(self.keys)} keys))"
