"""Escaping text from records for each output it lands in.

Records carry user text (suite descriptions, target names, error messages). In
``report.md`` a ``|`` breaks a table row and ``<script>`` or ``<img onerror=...>`` would be
live HTML in a Markdown viewer; in ``results.csv`` a field starting with ``=``, ``+``,
``-``, ``@``, tab or carriage return is a live spreadsheet formula (OWASP, "CSV Injection").
"""

from __future__ import annotations

import re
from typing import Any

# Characters Markdown gives meaning to inside a table cell or inline text. ``_`` is left
# alone: GitHub does not emphasise inside words (d_in), and escaping it would clutter the
# same text printed to a terminal.
_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _no_tags(text: str) -> str:
    """``&`` and ``<`` as entities: no tag can open (``>`` alone is harmless and kept)."""
    return text.replace("&", "&amp;").replace("<", "&lt;")


def md(text: Any) -> str:
    """Text safe inside a Markdown table cell: no HTML tag can open (``<`` -> ``&lt;``),
    Markdown punctuation backslash-escaped, newlines folded to spaces."""
    s = _no_tags(str(text))
    s = s.replace("\r", " ").replace("\n", " ")
    return _MD_SPECIAL.sub(r"\\\1", s)


def md_code(text: Any) -> str:
    """Text shown as inline code (ids, paths): backticks and pipes cannot close or split it."""
    s = str(text).replace("\r", " ").replace("\n", " ").replace("`", "'").replace("|", "\\|")
    return f"`{s}`"


def csv_field(value: Any) -> Any:
    """A CSV value that no spreadsheet evaluates: text starting with a formula character
    gets a leading apostrophe (OWASP's advice). Numbers, including negative ones, stay
    numbers so the flat table keeps its raw figures."""
    if not isinstance(value, str) or not value.startswith(FORMULA_PREFIXES):
        return value
    if _NUMBER.match(value):
        return value
    return "'" + value
