"""What the Ask tab draws from one record: the bytes at the peak by category, the saved
activations by owner (adapter, base model; a VLM's towers), the card's figures when one is
named, the FLOPs and every NOTE, as table rows and one stacked bar (matplotlib, Agg)."""

from __future__ import annotations

from typing import Any

from ..report.owners import PARTS
from ..report.units import fmt_bytes, fmt_flops
from ..results.record import AT_PEAK, CATEGORIES, FLOPS, MEMORY, get

__all__ = ["card_line", "figure", "flops_line", "fmt_bytes", "get", "notes", "rows"]


def rows(record: dict[str, Any]) -> list[list[str]]:
    """[part, bytes, exact bytes, share of the peak] for the table under the bar."""
    peak = get(record, MEMORY.peak)
    out = []

    def add(name: str, value: Any, whole: Any = peak) -> None:
        share = f"{100 * value / whole:.1f}%" if value is not None and whole else ""
        out.append([name, fmt_bytes(value), "" if value is None else f"{value:,}", share])

    for c in CATEGORIES:
        add(f"at the peak: {c}", get(record, AT_PEAK.path(c)))
    add("peak (tensors)", peak)
    saved, adapter = get(record, MEMORY.saved_activations), get(record, MEMORY.saved_activations_adapter)
    owners = (get(record, "info.vlm_owners") or {}).get("saved_bytes") or {}  # image-text: each part
    if owners:
        for key, label in PARTS:
            add(f"saved activations: {label} (share of all saved)", owners.get(key), saved)
    elif saved is not None:
        add("saved activations: adapter (share of all saved)", adapter, saved)
        add("saved activations: base model (share of all saved)", None if adapter is None else saved - adapter, saved)
    for name, path in (("weights (all)", MEMORY.weights), ("gradients (all)", MEMORY.grads),
                       ("optimizer state (all)", MEMORY.optimizer), ("paged optimizer state", MEMORY.optimizer_paged),
                       ("reserved peak on the card (predicted)", MEMORY.reserved_peak),
                       ("device peak on the card (predicted)", MEMORY.device_peak),
                       ("card total", "info.allocator.capacity")):
        value = get(record, path)
        if value is not None:
            add(name, value)
    return out


def flops_line(record: dict[str, Any]) -> str:
    return (f"FLOPs per step: forward {fmt_flops(get(record, FLOPS.forward))}, backward "
            f"{fmt_flops(get(record, FLOPS.backward))} (adapter: forward {fmt_flops(get(record, FLOPS.adapter_forward))}"
            f", backward {fmt_flops(get(record, FLOPS.adapter_backward))})")


def card_line(record: dict[str, Any]) -> str | None:
    """The peak against the card, or None without a card."""
    card, device = get(record, "cell.card"), get(record, MEMORY.device_peak)
    total = get(record, "info.allocator.capacity")
    if not card or device is None:
        return None
    oom = get(record, "info.allocator.oom")
    if oom:
        return f"on {card}: DOES NOT FIT ({oom})"
    verdict = f"{100 * device / total:.1f}% of the card" if total else ""
    return (f"on {card}: device peak {fmt_bytes(device)} (predicted, as nvidia-smi would show it) of "
            f"{fmt_bytes(total)}: {verdict}")


def notes(text: str) -> list[str]:
    """Every NOTE line of the estimate verb's answer."""
    return [line.strip() for line in text.splitlines() if line.strip().startswith("NOTE")]


def figure(record: dict[str, Any]):
    """One horizontal stacked bar of the peak by category, and the card's predicted device peak
    and total beside it when a card is named; None when the cell has no peak."""
    from ..report.plotstyle import CATEGORY_COLORS, byte_scale, figure as new_figure

    peak = get(record, MEMORY.peak)
    if peak is None:
        return None
    device, total = get(record, MEMORY.device_peak), get(record, "info.allocator.capacity")
    scale, unit = byte_scale(max(v for v in (peak, device, total) if v is not None))
    fig = new_figure(8.0, 2.6 if device is None else 3.2)
    ax = fig.add_subplot(1, 1, 1)
    left = 0.0
    for c in CATEGORIES:
        value = (get(record, AT_PEAK.path(c)) or 0) / scale
        ax.barh(["tensor peak"], [value], left=left, color=CATEGORY_COLORS[c], label=c, hatch="//",
                edgecolor="white")
        left += value
    if device is not None:
        ax.barh(["device peak (card)"], [device / scale], color="#999999", label="device peak (predicted)")
    if total:
        ax.axvline(total / scale, color="black", linestyle="--", label=f"{get(record, 'cell.card')} total")
    ax.set_xlabel(f"{unit} (estimate: fake tensors, hatched)")
    ax.set_title(f"{get(record, 'cell.workload')} {get(record, 'cell.method')}: peak {fmt_bytes(peak)}", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig
