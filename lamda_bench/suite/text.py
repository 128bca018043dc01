"""A suite file's text: read with bounds, decoded, parsed without recursing without end.

- The file is read with ``safe_files.read_small_file``: a regular file of at most
  ``MAX_SUITE_BYTES``, never ``/dev/zero`` or a FIFO.
- Not UTF-8: one line with the offset of the first bad byte. A UTF-8 byte-order mark (some
  Windows editors write one) is dropped: it carries no meaning and TOML does not allow it.
- ``toml_loads`` refuses nesting deeper than ``MAX_NESTING`` before ``tomllib`` recurses into
  it (its RecursionError would escape as a traceback).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

MAX_SUITE_BYTES = 1 << 20  # a suite is a few KiB of TOML
MAX_NESTING = 50  # deeper than this is no suite


def read_suite_text(path: Path, error: type[Exception]) -> str:
    """The text of the suite file ``path`` (BOM dropped), or ``error`` with one line."""
    from ..safe_files import MissingFileError, UnsafeFileError, read_small_file

    try:
        data = read_small_file(path, "suite file", limit=MAX_SUITE_BYTES)
    except MissingFileError:
        raise error(f"{path}: no such suite file") from None
    except UnsafeFileError as e:
        raise error(str(e)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    return text.removeprefix("\ufeff")


class TooDeep(Exception):
    """TOML nested beyond MAX_NESTING."""


def toml_loads(text: str) -> dict[str, Any]:
    """``tomllib.loads``, refusing nesting deeper than MAX_NESTING before tomllib recurses
    into it (a RecursionError would escape as a traceback)."""
    depth = deepest = 0
    in_string: str | None = None
    escaped = False
    for ch in text:  # a cheap over-estimate: brackets and braces outside strings and comments
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\" and in_string == '"':
                escaped = True
            elif ch == in_string:
                in_string = None
        elif ch in "\"'":
            in_string = ch
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == "#":
            in_string = "\n"  # skip the comment up to the end of its line
    if deepest > MAX_NESTING:
        raise TooDeep
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise TooDeep from None
