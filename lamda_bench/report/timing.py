"""Step times a reader should not take as findings.

A median over two or three timed steps can catch one stall (a page fault, a clock change,
a lazy CUDA init): the layers report once showed LaMDA at d=2048 taking 11.9 ms where its
neighbours took 1.6 ms. Such a time is flagged, with the reason, instead of being drawn as
a finding. Neighbours are the cells of the same shape group (the same model, batch,
sequence, dtype, device and mode), whose adapters differ but whose base work is the same;
a group needs three timed cells for its median to say what is typical.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..results.record import CELL, TIME
from .axes import shape_key
from .records import get, method_label
from .units import fmt_seconds

FEW_STEPS = 5  # fewer timed steps than this: one outlier moves the median
FAR_OFF = 3.0  # this many times slower (or faster) than the neighbours' median


def flagged_step_times(records: list[dict[str, Any]]) -> dict[str, str]:
    """{record id: one-line reason} for timed records with few steps whose median step time
    is FAR_OFF times away from the median of their shape group (three or more timed cells)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if get(rec, TIME.step_median_s):
            groups.setdefault(shape_key(rec), []).append(rec)
    flagged: dict[str, str] = {}
    for group in groups.values():
        if len(group) < 3:
            continue
        typical = statistics.median(get(o, TIME.step_median_s) for o in group)
        for rec in group:
            steps = get(rec, TIME.steps_timed) or 0
            if steps >= FEW_STEPS:
                continue
            own = get(rec, TIME.step_median_s)
            if own > FAR_OFF * typical or own * FAR_OFF < typical:
                flagged[str(rec.get("id"))] = (
                    f"{method_label(rec)} r={get(rec, CELL.r)} ({rec.get('id')}): {fmt_seconds(own)} from "
                    f"{steps} timed step(s) against {fmt_seconds(typical)} median of its shape group")
    return flagged
