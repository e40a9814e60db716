"""Rendering of report content to Markdown, HTML and plain text.

Rules of this module:

- A report is a sequence of blocks (heading, paragraph, bullets, table, image, details); the
  same blocks render to Markdown and to HTML through the jinja2 templates in ``templates/``,
  so the two documents always say the same thing.
- Tables are DataFrames; ``format_frame`` turns one into text cells once, and every renderer
  uses that: missing numbers read ``n/a`` (never ``0`` or ``nan``), floats have four
  significant digits (thousands grouped from 1,000 up), booleans read ``yes``/``no``. The
  cells are then laid out by pandas: ``DataFrame.to_html``, ``DataFrame.to_markdown``
  (tabulate, pipe tables) and tabulate's plain layout for terminals.
- Text is escaped for the target: jinja2's autoescape in HTML; in Markdown ``&`` and ``<``
  become entities, line breaks are flattened, and table cells also escape ``|`` and ``\\``.
- The HTML page is one self-contained file: images are embedded as ``data:`` URIs when their
  bytes are given (``images``), styles are inline, there are no scripts and no external
  resources. Markdown links images by relative path (for terminals and pull requests).
- Nothing here reads a clock or the environment, so output depends on input only.
"""

from __future__ import annotations

import base64
import json
import math
import mimetypes
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import jinja2
import pandas as pd

__all__ = [
    "Block",
    "Bullets",
    "Details",
    "Heading",
    "Image",
    "Para",
    "Table",
    "format_frame",
    "flat_items",
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
    strong: bool = False  # a lead paragraph (the headline), set off in HTML


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


@dataclass(frozen=True)
class Details:
    """Blocks folded away under a one-line summary (HTML ``<details>``; in Markdown, a
    heading followed by the blocks)."""

    summary: str
    blocks: tuple[Heading | Para | Bullets | Table | Image, ...]


Block = Heading | Para | Bullets | Table | Image | Details


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


def _align(cells: pd.DataFrame, numeric: frozenset[str]) -> list[str]:
    return ["right" if c in numeric else "left" for c in cells.columns]


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub pipe table (no trailing newline); a frame with no rows gives a header only."""
    cells, numeric = format_frame(df)
    if not len(cells.columns):
        return "(empty table)"
    escaped = pd.DataFrame({_md_cell(c): [_md_cell(v) for v in cells[c]]
                            for c in cells.columns}, index=cells.index)
    return escaped.to_markdown(index=False, tablefmt="pipe", disable_numparse=True,
                               colalign=_align(cells, numeric))


def html_table(df: pd.DataFrame) -> str:
    """An HTML ``<table>`` (``DataFrame.to_html`` of the text cells, escaped)."""
    cells, _ = format_frame(df)
    return cells.to_html(index=False, border=0, escape=True, classes="data", na_rep=NA_TEXT)


def text_table(df: pd.DataFrame) -> str:
    """A plain-text table for terminals: columns padded, numbers right-aligned."""
    cells, numeric = format_frame(df)
    if not len(cells.columns):
        return ""
    return cells.to_markdown(index=False, tablefmt="simple", disable_numparse=True,
                             colalign=_align(cells, numeric))


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (letters, digits, ``.``, ``_``, ``-``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return s or "x"


def _md_inline(text: str) -> str:
    """One line of Markdown text: line breaks flattened, ``&`` and ``<`` as entities so that
    text such as ``<idle>`` is shown rather than taken for an HTML tag."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace("\r", " ")
            .replace("\n", " "))


def _data_uri(src: str, data: bytes) -> str:
    kind = mimetypes.guess_type(src)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


@cache
def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.report", "templates"),
                             autoescape=autoescape, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["md"] = _md_inline
    env.filters["md_href"] = lambda href: str(href).replace(" ", "%20")
    env.filters["md_table"] = markdown_table
    env.filters["html_table"] = lambda df: jinja2.filters.Markup(html_table(df))
    env.tests["kind"] = lambda block, name: type(block).__name__ == name
    return env


def markdown_document(blocks: Iterable[Block]) -> str:
    """The blocks as one Markdown document, ending with a newline."""
    text = _environment(False).get_template("report.md.j2").render(blocks=list(blocks))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def html_document(title: str, blocks: Iterable[Block],
                  images: Mapping[str, bytes] | None = None) -> str:
    """A self-contained HTML page holding the blocks. ``images`` maps an ``Image.src`` to
    the image's bytes, embedded as a data URI; an image not in it is linked by ``src``."""
    embedded = {src: _data_uri(src, data) for src, data in (images or {}).items()}
    return _environment(True).get_template("report.html.j2").render(
        title=title, blocks=list(blocks), embedded=embedded)


def flat_items(prefix: str, value: object) -> Sequence[tuple[str, str]]:
    """``(dotted key, text)`` pairs of a nested mapping, keys sorted (for settings tables)."""
    if isinstance(value, dict):
        out: list[tuple[str, str]] = []
        for k in sorted(value, key=str):
            out += flat_items(f"{prefix}.{k}" if prefix else str(k), value[k])
        return out
    if isinstance(value, str):
        return [(prefix, value)]
    return [(prefix, json.dumps(value, sort_keys=True, ensure_ascii=False))]
