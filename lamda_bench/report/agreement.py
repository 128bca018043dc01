"""``agreement``: estimate-mode records against measured CUDA records of the same cells.

The same suite run twice, once measured on a GPU and once in estimate mode (fake tensors,
``--set mode=estimate``), gives two records per cell whose ids differ only because ``mode``
does. Cells are paired on everything else in the resolved cell (device, mode and timeout
left out), and the estimate's tracker peak (``memory.peak``) is set against the CUDA
allocator's ``cuda_max_allocated`` of the measurement: the figure a user renting a GPU cares
about. A pair agrees when the two are within ``tolerance`` (relative, default 3%).

What the estimate cannot see, by construction, is memory the CUDA libraries take inside one
op (cuBLAS/cuBLASLt workspaces, kept in the caching allocator after the BLAS warm-up): a
constant per process, visible here as the gap that stays the same across cells. The table
shows that gap in bytes so it is not mistaken for an error in the accounting that scales.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..results.record import CELL, ENV, INFO, MEMORY, TIME, run_device, run_mode
from .escape import md, md_code
from .records import cell_key, get, is_ok, load_dir, method_label
from .tables import md_table
from .units import UNITS_NOTE, fmt_bytes, fmt_on_card, fmt_seconds

DEFAULT_TOLERANCE = 0.03
# how an estimate was traced, and a card (which only adds predictions), are not what a cell measures
_NOT_PAIRED_ON = ("device", "mode", "timeout_s", "trace", "card", "allocator")


def pair_key(record: dict[str, Any]) -> str:
    """The resolved cell without the fields an estimate and a measurement differ in."""
    return cell_key(record, _NOT_PAIRED_ON)


def agreement_rows(measured: list[dict], estimated: list[dict], tolerance: float = DEFAULT_TOLERANCE
                   ) -> list[dict[str, Any]]:
    """One row per cell present in both sets: figures, relative and absolute gap, verdict."""
    est_by_key = {pair_key(r): r for r in estimated if run_mode(r) == "estimate"}
    rows = []
    for m in measured:
        if run_mode(m) != "measure":
            continue
        e = est_by_key.get(pair_key(m))
        if e is None:
            continue
        row: dict[str, Any] = {"measured": m, "estimated": e, "verdict": None, "rel": None, "gap": None}
        allocated, peak = get(m, MEMORY.cuda_max_allocated), get(e, MEMORY.peak)
        if not (is_ok(m) and is_ok(e)):
            row["verdict"] = f"not compared: measured {m.get('status')}, estimate {e.get('status')}"
        elif allocated is None or peak is None:
            row["verdict"] = "not compared: no CUDA allocator peak in the measurement"
        else:
            row["gap"] = allocated - peak
            row["rel"] = (peak - allocated) / allocated
            row["verdict"] = "agrees" if abs(row["rel"]) <= tolerance else "differs"
        rows.append(row)
    return rows


def _cell_label(rec: dict[str, Any]) -> str:
    c = rec.get("cell") or {}
    shape = f"{c.get('d_in')}x{c.get('d_out') or c.get('d_in')}" if c.get("workload") == "linear" else c.get("workload")
    extras = []
    if c.get("targets") not in (None, "all"):
        extras.append(f"targets={c.get('targets')}")
    if c.get("gradient_checkpointing"):
        extras.append("checkpointing")
    if (c.get("options") or {}).get("autocast_adapter_dtype") is False:
        extras.append("adapters in model dtype")
    return " ".join([str(shape), f"b{c.get('batch')} s{c.get('seq')}"] + extras)


def agreement(measured_dir: Path, estimated_dir: Path, tolerance: float = DEFAULT_TOLERANCE) -> str:
    """Markdown table: per cell, estimated peak vs measured CUDA max allocated (and reserved)."""
    rows = agreement_rows(load_dir(measured_dir), load_dir(estimated_dir), tolerance)
    table = []
    for row in rows:
        m, e = row["measured"], row["estimated"]
        rel = "n/a" if row["rel"] is None else f"{row['rel'] * 100:+.2f}%"
        table.append([
            method_label(m), get(m, CELL.r), _cell_label(m),
            fmt_bytes(get(e, MEMORY.peak)), fmt_bytes(get(m, MEMORY.peak)),
            fmt_bytes(get(m, MEMORY.cuda_max_allocated)), fmt_bytes(get(m, MEMORY.cuda_max_reserved)),
            rel, fmt_bytes(row["gap"]), row["verdict"],
        ])
    card = _card_table(rows) + _time_table(rows)
    compared = [r for r in rows if r["rel"] is not None]
    agree = sum(1 for r in compared if r["verdict"] == "agrees")
    devices = sorted({str(get(r["measured"], ENV.device_name)) for r in rows} - {"None"})
    est_devices = sorted({str(get(r["estimated"], INFO.estimate_device) or run_device(r["estimated"]))
                          for r in rows})
    out = [
        f"# Estimate vs measured: {md_code(estimated_dir)} against {md_code(measured_dir)}",
        "",
        md(f"Measured on: {', '.join(devices) or 'n/a'}. Estimates ran on fake tensors for: "
           f"{', '.join(est_devices) or 'n/a'}."),
        f"{len(rows)} cells paired; {len(compared)} compared; {agree} agree within {tolerance * 100:g}% "
        "(estimate `memory.peak` vs measured `cuda_max_allocated`).",
        "",
        md_table(["method", "r", "cell", "estimated peak", "measured tracker peak", "CUDA max allocated",
                  "CUDA max reserved", "estimate vs allocated", "allocated - estimate", "verdict"], table),
        "",
        "The gap column is what the CUDA allocator held beyond the tensors the step created: "
        "a gap that is the same in every cell is a per-process constant (cuBLAS / cuBLASLt "
        "workspaces, kept by the caching allocator after the BLAS warm-up), not accounting that scales.",
        "",
        *card,
        UNITS_NOTE,
    ]
    return "\n".join(out) + "\n"


def _rel(predicted: Any, measured: Any) -> float | None:
    return None if predicted is None or not measured else (predicted - measured) / measured


def _time_table(rows: list[dict[str, Any]]) -> list[str]:
    """Where the estimates name a card and the measurements were timed: the time model's predicted
    step time (``time.step_s_predicted``) against the measured median step, cell by cell. The
    committed H100 cells calibrated the model (docs/step-time.md), so on them this is the in-sample
    error; the record's out-of-sample band (``info.time_model.error_band``) is quoted beside it."""
    import statistics

    table, errs, band = [], {}, None
    for row in rows:
        m, e = row["measured"], row["estimated"]
        predicted, measured = get(e, TIME.step_s_predicted), get(m, TIME.step_median_s)
        if predicted is None or measured is None or not (is_ok(m) and is_ok(e)):
            continue
        band = band or get(e, "info.time_model.error_band")
        rel = _rel(predicted, measured)
        errs.setdefault(str(get(m, CELL.workload)), []).extend([abs(rel)] if rel is not None else [])
        table.append([method_label(m), get(m, CELL.r), _cell_label(m), get(e, "cell.card"),
                      fmt_seconds(predicted), fmt_seconds(measured), "n/a" if rel is None else f"{rel * 100:+.2f}%"])
    if not table:
        return []
    lines = [f"- {md(w)} ({len(v)} cells): absolute error median {statistics.median(v) * 100:.2f}%, "
             f"largest {max(v) * 100:.2f}%." for w, v in sorted(errs.items()) if v]
    out_of_sample = (f" The model's out-of-sample band, from its records: median {band['median_abs_error'] * 100:.1f}%, "
                     f"largest {band['max_abs_error'] * 100:.1f}% over {band['points']} public points "
                     f"({band.get('source', 'docs/step-time.md')})." if band else "")
    return [
        "## On the card: predicted step time vs measured",
        "",
        md(f"{len(table)} cells: the time model's step time (time.step_s_predicted) against the measured median "
           f"step (time.step_median_s). Where these measurements calibrated the model, this is its "
           f"in-sample error.{out_of_sample} Per workload:"),
        "",
        *lines,
        "",
        md_table(["method", "r", "cell", "card", "predicted step", "measured step (median)", "error"], table),
        "",
    ]


