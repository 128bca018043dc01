"""Human-readable units for tables: every figure names its unit.

Bytes use binary prefixes (KiB = 2^10 bytes, GiB = 2^30 bytes); FLOPs use decimal ones
(GFLOP = 10^9, TFLOP = 10^12). Records store raw counts; only presentation scales them.
"""

from __future__ import annotations

MISSING = "n/a"

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_FLOP_UNITS = ("FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP", "EFLOP")

UNITS_NOTE = (
    "Units: KiB = 2^10 bytes, MiB = 2^20 bytes, GiB = 2^30 bytes; "
    "kFLOP = 10^3, MFLOP = 10^6, GFLOP = 10^9, TFLOP = 10^12 floating-point operations "
    "(a multiply-add counts as 2)."
)


def _scaled(value: float, base: float, units: tuple[str, ...]) -> str:
    i = 0
    while abs(value) >= base and i < len(units) - 1:
        value /= base
        i += 1
    if i == 0:
        return f"{value:,.0f} {units[0]}"
    return f"{value:,.2f} {units[i]}"


def fmt_bytes(n: float | None) -> str:
    """1536 -> '1.50 KiB'; None -> 'n/a'."""
    return MISSING if n is None else _scaled(float(n), 1024.0, _BYTE_UNITS)


def fmt_flops(n: float | None) -> str:
    """2.5e12 -> '2.50 TFLOP'; None -> 'n/a'."""
    return MISSING if n is None else _scaled(float(n), 1000.0, _FLOP_UNITS)


def fmt_count(n: float | None) -> str:
    """2498560 -> '2,498,560' (parameter counts are read exactly, not rounded)."""
    return MISSING if n is None else f"{int(n):,}"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return MISSING
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def fmt_duration(s: float | None) -> str:
    """A long span for a reader: 42.1 s, 12.3 min, 3.45 h, 2.10 days."""
    if s is None:
        return MISSING
    for limit, div, unit in ((60, 1, "s"), (3600, 60, "min"), (86400, 3600, "h")):
        if s < limit:
            return f"{s / div:.3g} {unit}" if unit != "s" or s >= 1 else fmt_seconds(s)
    return f"{s / 86400:,.1f} days"


def fmt_on_card(record: dict, field: str) -> str:
    """A predicted figure on the cell's card (``memory.reserved_peak`` / ``device_peak``); where the
    allocator's replay ran out of memory (``info.allocator.oom``) a lower bound, said as such, never
    a figure that reads as fitting."""
    from .records import get

    value = get(record, field)
    if value is not None and get(record, "info.allocator.oom"):
        return f"> {fmt_bytes(value)} (out of memory)"
    return fmt_bytes(value)


def error_band_text(band: dict | None) -> str:
    """The time model's out-of-sample error as ``info.time_model.error_band`` records it."""
    if not band or band.get("median_abs_error") is None:
        return "error band not recorded"
    cards = ", ".join(band.get("cards") or [])
    return (f"out-of-sample error median {band['median_abs_error'] * 100:.1f}%, largest "
            f"{band.get('max_abs_error', 0) * 100:.1f}% over {band.get('points', '?')} points"
            + (f" ({cards})" if cards else "") + f", {band.get('source', 'docs/step-time.md')}")


def fmt_rate(tokens_per_s: float | None) -> str:
    return MISSING if tokens_per_s is None else f"{tokens_per_s:,.0f} tokens/s"


def fmt_throughput(record: dict) -> str:
    """Measured tokens/s, else the time model's prediction on the cell's card, said as such
    ("predicted on H100-80GB"), else n/a: a prediction is never shown as a measurement."""
    time = record.get("time") or {}
    if time.get("tokens_per_s") is not None:
        return fmt_rate(time["tokens_per_s"])
    predicted = time.get("tokens_per_s_predicted")
    if predicted is None:
        return MISSING
    return f"{fmt_rate(predicted)} predicted on {(record.get('cell') or {}).get('card')}"


def fmt_ratio(r: float | None) -> str:
    return MISSING if r is None else f"{r:.3f}x"


def ratio(b: float | None, a: float | None) -> float | None:
    """b / a, or None where either is missing or a is zero (no ratio exists)."""
    if a is None or b is None or a == 0:
        return None
    return float(b) / float(a)
