"""The one base of every bad-input error in lamda_bench, and how an error becomes one line.

A ``UserError`` says what is wrong with what the user gave (a suite, a cell, a results
directory, a flag) in one line, by convention. The CLI prints it as
``lamda-bench: error: <message>`` and exits 2, and a cell's record keeps it as its
``error`` without a traceback; anything else is a bug and keeps its traceback. Each module
keeps its own subclass (``SuiteError``, ``CellError``, ``MethodError``, ...) so a message
still says where it came from. ``UserError`` is a ``ValueError``, as every one of them was.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input, described in one line."""


def is_user_error(e: BaseException) -> bool:
    return isinstance(e, UserError)


def one_line(e: BaseException) -> str:
    """The error as one line: a user error's own first line; anything else prefixed with its
    type (``RuntimeError: ...``), since its message alone may not say what failed."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if isinstance(e, UserError):
        return first or type(e).__name__
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
