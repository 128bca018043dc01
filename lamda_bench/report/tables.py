"""Markdown tables (GitHub format, via tabulate) of result records.

Every table shows the settings that vary within the records it is given (``axes.Axes``)
and names the constant ones in a header line; every row names its mode, so an estimate
(fake tensors: byte counts of a step that was never allocated) is never mistaken for a
measurement. Text from records is escaped for Markdown (``escape.md``).
"""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from ..results.record import CELL, FLOPS, MEMORY, PARAMS, PREDICTED_FLOPS, PREDICTED_MEMORY, PREDICTED_PARAMS, TIME
from .axes import Axes
from .escape import md, md_code
from .records import get, is_ok, method_label, mode
from .units import MISSING, fmt_bytes, fmt_count, fmt_flops, fmt_on_card, fmt_rate, fmt_seconds, fmt_throughput, ratio


class Raw(str):
    """A table cell already in Markdown (inline code, links): not escaped again."""


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[c if isinstance(c, Raw) else md(c) for c in row] for row in rows]
    return tabulate(cells, headers=[md(h) for h in headers], tablefmt="github", disable_numparse=True)


def _sum(*values: Any) -> float | None:
    return None if any(v is None for v in values) else sum(values)


def throughput_spread(rec: dict[str, Any]) -> tuple[float | None, float | None]:
    """tokens/s of the slowest and the fastest timed step."""
    n = (get(rec, CELL.batch) or 0) * (get(rec, CELL.seq) or 0)
    slow, fast = get(rec, TIME.step_max_s), get(rec, TIME.step_min_s)
    return (n / slow if slow else None), (n / fast if fast else None)


def _throughput(rec: dict[str, Any]) -> str:
    rate = get(rec, TIME.tokens_per_s)
    if rate is None:
        return fmt_throughput(rec)  # the time model's prediction on the cell's card, said as such, or n/a
    low, high = throughput_spread(rec)
    spread = f" ({low:,.0f}-{high:,.0f})" if low and high else ""
    return fmt_rate(rate) + spread


# (header, how to read it from a record). Headers say what the figure is.
MEMORY_COLUMNS = (
    ("trainable params", lambda r: fmt_count(get(r, PARAMS.trainable))),
    ("param updates", lambda r: fmt_count(get(r, PARAMS.updates))),
    ("peak", lambda r: fmt_bytes(get(r, MEMORY.peak))),
    ("peak (optimizer phase)", lambda r: fmt_bytes(get(r, MEMORY.peak_step))),
    ("saved activations", lambda r: fmt_bytes(get(r, MEMORY.saved_activations))),
    ("saved activations (adapter)", lambda r: fmt_bytes(get(r, MEMORY.saved_activations_adapter))),
    ("adapter FLOPs (fwd + bwd)", lambda r: fmt_flops(_sum(get(r, FLOPS.adapter_forward),
                                                            get(r, FLOPS.adapter_backward)))),
    ("step FLOPs (fwd + bwd)", lambda r: fmt_flops(_sum(get(r, FLOPS.forward), get(r, FLOPS.backward)))),
)
TIME_COLUMNS = (
    ("step time (median)", lambda r: fmt_seconds(get(r, TIME.step_median_s))),
    ("timed steps", lambda r: str(get(r, TIME.steps_timed, MISSING))),
    ("throughput (min-max)", _throughput),
)


# Shown where a record was estimated on a card (cell key card, issue 39): the caching allocator's
# reserved peak and the device total (reserved + workspaces + context), both predicted.
CARD_COLUMNS = (
    ("on the card: reserved (predicted)", lambda r: fmt_on_card(r, MEMORY.reserved_peak)),
    ("on the card: device (predicted)", lambda r: fmt_on_card(r, MEMORY.device_peak)),
)
PREDICTED_TIME_COLUMNS = (("throughput", fmt_throughput),)
# Shown where a record offloaded activations (cell key offload_activations): the host copies'
# peak, outside every device figure; "-" for a record without offloading.
HOST_COLUMNS = (("host RAM: offloaded activations (not in peak)",
                 lambda r: fmt_bytes(get(r, MEMORY.host_offloaded_peak)) if get(r, MEMORY.host_offloaded_peak) is not None
                 else "none"),)


