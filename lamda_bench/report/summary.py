"""The table ``lamda-bench run`` prints when a run ends: one row per cell in suite order,
the settings that vary (``axes.Axes``) as columns, the constant ones in a line above."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from ..results.record import MEMORY, PARAMS
from .axes import Axes
from .records import get
from .units import UNITS_NOTE, fmt_bytes, fmt_count, fmt_throughput


def summary_table(records: list[dict[str, Any]]) -> str:
    """``records`` in the order the suite lists its cells; figures in human units."""
    axes = Axes.of(records)
    rows = [[rec.get("status")] + axes.row(rec) + [
        fmt_count(get(rec, PARAMS.trainable)),
        fmt_bytes(get(rec, MEMORY.saved_activations_adapter)),
        fmt_bytes(get(rec, MEMORY.peak)),
        fmt_throughput(rec),
    ] for rec in records]
    headers = ["status"] + axes.columns() + ["trainable params", "saved act. (adapter)", "peak", "throughput"]
    return "\n".join([axes.header(), tabulate(rows, headers=headers, disable_numparse=True), UNITS_NOTE])
