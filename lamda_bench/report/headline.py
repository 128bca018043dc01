"""The report's first section: at each shape, which method needs least memory, and by how
much against LoRA and full fine-tuning.

Records are grouped by shape (``axes.SHAPE_AXES``: the same model, batch, sequence, dtype,
device and mode), so a ratio never mixes an estimate with a measurement or two models.
Within a group the variants are ranked by ``memory.peak``; the ratios are against the LoRA
record with the same rank, targets and checkpointing (PEFT's default fp32 adapters) and the
full fine-tuning record with the same checkpointing; "where" names the ``memory.at_peak``
categories that differ most from that LoRA record.
"""

from __future__ import annotations

from typing import Any

from ..suite.cell import ID_NEUTRAL_DEFAULTS
from ..results.record import MEMORY
from .axes import RECIPE_WHEN_SET, SHAPE_AXES, Axes, at_default, cell_value, option_value, shape_key, show
from .records import bytes_at_peak, get, is_ok, mode
from .tables import md_table
from .units import MISSING, fmt_bytes, fmt_ratio, ratio

MODE_TITLES = {"measure": "Measured", "estimate": "Estimated (fake tensors, not measured)"}
# A category difference below this share of the LoRA peak is not worth naming.
NEGLIGIBLE = 0.01


def _matches(rec: dict[str, Any], ref: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return all(cell_value(rec, k) == cell_value(ref, k) for k in keys)


def lora_reference(rec: dict[str, Any], group: list[dict[str, Any]]) -> dict[str, Any] | None:
    """LoRA at the same r, targets, checkpointing and steps, adapters in PEFT's default fp32; of
    those, the plain recipe (the model's own loss, no offloading) where the group has it, so a
    fused loss or offloading reads as a ratio against the step without it, else the same recipe."""
    same = [cand for cand in group
            if cell_value(cand, "method") == "lora" and option_value(cand, "autocast_adapter_dtype") is not False
            and _matches(rec, cand, ("r", "targets", "gradient_checkpointing", "steps"))]
    plain = [c for c in same if all(at_default(c, k) for k in RECIPE_WHEN_SET)]
    recipe = [c for c in same if _matches(rec, c, RECIPE_WHEN_SET)]
    return (plain or recipe or [None])[0]


def full_reference(rec: dict[str, Any], group: list[dict[str, Any]]) -> dict[str, Any] | None:
    for cand in group:
        if cell_value(cand, "method") == "full" and _matches(rec, cand, ("gradient_checkpointing",)):
            return cand
    return None


def where(rec: dict[str, Any], ref: dict[str, Any] | None) -> str:
    """'activations -12.30 GiB, optimizer +0.50 GiB': the categories that differ most."""
    if ref is None:
        return MISSING
    if ref is rec:
        return "(LoRA reference)"
    base = get(ref, MEMORY.peak) or 0
    held, ref_held = bytes_at_peak(rec), bytes_at_peak(ref)
    deltas = [(c, held.get(c, 0) - ref_held.get(c, 0)) for c in dict.fromkeys([*held, *ref_held])]
    named = sorted((d for d in deltas if abs(d[1]) > NEGLIGIBLE * base), key=lambda d: -abs(d[1]))[:3]
    if not named:
        return "no category differs by more than 1%"
    return ", ".join(f"{c} {'+' if d > 0 else '-'}{fmt_bytes(abs(d))}" for c, d in named)


def group_title(rec: dict[str, Any]) -> str:
    parts = [f"{a}={show(cell_value(rec, a))}" for a in SHAPE_AXES
             if a != "mode" and cell_value(rec, a) is not None
             and cell_value(rec, a) != ID_NEUTRAL_DEFAULTS.get(a)]  # pure, one device: unsaid
    return f"{MODE_TITLES.get(mode(rec), mode(rec))}: " + ", ".join(parts)


def headline(records: list[dict[str, Any]]) -> str:
    """Markdown: one ranked table per shape group with two or more ok records; measured
    groups first, then estimates."""
    ok = [r for r in records if is_ok(r) and get(r, MEMORY.peak) is not None]
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in ok:
        groups.setdefault(shape_key(rec), []).append(rec)
    ordered = sorted(groups.values(), key=lambda g: (mode(g[0]) != "measure",))
    out: list[str] = []
    singles = 0
    for group in ordered:
        if len(group) < 2:
            singles += 1
            continue
        axes = Axes.of(group)
        ranked = sorted(group, key=lambda r: get(r, MEMORY.peak))
        rows = []
        for i, rec in enumerate(ranked, start=1):
            lora, full = lora_reference(rec, group), full_reference(rec, group)
            peak = get(rec, MEMORY.peak)
            rows.append([str(i), axes.label(rec), fmt_bytes(peak),
                         fmt_ratio(ratio(peak, get(lora, MEMORY.peak) if lora else None)),
                         fmt_ratio(ratio(peak, get(full, MEMORY.peak) if full else None)),
                         where(rec, lora)])
        out += [f"### {group_title(group[0])}", "",
                md_table(["rank", "variant", "peak", "vs LoRA", "vs full FT", "where it differs from LoRA (at peak)"],
                         rows), ""]
    if not out:
        return "No shape has two or more finished cells to rank."
    if singles:
        out.append(f"{singles} shape(s) with a single finished cell are in the tables below only.")
    return "\n".join(out).rstrip() + "\n"
