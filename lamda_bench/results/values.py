"""The values of a record that readers compute with: checked on load, made standard JSON on write.

Why: a record is a line of a text file that anything can edit or damage. A string or NaN
where a number belongs (``"memory": {"peak": "12 GB"}``, ``NaN``, ``Infinity``) used to reach
the report, ``compare``, the gate and ``run``'s summary, and crash them with a traceback and
exit 1, the code of a regression. ``check_values`` finds every such value, sets it to null
(the readers already treat null as "not recorded") and returns one problem per value, which
the loader turns into a warning naming file, line and field. A record whose ``id`` is
missing or not a string cannot be matched to a cell and is refused as a whole.

On the way out, ``finite_or_null`` turns a non-finite float into null (listing the fields
in the record's ``nonfinite_fields``), so ``results.jsonl`` stays standard JSON
(``json.dumps(..., allow_nan=False)``): ``NaN`` and ``Infinity`` are not JSON, and other
tools reject the line.
"""

from __future__ import annotations

import math
from typing import Any

from .record import FLOPS

# Sections whose leaves are numbers (or null); nested tables (memory.at_peak) are walked.
NUMERIC_SECTIONS = ("params", "memory", "flops", "time")
# Text fields inside those sections.
TEXT_FIELDS = frozenset({FLOPS.attention_counting, FLOPS.grouped_counting})
# Cell keys that are numbers (lamda_bench.suite.cell.Cell).
NUMERIC_CELL_KEYS = ("r", "alpha", "layers", "d_in", "d_out", "batch", "seq", "steps", "warmup", "lr",
                     "seed", "timeout_s")
# Sections that are tables (or null) when present.
TABLE_SECTIONS = ("cell", "params", "memory", "flops", "time", "series", "predicted", "info", "artifacts",
                  "env", "launch")


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool); an int too large for a float is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond 1.8e308: no reader's arithmetic survives it
        return False


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_values(record: dict[str, Any]) -> list[str]:
    """Null every value a reader cannot compute with, in place; one problem text each
    ("memory.peak: '12 GB' is not a number; treated as missing")."""
    problems: list[str] = []

    def bad(path: str, value: Any, what: str = "is not a number") -> None:
        problems.append(f"{path}: {_shown(value)} {what}; treated as missing")

    for section in TABLE_SECTIONS:
        value = record.get(section)
        if value is not None and not isinstance(value, dict):
            bad(section, value, "is not a table")
            record[section] = None

    def numeric(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}.{key}"
            if isinstance(value, dict):
                numeric(value, path)
            elif value is None or path in TEXT_FIELDS and isinstance(value, str):
                continue
            elif not is_number(value):
                bad(path, value)
                node[key] = None

    for section in NUMERIC_SECTIONS:
        if isinstance(record.get(section), dict):
            numeric(record[section], section)
    cell = record.get("cell")
    if isinstance(cell, dict):
        for key in NUMERIC_CELL_KEYS:
            value = cell.get(key)
            if value is not None and not is_number(value):
                bad(f"cell.{key}", value)
                cell[key] = None
    series = record.get("series")
    if isinstance(series, dict):
        for key, values in series.items():
            if not isinstance(values, list):
                bad(f"series.{key}", values, "is not a list")
                series[key] = []
                continue
            for i, value in enumerate(values):
                if value is not None and not isinstance(value, bool) and not is_number(value):
                    bad(f"series.{key}[{i}]", value)
                    values[i] = None
    # Anywhere else, only non-finite numbers (a reader's arithmetic turns them into nonsense).
    for path, parent, key in _nonfinite(record, ""):
        bad(path, parent[key], "is not a finite number")
        parent[key] = None
    return problems


def _nonfinite(node: Any, prefix: str):
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        path = f"{prefix}.{key}" if isinstance(node, dict) and prefix else (
            str(key) if isinstance(node, dict) else f"{prefix}[{key}]")
        if isinstance(value, float) and not math.isfinite(value):
            yield path, node, key
        elif isinstance(value, (dict, list)):
            yield from _nonfinite(value, path)


def finite_or_null(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` with every NaN/infinity replaced by null and the fields listed in
    ``nonfinite_fields`` (only when there are any); the record itself is not changed."""
    import copy

    if not any(True for _ in _nonfinite(record, "")):
        return record
    record = copy.deepcopy(record)
    fields = []
    for path, parent, key in list(_nonfinite(record, "")):
        parent[key] = None
        fields.append(path)
    record["nonfinite_fields"] = sorted(set(record.get("nonfinite_fields") or []) | set(fields))
    return record