def results_table(records: list[dict[str, Any]], axes: Axes | None = None) -> str:
    """One row per ok record: the varying settings, then memory, FLOPs and (only where any
    record was timed) time. The header line above it names what is held fixed."""
    ok = [r for r in records if is_ok(r)]
    axes = axes or Axes.of(ok)
    timed = any(get(r, TIME.step_median_s) is not None for r in ok)
    columns = MEMORY_COLUMNS + (TIME_COLUMNS if timed else ())
    if timed:
        from .timing import flagged_step_times

        flagged = flagged_step_times(ok)
        columns = tuple((h, (lambda r, read=read: read(r) + (" (flagged: far off its shape's median)"
                                                             if r.get("id") in flagged else "")))
                        if h == TIME_COLUMNS[0][0] else (h, read) for h, read in columns)

    if any(get(r, MEMORY.optimizer_paged) is not None for r in ok):  # issue 25's optimizers: their state shown
        columns = columns[:3] + OPTIMIZER_COLUMNS + columns[3:]
    if any(get(r, MEMORY.reserved_peak) is not None for r in ok):  # beside the tensor peak
        at = [h for h, _ in columns].index("peak (optimizer phase)") + 1
        columns = columns[:at] + CARD_COLUMNS + columns[at:]
    if any(get(r, MEMORY.host_offloaded_peak) is not None for r in ok):  # after the device figures
        at = [h for h, _ in columns].index("saved activations")
        columns = columns[:at] + HOST_COLUMNS + columns[at:]
    if not timed and any(get(r, TIME.tokens_per_s_predicted) is not None for r in ok):
        columns = columns + PREDICTED_TIME_COLUMNS  # "predicted on CARD", never read as measured
    rows = [axes.row(rec) + [read(rec) for _, read in columns] + [Raw(md_code(rec.get("id")))] for rec in ok]
    return md_table(axes.columns() + [h for h, _ in columns] + ["id"], rows)


# Shown where a record has memory.optimizer_paged (any optimizer but adamw / sgd): the state on the
# device, and the paged state (CUDA unified memory, evictable to host RAM; not in peak).
OPTIMIZER_COLUMNS = (
    ("optimizer state", lambda r: fmt_bytes(get(r, MEMORY.optimizer))),
    ("optimizer state (paged, not in peak)", lambda r: fmt_bytes(get(r, MEMORY.optimizer_paged, 0))),
)


# (label, measured field, predicted field, formatter) for the closed-form check.
PREDICTED_FIELDS = (
    ("trainable params", PARAMS.trainable, PREDICTED_PARAMS.trainable, fmt_count),
    ("param updates", PARAMS.updates, PREDICTED_PARAMS.updates, fmt_count),
    ("saved activations (adapter)", MEMORY.saved_activations_adapter,
     PREDICTED_MEMORY.saved_activations_adapter, fmt_bytes),
    ("adapter forward FLOPs", FLOPS.adapter_forward, PREDICTED_FLOPS.adapter_forward, fmt_flops),
    ("adapter backward FLOPs", FLOPS.adapter_backward, PREDICTED_FLOPS.adapter_backward, fmt_flops),
)
# Checked where a record has memory.optimizer_paged (analytic/optimizers.py's closed forms).
OPTIMIZER_PREDICTED_FIELDS = (
    ("optimizer state", MEMORY.optimizer, PREDICTED_MEMORY.optimizer, fmt_bytes),
    ("optimizer state (paged)", MEMORY.optimizer_paged, PREDICTED_MEMORY.optimizer_paged, fmt_bytes),
)


def predicted_summary(records: list[dict[str, Any]]) -> str:
    """One line per predicted field: how many cells have a closed form, and the one that
    deviates most (observed / predicted). The per-cell figures are in the CSV."""
    rows = []
    fields = PREDICTED_FIELDS
    if any(get(r, MEMORY.optimizer_paged) is not None for r in records if is_ok(r)):
        fields += OPTIMIZER_PREDICTED_FIELDS
    for label, observed_key, predicted_key, fmt in fields:
        pairs = [(rec, get(rec, observed_key), get(rec, predicted_key)) for rec in records if is_ok(rec)]
        pairs = [(rec, o, p) for rec, o, p in pairs if p is not None and o is not None]
        if not pairs:
            continue
        devs = [(abs((ratio(o, p) or 0.0) - 1.0) if p else (0.0 if o == 0 else float("inf")), rec, o, p)
                for rec, o, p in pairs]
        worst, rec, o, p = max(devs, key=lambda t: t[0])
        exact = sum(1 for d, *_ in devs if d == 0)
        if worst == 0:
            rows.append([label, str(len(pairs)), str(exact), "0% (every cell exact)", "-", "-", "-"])
            continue
        rows.append([label, str(len(pairs)), str(exact), f"{worst * 100:.3g}%",
                     f"{method_label(rec)} ({mode(rec)})", f"{fmt(o)} vs {fmt(p)}", Raw(md_code(rec.get("id")))])
    if not rows:
        return ""
    return md_table(["figure", "cells with a closed form", "exact", "largest deviation", "at", "observed vs predicted",
                     "id"], rows)


def failures_table(records: list[dict[str, Any]], axes: Axes | None = None) -> str:
    """Cells that did not finish (oom, error, timeout) with their one-line reason; ``axes``
    of the whole result set, so a failed cell shows the settings that tell it apart."""
    axes = axes or Axes.of(records)
    rows = [[Raw(md_code(rec.get("id")))] + axes.row(rec) + [rec.get("status") or MISSING, rec.get("error") or MISSING]
            for rec in records if not is_ok(rec)]
    return md_table(["id"] + axes.columns() + ["status", "error"], rows)
