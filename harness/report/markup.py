"""Rendering of report content to Markdown, HTML and plain text.

Rules of this module:

- A report is a sequence of blocks (heading, paragraph, bullets, table, image); the same blocks
  render to Markdown and to HTML, so the two documents always say the same thing.
- Tables are DataFrames; ``format_frame`` turns one into text cells once, and every renderer
  uses that: missing numbers read ``n/a`` (never ``0`` or ``nan``), floats have four
  significant digits (thousands grouped from 1,000 up), booleans read ``yes``/``no``.
- Text is escaped for the target: ``html.escape`` in HTML; in Markdown ``&`` and ``<`` become
  entities, line breaks are flattened, and table cells also escape ``|`` and ``\\``.
- Nothing here reads a clock or the environment, so output depends on input only.
- Markdown tables are rendered here (GitHub pipe tables) rather than with ``tabulate``, which
  is not a dependency of stagecost.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

__all__ = [
    "Block",
    "Bullets",
    "Heading",
    "Image",
    "Para",
    "Table",
    "format_frame",
    "format_value",
    "html_document",
    "html_table",
    "markdown_document",
    "markdown_table",
    "slug",
    "text_table",
]

NA_TEXT = "n/a"


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    """A list; an item is text, or ``(text, href)`` for a link."""

    items: tuple[str | tuple[str, str], ...]


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame
    caption: str = ""


@dataclass(frozen=True)
class Image:
    src: str
    alt: str


Block = Heading | Para | Bullets | Table | Image


def format_value(value: object) -> str:
    """One cell as text (see the module rules)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return NA_TEXT
    if isinstance(value, bool):
        return "yes" if value else "no"
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()  # numpy scalar -> Python scalar
        if isinstance(value, bool):
            return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return NA_TEXT
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return str(value)


def format_frame(df: pd.DataFrame) -> tuple[pd.DataFrame, frozenset[str]]:
    """``df`` as text cells, and the names of its numeric columns (to align right)."""
    numeric = frozenset(str(c) for c in df.columns
                        if pd.api.types.is_numeric_dtype(df[c])
                        and not pd.api.types.is_bool_dtype(df[c]))
    out = pd.DataFrame({str(c): [format_value(v) for v in df[c].tolist()] for c in df.columns},
                       index=range(len(df)), columns=[str(c) for c in df.columns])
    return out, numeric


def _md_cell(text: str) -> str:
    return _md_inline(text.replace("\\", "\\\\").replace("|", "\\|"))


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub pipe table (no trailing newline); a frame with no rows gives a header only."""
    cells, numeric = format_frame(df)
    cols = list(cells.columns)
    if not cols:
        return "(empty table)"
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |",
             "|" + "|".join("---:" if c in numeric else ":---" for c in cols) + "|"]
    for row in cells.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
    return "\n".join(lines)


def html_table(df: pd.DataFrame) -> str:
    """An HTML ``<table>`` (``DataFrame.to_html`` of the text cells, escaped)."""
    cells, _ = format_frame(df)
    return cells.to_html(index=False, border=0, escape=True, classes="data", na_rep=NA_TEXT)


def text_table(df: pd.DataFrame) -> str:
    """A plain-text table for terminals: columns padded, numbers right-aligned."""
    cells, numeric = format_frame(df)
    cols = list(cells.columns)
    if not cols:
        return ""
    widths = [max([len(c)] + [len(v) for v in cells[c]]) for c in cols]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if c in numeric else v.ljust(w)
                 for v, w, c in zip(values, widths, cols, strict=True)]
        return "  ".join(parts).rstrip()

    rows = [line(cols), line(["-" * w for w in widths])]
    rows += [line(list(r)) for r in cells.itertuples(index=False, name=None)]
    return "\n".join(rows)


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (letters, digits, ``.``, ``_``, ``-``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return s or "x"


def _md_inline(text: str) -> str:
    """One line of Markdown text: line breaks flattened, ``&`` and ``<`` as entities so that
    text such as ``<idle>`` is shown rather than taken for an HTML tag."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace("\r", " ")
            .replace("\n", " "))


def markdown_document(blocks: Iterable[Block]) -> str:
    """The blocks as one Markdown document, ending with a newline."""
    parts: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append("#" * max(1, min(b.level, 6)) + " " + _md_inline(b.text))
        elif isinstance(b, Para):
            parts.append(_md_inline(b.text))
        elif isinstance(b, Bullets):
            items = []
            for item in b.items:
                if isinstance(item, tuple):
                    label, href = item
                    items.append(f"- [{_md_inline(label)}]({href.replace(' ', '%20')})")
                else:
                    items.append(f"- {_md_inline(item)}")
            parts.append("\n".join(items))
        elif isinstance(b, Table):
            if b.caption:
                parts.append(f"*{_md_inline(b.caption)}*")
            parts.append(markdown_table(b.frame))
        elif isinstance(b, Image):
            parts.append(f"![{_md_inline(b.alt)}]({b.src})")
        else:  # pragma: no cover - the Block union is closed
            raise TypeError(f"not a report block: {b!r}")
    return "\n\n".join(parts) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; color: #222; }
h1, h2, h3 { font-weight: 600; }
table.data { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
table.data th, table.data td { padding: 0.2em 0.6em; border-bottom: 1px solid #ddd; }
table.data td { font-variant-numeric: tabular-nums; }
table.data th { text-align: left; background: #f4f4f4; }
p.caption { font-style: italic; margin-bottom: 0.2em; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
""".strip()


def html_document(title: str, blocks: Iterable[Block]) -> str:
    """A self-contained HTML page (inline style, no scripts) holding the blocks."""
    esc = html.escape
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            level = max(1, min(b.level, 6))
            body.append(f"<h{level}>{esc(b.text)}</h{level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{esc(b.text)}</p>")
        elif isinstance(b, Bullets):
            items = []
            for item in b.items:
                if isinstance(item, tuple):
                    label, href = item
                    items.append(f'<li><a href="{esc(href)}">{esc(label)}</a></li>')
                else:
                    items.append(f"<li>{esc(item)}</li>")
            body.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        elif isinstance(b, Table):
            if b.caption:
                body.append(f'<p class="caption">{esc(b.caption)}</p>')
            body.append(html_table(b.frame))
        elif isinstance(b, Image):
            body.append(f'<img src="{esc(b.src)}" alt="{esc(b.alt)}">')
        else:  # pragma: no cover - the Block union is closed
            raise TypeError(f"not a report block: {b!r}")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n<style>\n{_STYLE}\n</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
