"""The one "did you mean" helper behind every unknown-name message (methods, workloads, suite
keys and values, target modules)."""

from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(word: object, candidates: Iterable[object]) -> str:
    """``" (did you mean 'lora'?)"`` for the closest candidate spelling; "" when none is close."""
    match = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
