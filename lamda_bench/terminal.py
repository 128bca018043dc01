"""Text for a terminal: control characters made visible, so data cannot drive the terminal.

A suite's description, a workload or target name, an option value or a record's error
message reaches the screen through ``--dry-run``, the run summary, warnings and error lines.
Printed raw, an escape sequence in any of them (``\\x1b[2J``, an OSC 8 hyperlink, a title
change) is executed by the terminal instead of shown. ``printable`` writes every C0/C1
control character and DEL as a visible escape (``\\x1b``, ``\\n``), keeping the text on
its line; ordinary Unicode text passes unchanged.
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls (tab included: it would break column alignment), DEL, C1 controls, and the
# Unicode line/paragraph separators and bidi overrides that reorder what the eye reads.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    ch = match.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(value: Any) -> str:
    """``str(value)`` with control characters escaped (``"a\\x1b[31mb"`` -> ``a\\x1b[31mb`` shown
    literally); safe to print on one terminal line."""
    return _CONTROL.sub(_escape, str(value))


def printable_lines(text: str) -> str:
    """``printable`` line by line: multi-line output (a table) keeps its line breaks."""
    return "\n".join(printable(line) for line in str(text).split("\n"))


def shown_name(name: Any) -> str:
    """A key or name as an error line shows it: an ASCII name as is, anything else as its
    ``repr`` with every non-ASCII character escaped (``'l\\u043era_r'``), so a homoglyph
    (Cyrillic ``о`` for Latin ``o``) cannot print identical to the name it imitates."""
    text = name if isinstance(name, str) else repr(name)
    if text.isascii() and text.isprintable():
        return text
    return ascii(text)
