"""Reading py-spy's output: speedscope JSON and ``raw`` collapsed stacks, into one stack table.

Rules of this module:

- Pure functions: text or parsed JSON in, a ``StackTable`` out. Nothing here runs py-spy or
  knows about stages; ``load_profile`` is the only function that opens a file.
- A ``StackTable`` is compact: the distinct frames once (``frames``), then each distinct stack
  once as ``(frame ids from root to leaf, samples)``. Stacks of all threads (and processes,
  with ``--subprocesses``) are merged; the thread names are kept in ``threads``.
- Weights are sample counts. py-spy writes one speedscope sample per stack it took (weight
  ``1/rate`` seconds), so each entry counts 1; a profile whose ``unit`` is ``"none"`` carries
  counts in its weights and those are used. Raw lines carry a count.
- A sample with an empty stack is kept (it is a sample); attribution calls it unattributed.
- Frames keep py-spy's identity (name, file, line): the line is the line being run, not the
  function's first line, so one function may appear as several frames. Per-function figures
  (``function_samples``) group frames by (name, file).
- Bad input raises ``ProfileFormatError`` naming the place in the document; it is the fault
  of the file (truncated, hand-edited, written by another tool), never silently skipped.

Raw format: one stack per line, ``frame;frame;...;frame COUNT``, root first (``" COUNT"``
alone is samples with no Python frame). Frames look like
``name (file:line)``; a frame may contain spaces, so the count is what follows the LAST space.
With ``--subprocesses``/``--threads`` py-spy adds pseudo-frames at the root
(``process 123:"cmd line"``, ``thread (123)``). The command line may contain newlines and
semicolons, which the format does not escape: a record continues on the next line while its
last word is not a count or a ``process N:"`` frame is still open (no closing ``";`` yet), and
such a frame runs to its closing quote. A command line that itself contains ``";`` can still be
split wrongly; speedscope JSON has no such ambiguity and is the default format.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "Frame",
    "FunctionSamples",
    "ProfileFormatError",
    "StackTable",
    "function_samples",
    "load_profile",
    "merge_tables",
    "parse_raw",
    "parse_speedscope",
    "self_samples",
    "total_samples",
]


class ProfileFormatError(ValueError):
    """A profile file or document is malformed: the input's fault, not this module's."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as py-spy reports it. ``line`` is 0 when unknown; ``file`` is ``""`` for
    pseudo-frames (process/thread markers of the raw format)."""

    name: str
    file: str
    line: int = 0

    @property
    def is_python(self) -> bool:
        """True for Python code (``.py`` files and ``<frozen ...>``/``<string>``), False for
        native frames recorded with ``--native`` and for pseudo-frames."""
        f = self.file
        return f.endswith((".py", ".pyw")) or (f.startswith("<") and f.endswith(">"))


@dataclass(frozen=True, slots=True)
class StackTable:
    """Distinct frames and distinct stacks (root first) with their sample counts."""

    frames: tuple[Frame, ...]
    stacks: tuple[tuple[tuple[int, ...], int], ...]
    threads: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """All samples in the table."""
        return sum(n for _, n in self.stacks)

    def __len__(self) -> int:
        return len(self.stacks)


class FunctionSamples(NamedTuple):
    """Samples of one function: ``self_samples`` where it was the leaf, ``total_samples``
    where it was anywhere on the stack (counted once per stack, so recursion is not
    double-counted)."""

    name: str
    file: str
    self_samples: int
    total_samples: int


# --- building a table ---------------------------------------------------------------------


class _Builder:
    """Interns frames and sums identical stacks; used by both parsers."""

    __slots__ = ("frames", "_frame_ids", "_stacks")

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._frame_ids: dict[Frame, int] = {}
        self._stacks: dict[tuple[int, ...], int] = {}

    def frame_id(self, frame: Frame) -> int:
        fid = self._frame_ids.get(frame)
        if fid is None:
            fid = self._frame_ids[frame] = len(self.frames)
            self.frames.append(frame)
        return fid

    def add(self, stack: tuple[int, ...], count: int) -> None:
        if count:
            self._stacks[stack] = self._stacks.get(stack, 0) + count

    def table(self, threads: Iterable[str]) -> StackTable:
        return StackTable(tuple(self.frames), tuple(self._stacks.items()), tuple(threads))


# --- speedscope ----------------------------------------------------------------------------


def _bad(where: str, what: str) -> ProfileFormatError:
    return ProfileFormatError(
        f"malformed speedscope profile at {where}: {what}. The file is truncated, edited, or "
        "not written by `py-spy record --format speedscope`; record it again.")


def _parse_frames(raw_frames: Any) -> list[Frame]:
    if not isinstance(raw_frames, list):
        raise _bad("shared.frames", f"expected a list, got {type(raw_frames).__name__}")
    frames = []
    for i, f in enumerate(raw_frames):
        if not isinstance(f, Mapping):
            raise _bad(f"shared.frames[{i}]", f"expected an object, got {type(f).__name__}")
        name = f.get("name")
        if not isinstance(name, str):
            raise _bad(f"shared.frames[{i}].name", f"expected a string, got {name!r}")
        file = f.get("file") or ""
        if not isinstance(file, str):
            raise _bad(f"shared.frames[{i}].file", f"expected a string, got {file!r}")
        line = f.get("line") or 0
        if not isinstance(line, int) or isinstance(line, bool):
            raise _bad(f"shared.frames[{i}].line", f"expected an integer, got {line!r}")
        frames.append(Frame(name, file, line))
    return frames


def _sample_counts(p: Mapping[str, Any], where: str, n: int) -> list[int]:
    weights = p.get("weights")
    if not isinstance(weights, list) or len(weights) != n:
        got = len(weights) if isinstance(weights, list) else type(weights).__name__
        raise _bad(f"{where}.weights", f"expected a list of {n} numbers (one per sample), got {got}")
    for j, w in enumerate(weights):
        if not isinstance(w, int | float) or isinstance(w, bool) or w < 0:
            raise _bad(f"{where}.weights[{j}]", f"expected a non-negative number, got {w!r}")
    if p.get("unit") == "none":
        for j, w in enumerate(weights):
            if w != int(w):
                raise _bad(f"{where}.weights[{j}]", f"unit 'none' needs whole counts, got {w!r}")
        return [int(w) for w in weights]
    return [1] * n


def parse_speedscope(doc: Mapping[str, Any]) -> StackTable:
    """Turn a parsed speedscope document into a ``StackTable``.

    Every profile must be ``"type": "sampled"`` (py-spy writes one per thread); ``evented``
    profiles are refused. A document with no profiles gives an empty table. Frame indices must
    be in range; samples are root first, as the format specifies.
    """
    if not isinstance(doc, Mapping):
        raise _bad("the top level", f"expected a JSON object, got {type(doc).__name__}")
    shared = doc.get("shared")
    if not isinstance(shared, Mapping):
        raise _bad("shared", "missing, or not an object with a 'frames' list")
    frames = _parse_frames(shared.get("frames"))
    profiles = doc.get("profiles")
    if not isinstance(profiles, list):
        raise _bad("profiles", f"expected a list, got {type(profiles).__name__}")
    b = _Builder()
    # Shared frames may repeat (same name, file and line); intern them so stacks merge.
    remap = [b.frame_id(f) for f in frames]
    nframes = len(frames)
    threads = []
    for i, p in enumerate(profiles):
        where = f"profiles[{i}]"
        if not isinstance(p, Mapping):
            raise _bad(where, f"expected an object, got {type(p).__name__}")
        if p.get("type") != "sampled":
            raise _bad(f"{where}.type", f"only 'sampled' profiles are supported, got "
                       f"{p.get('type')!r}")
        samples = p.get("samples")
        if not isinstance(samples, list):
            raise _bad(f"{where}.samples", f"expected a list, got {type(samples).__name__}")
        counts = _sample_counts(p, where, len(samples))
        threads.append(str(p.get("name", f"profile {i}")))
        for j, s in enumerate(samples):
            if not isinstance(s, list):
                raise _bad(f"{where}.samples[{j}]", f"expected a list of frame indices, got "
                           f"{type(s).__name__}")
            try:
                stack = tuple(remap[k] for k in s)
            except (IndexError, TypeError):
                bad = next(k for k in s if not isinstance(k, int) or not 0 <= k < nframes)
                raise _bad(f"{where}.samples[{j}]", f"frame index {bad!r} is not in "
                           f"0..{nframes - 1}") from None
            if any(isinstance(k, bool) or k < 0 for k in s):
                raise _bad(f"{where}.samples[{j}]", "frame indices must be non-negative integers")
            b.add(stack, counts[j])
    return b.table(threads)


# --- raw -----------------------------------------------------------------------------------

_COUNT = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$", re.DOTALL)
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$", re.DOTALL)
_PROCESS = re.compile(r'^process \d+:"', re.DOTALL)
_PROCESS_ANYWHERE = re.compile(r'(?:^|;)process \d+:"')
_THREAD = re.compile(r"^thread \(\w+\)", re.DOTALL)


def _split_frames(stack: str) -> list[str]:
    """Split on ``;``, keeping a ``process N:"cmd"`` pseudo-frame whole up to its closing quote."""
    parts = stack.split(";")
    out: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        if _PROCESS.match(part):
            while not part.endswith('"') and i + 1 < len(parts):
                i += 1
                part += ";" + parts[i]
        out.append(part)
        i += 1
    return out


def _inside_process_frame(stack: str) -> bool:
    """True if the last ``process N:"`` pseudo-frame of ``stack`` has no closing ``";`` yet
    (its command line goes on past a newline, or past a word that looked like a count)."""
    last = None
    for last in _PROCESS_ANYWHERE.finditer(stack):  # noqa: B007 - we want the last match
        pass
    return last is not None and '";' not in stack[last.end():]


def _parse_frame(text: str) -> Frame:
    if _PROCESS.match(text) or _THREAD.match(text):
        return Frame(text, "", 0)
    m = _FRAME.match(text)
    if m is None:
        return Frame(text, "", 0)
    line = m.group("line")
    return Frame(m.group("name"), m.group("file"), int(line) if line else 0)


def parse_raw(text: str) -> StackTable:
    """Parse py-spy's ``raw`` output (collapsed stacks). Blank lines are ignored; ``" N"`` is N
    samples with an empty stack (py-spy writes those); a record without a count raises
    ``ProfileFormatError``."""
    b = _Builder()
    pending = ""
    start = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not pending and not line.strip():
            continue
        if not pending:
            start = lineno
        record = f"{pending}\n{line}" if pending else line
        m = _COUNT.match(record.rstrip())
        if m is None or _inside_process_frame(m.group("stack")):
            pending = record  # a command line with a newline in it; the count comes later
            continue
        pending = ""
        stack_text = m.group("stack")
        stack = tuple(b.frame_id(_parse_frame(f)) for f in _split_frames(stack_text)) \
            if stack_text else ()  # py-spy writes " N" for samples with no Python frame
        b.add(stack, int(m.group("count")))
    if pending:
        raise ProfileFormatError(
            f"raw profile line {start}: expected 'frame;frame;... COUNT' and found no count "
            f"(starts {pending[:80]!r}); the file is truncated or not py-spy raw output")
    return b.table(())


def load_profile(path: str | os.PathLike[str]) -> StackTable:
    """Read a py-spy output file: speedscope JSON if it starts with ``{``, raw otherwise.

    Raises ``ProfileFormatError`` for malformed content, ``FileNotFoundError`` if py-spy
    wrote nothing there (it had no samples, or failed: see its messages).
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProfileFormatError(f"{p.name}: not valid JSON ({e}); the speedscope file is "
                                     "truncated (py-spy killed before writing it?)") from e
        return parse_speedscope(doc)
    return parse_raw(text)


# --- per function ---------------------------------------------------------------------------


def self_samples(table: StackTable) -> dict[tuple[str, str], int]:
    """``{(name, file): samples}`` where the function was the leaf (running itself)."""
    out: dict[tuple[str, str], int] = {}
    frames = table.frames
    for stack, n in table.stacks:
        if stack:
            f = frames[stack[-1]]
            key = (f.name, f.file)
            out[key] = out.get(key, 0) + n
    return out


def total_samples(table: StackTable) -> dict[tuple[str, str], int]:
    """``{(name, file): samples}`` where the function was anywhere on the stack, once per
    stack."""
    out: dict[tuple[str, str], int] = {}
    frames = table.frames
    for stack, n in table.stacks:
        for key in {(frames[i].name, frames[i].file) for i in stack}:
            out[key] = out.get(key, 0) + n
    return out


def function_samples(table: StackTable, limit: int | None = None) -> list[FunctionSamples]:
    """Self and total samples per function, most inclusive first (ties: most self, name)."""
    selfs = self_samples(table)
    rows = [FunctionSamples(name, file, selfs.get((name, file), 0), total)
            for (name, file), total in total_samples(table).items()]
    rows.sort(key=lambda r: (-r.total_samples, -r.self_samples, r.name, r.file))
    return rows if limit is None else rows[:limit]


def merge_tables(tables: Sequence[StackTable]) -> StackTable:
    """One table holding the stacks of several (e.g. every worker's profile)."""
    b = _Builder()
    threads: list[str] = []
    for t in tables:
        ids = [b.frame_id(f) for f in t.frames]
        for stack, n in t.stacks:
            b.add(tuple(ids[i] for i in stack), n)
        threads.extend(t.threads)
    return b.table(threads)