def _card_table(rows: list[dict[str, Any]]) -> list[str]:
    """Where the estimates name a card: the allocator model's reserved peak against CUDA's
    ``max_memory_reserved``, and the device peak against NVML's used memory, cell by cell, with the
    error summarised per workload (a 7B model's cells and bare linears are not one population). A
    replay that ran out of memory is compared with the measurement's status, not with a figure."""
    import statistics

    table, reserved_errs, device_errs = [], {}, {}
    for row in rows:
        m, e = row["measured"], row["estimated"]
        reserved, device = get(e, MEMORY.reserved_peak), get(e, MEMORY.device_peak)
        if reserved is None or not is_ok(e):
            continue
        oom = get(e, "info.allocator.oom")
        head = [method_label(m), get(m, CELL.r), _cell_label(m), get(e, "cell.card")]
        if oom or not is_ok(m):
            measured_oom = m.get("status") == "oom"
            verdict = ("agrees: both out of memory" if oom and measured_oom else
                       "differs: predicted out of memory" if oom else f"not compared: measured {m.get('status')}")
            table.append(head + [fmt_on_card(e, MEMORY.reserved_peak), "out of memory" if measured_oom else "n/a", verdict,
                                 f"> {fmt_bytes(device)}" if oom else fmt_bytes(device), "n/a", ""])
            continue
        r_rel = _rel(reserved, get(m, MEMORY.cuda_max_reserved))
        d_rel = _rel(device, get(m, MEMORY.nvml_used))
        workload = str(get(m, CELL.workload))
        reserved_errs.setdefault(workload, []).extend([abs(r_rel)] if r_rel is not None else [])
        device_errs.setdefault(workload, []).extend([abs(d_rel)] if d_rel is not None else [])
        table.append(head + [fmt_bytes(reserved), fmt_bytes(get(m, MEMORY.cuda_max_reserved)),
                             "n/a" if r_rel is None else f"{r_rel * 100:+.2f}%",
                             fmt_bytes(device), fmt_bytes(get(m, MEMORY.nvml_used)),
                             "n/a" if d_rel is None else f"{d_rel * 100:+.2f}%"])
    if not table:
        return []

    def summary(errs: list[float]) -> str:
        if not errs:
            return "n/a"
        return f"median {statistics.median(errs) * 100:.2f}%, largest {max(errs) * 100:.2f}%"

    lines = [f"- {md(w)} ({len(reserved_errs[w])} cells): reserved peak vs CUDA `max_memory_reserved`, absolute "
             f"error {summary(reserved_errs[w])}; device peak (reserved + context) vs NVML used, "
             f"{summary(device_errs[w])}." for w in sorted(reserved_errs)]
    return [
        "## On the card: predicted reserved and device memory vs measured",
        "",
        md(f"{len(table)} cells; the reserved peak is the allocator model's (lamda_bench/card), the device peak "
           "adds the card's context. Per workload:"),
        "",
        *lines,
        "",
        md_table(["method", "r", "cell", "card", "predicted reserved", "CUDA max reserved", "error",
                  "predicted device", "NVML used", "error"], table),
        "",
    ]
