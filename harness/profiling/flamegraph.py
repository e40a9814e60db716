"""A small, self-contained SVG flame graph drawn from a ``StackTable``.

Rules of this module:

- Pure: ``render_flamegraph(table, ...) -> str``. No scripts, no external fonts or styles:
  the SVG opens anywhere; each box has a ``<title>`` tooltip (function, file, samples, share,
  and the stage split when categories are given).
- Layout: the root ("all") is the bottom row, callers below callees; a box's width is its
  inclusive samples. Siblings are merged by function (name, file), not by line, and sorted by
  name, so the picture does not depend on sampling order.
- Boxes narrower than ``min_width`` pixels are left out with their children (their samples
  still count in their parents' widths). Labels are cut to fit; no label under ~3 characters.
- Colours: by stage when ``categories`` (one per stack, e.g. ``Attribution.stack_categories``)
  is given: a box takes the colour of the category holding most of its samples; otherwise a
  warm hue derived from the function name (stable across runs: CRC32, not ``hash``).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from xml.sax.saxutils import escape as _escape
from xml.sax.saxutils import quoteattr

from .speedscope import StackTable

__all__ = ["STAGE_COLOURS", "render_flamegraph"]

STAGE_COLOURS: Mapping[str, str] = MappingProxyType({
    "generate": "#e6a23c",
    "optimize": "#d4c04a",
    "serialize": "#8fc46a",
    "communicate": "#4fb3a9",
    "update_graph": "#5b8fd9",
    "schedule": "#9a7fd1",
    "dispatch": "#d17fb8",
    "execute": "#e0645a",
    "idle": "#c8c8c8",
    "import": "#b8c4cc",
    "unattributed": "#e8dcc8",
})
"""Fill colour per category."""

_FONT_SIZE = 11
_CHAR_WIDTH = _FONT_SIZE * 0.6
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def escape(text: str) -> str:
    """Text made safe for XML content: markup escaped, characters XML 1.0 forbids dropped."""
    return _escape(_NOT_XML.sub("", text))


class _Node:
    __slots__ = ("name", "file", "count", "children", "cats")

    def __init__(self, name: str, file: str) -> None:
        self.name = name
        self.file = file
        self.count = 0
        self.children: dict[tuple[str, str], _Node] = {}
        self.cats: dict[str, int] = {}


def _build_tree(table: StackTable, categories: Sequence[str] | None) -> _Node:
    root = _Node("all", "")
    frames = table.frames
    for i, (stack, n) in enumerate(table.stacks):
        cat = categories[i] if categories is not None else None
        node = root
        node.count += n
        if cat is not None:
            node.cats[cat] = node.cats.get(cat, 0) + n
        for fid in stack:
            f = frames[fid]
            key = (f.name, f.file)
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = _Node(f.name, f.file)
            child.count += n
            if cat is not None:
                child.cats[cat] = child.cats.get(cat, 0) + n
            node = child
    return root


def _depth(node: _Node) -> int:
    best, todo = 0, [(node, 0)]
    while todo:
        n, d = todo.pop()
        best = max(best, d)
        todo.extend((c, d + 1) for c in n.children.values())
    return best


def _hue_colour(name: str) -> str:
    h = zlib.crc32(name.encode("utf-8", "replace"))
    r = 205 + (h & 0x1F)
    g = 80 + ((h >> 5) & 0x7F)
    b = 40 + ((h >> 12) & 0x3F)
    return f"#{r:02x}{g:02x}{b:02x}"


def _tooltip(node: _Node, total: int) -> str:
    share = node.count / total if total else 0.0
    where = f" ({node.file})" if node.file else ""
    text = f"{node.name}{where}\n{node.count} samples, {share:.1%}"
    if node.cats:
        split = ", ".join(f"{c} {k / node.count:.0%}"
                          for c, k in sorted(node.cats.items(), key=lambda kv: -kv[1]))
        text += f"\n{split}"
    return text


def render_flamegraph(table: StackTable, *, title: str = "Flame graph",
                      categories: Sequence[str] | None = None, width: int = 1200,
                      row_height: int = 16, min_width: float = 0.5) -> str:
    """Draw ``table`` as an SVG document (a string).

    ``categories``, if given, must have one entry per stack of ``table``. An empty table gives
    a valid SVG saying there are no samples. Raises ``ValueError`` on bad sizes or a
    ``categories`` of the wrong length (a caller's mistake).
    """
    if width < 100 or row_height < 8 or min_width < 0:
        raise ValueError(f"flame graph needs width >= 100, row_height >= 8, min_width >= 0; got "
                         f"{width}, {row_height}, {min_width}")
    if categories is not None and len(categories) != len(table.stacks):
        raise ValueError(f"categories has {len(categories)} entries for {len(table.stacks)} "
                         "stacks; pass Attribution.stack_categories of this same table")
    root = _build_tree(table, categories)
    total = root.count
    pad, top = 10, 40
    depth = _depth(root) + 1
    height = top + depth * row_height + pad + (20 if categories is not None else 0)
    inner = width - 2 * pad
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="{_FONT_SIZE}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fdfcf8"/>',
        f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="15">'
        f"{escape(title)}</text>",
        f'<text x="{pad}" y="34" fill="#555">{total} samples</text>',
    ]
    if total == 0:
        out.append(f'<text x="{width / 2:.1f}" y="{top + row_height}" text-anchor="middle">'
                   "no samples</text>")
    scale = inner / total if total else 0.0
    # Iterative layout: (node, x, level). Level 0 is the bottom row.
    todo = [(root, float(pad), 0)] if total else []
    while todo:
        node, x, level = todo.pop()
        w = node.count * scale
        if w < min_width:
            continue
        y = top + (depth - 1 - level) * row_height
        if node.cats:
            fill = STAGE_COLOURS.get(max(node.cats.items(), key=lambda kv: kv[1])[0], "#dddddd")
        else:
            fill = "#f0e6d2" if node is root else _hue_colour(node.name)
        label = ""
        max_chars = int((w - 4) / _CHAR_WIDTH)
        if max_chars >= 3:
            label = node.name if len(node.name) <= max_chars else node.name[:max_chars - 2] + ".."
        out.append(
            f"<g><title>{escape(_tooltip(node, total))}</title>"
            f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{row_height - 1}" '
            f'fill={quoteattr(fill)} rx="2"/>'
            + (f'<text x="{x + 3:.2f}" y="{y + row_height - 4}">{escape(label)}</text>'
               if label else "")
            + "</g>")
        cx = x
        for key in sorted(node.children):
            child = node.children[key]
            todo.append((child, cx, level + 1))
            cx += child.count * scale
    if categories is not None:
        lx, ly = float(pad), height - 8
        for cat, colour in STAGE_COLOURS.items():
            out.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="10" height="10" '
                       f'fill="{colour}"/><text x="{lx + 13:.1f}" y="{ly}">{cat}</text>')
            lx += 13 + _CHAR_WIDTH * len(cat) + 12
    out.append("</svg>")
    return "\n".join(out)
