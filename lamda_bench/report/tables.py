"""Markdown tables (GitHub format, via tabulate) of result records.

Every row names its mode and device, so an estimate (fake tensors: byte counts of a step
that was never allocated) is never mistaken for a measurement.
"""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from .records import device, get, is_ok, method_label, mode, width
from .units import MISSING, fmt_bytes, fmt_count, fmt_flops, fmt_rate, fmt_ratio, fmt_seconds, ratio


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _opt(value: Any) -> str:
    return MISSING if value is None else str(value)


RESULT_HEADERS = [
    "method", "workload", "d", "r", "batch", "seq", "dtype", "mode", "device",
    "trainable params", "param updates", "peak step memory", "saved activations",
    "saved activations (adapter)", "forward FLOPs", "backward FLOPs", "step time (median)",
    "throughput", "id",
]


def results_table(records: list[dict[str, Any]]) -> str:
    """One row per ok record: shape, mode/device, parameters, memory, FLOPs, time."""
    rows = []
    for rec in records:
        if not is_ok(rec):
            continue
        rows.append([
            method_label(rec), _opt(get(rec, "cell.workload")), _opt(width(rec)), _opt(get(rec, "cell.r")),
            _opt(get(rec, "cell.batch")), _opt(get(rec, "cell.seq")), _opt(get(rec, "cell.dtype")),
            mode(rec), device(rec),
            fmt_count(get(rec, "params.trainable")), fmt_count(get(rec, "params.updates")),
            fmt_bytes(get(rec, "memory.peak")),
            fmt_bytes(get(rec, "memory.saved_activations")),
            fmt_bytes(get(rec, "memory.saved_activations_adapter")),
            fmt_flops(get(rec, "flops.forward")), fmt_flops(get(rec, "flops.backward")),
            fmt_seconds(get(rec, "time.step_median_s")), fmt_rate(get(rec, "time.tokens_per_s")),
            f"`{rec.get('id')}`",
        ])
    return _table(RESULT_HEADERS, rows)


# (label, measured field, predicted field, formatter) for the closed-form check.
PREDICTED_FIELDS = (
    ("trainable params", "params.trainable", "predicted.params.trainable", fmt_count),
    ("param updates", "params.updates", "predicted.params.updates", fmt_count),
    ("saved activations (adapter)", "memory.saved_activations_adapter",
     "predicted.memory.saved_activations_adapter", fmt_bytes),
    ("adapter forward FLOPs", "flops.adapter_forward", "predicted.flops.adapter_forward", fmt_flops),
    ("adapter backward FLOPs", "flops.adapter_backward", "predicted.flops.adapter_backward", fmt_flops),
)


def predicted_table(records: list[dict[str, Any]]) -> str:
    """Observed (measured or estimated, as the mode column says) vs closed form, with the
    ratio observed / predicted; only figures that have a prediction."""
    rows = []
    for rec in records:
        if not is_ok(rec):
            continue
        for label, observed_key, predicted_key, fmt in PREDICTED_FIELDS:
            predicted = get(rec, predicted_key)
            if predicted is None:
                continue
            observed = get(rec, observed_key)
            rows.append([
                method_label(rec), _opt(width(rec)), _opt(get(rec, "cell.r")),
                _opt(get(rec, "cell.batch")), _opt(get(rec, "cell.seq")), mode(rec), device(rec),
                label, fmt(observed), fmt(predicted), fmt_ratio(ratio(observed, predicted)),
            ])
    headers = ["method", "d", "r", "batch", "seq", "mode", "device", "figure",
               "observed", "predicted (closed form)", "observed / predicted"]
    return _table(headers, rows)


def failures_table(records: list[dict[str, Any]]) -> str:
    """Cells that did not finish (oom, error, timeout) with their one-line reason."""
    rows = [
        [f"`{rec.get('id')}`", method_label(rec), _opt(get(rec, "cell.workload")),
         _opt(get(rec, "cell.r")), _opt(get(rec, "cell.batch")), _opt(get(rec, "cell.seq")),
         mode(rec), device(rec), _opt(rec.get("status")), _opt(rec.get("error"))]
        for rec in records if not is_ok(rec)
    ]
    headers = ["id", "method", "workload", "r", "batch", "seq", "mode", "device", "status", "error"]
    return _table(headers, rows)
