"""``compare A B --across card``: the same cells on two cards, side by side.

A card is part of a cell's id when set, so ``compare`` (which pairs by id) finds no pair between a
directory estimated with ``card = "RTX4090-24GB"`` and one with ``card = "H100-80GB"``. Here cells
pair on everything but the card: per pair, the tensor peak (the same step on any card), the
predicted reserved and device peaks and the predicted tokens/s on each card, with B / A ratios.
Every on-card figure is a prediction (docs/card-memory.md, docs/step-time.md); a ratio is given
only between figures of one kind (measured against measured, predicted against predicted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ..results.record import MEMORY, get
from .axes import Axes
from .compare import parse_where, select
from .escape import md, md_code
from .records import ReportError, cell_key, is_ok, load_dir
from .tables import Raw, md_table
from .units import error_band_text, fmt_bytes, fmt_on_card, fmt_ratio, ratio

ACROSS = ("card",)


def across_key(record: dict[str, Any], key: str) -> str:
    """The cell without ``key``: what pairs (agreement.pair_key's rule, other keys left out)."""
    return cell_key(record, (key, "timeout_s"))


def _by_key(records: list[dict[str, Any]], key: str, side: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        k = across_key(rec, key)
        if k in out:
            raise ReportError(f"--across {key}: {side} holds cell {out[k]['id']} and {rec['id']}, which differ only in "
                              f"{key} ({get(out[k], 'cell.' + key)} and {get(rec, 'cell.' + key)}); give one "
                              f"{key} per directory (--where {key}=NAME)")
        out[k] = rec
    return out


def _rate(record: dict[str, Any]) -> tuple[str | None, float | None]:
    """(kind, tokens/s): measured first, else the time model's prediction on the card."""
    if get(record, "time.tokens_per_s") is not None:
        return "measured", get(record, "time.tokens_per_s")
    if get(record, "time.tokens_per_s_predicted") is not None:
        return "predicted", get(record, "time.tokens_per_s_predicted")
    return None, None


def _rate_text(kind: str | None, rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:,.0f}" + (" (measured)" if kind == "measured" else "")


def _pair_row(axes: Axes, a: dict[str, Any], b: dict[str, Any], key: str) -> list[Any]:
    row: list[Any] = axes.row(a) + [str(get(a, "cell." + key)), str(get(b, "cell." + key))]
    ta, tb = get(a, MEMORY.peak), get(b, MEMORY.peak)
    row.append(f"{fmt_bytes(ta)} (same)" if ta == tb else f"{fmt_bytes(ta)} / {fmt_bytes(tb)}")
    for field in (MEMORY.reserved_peak, MEMORY.device_peak):
        row += [f"{fmt_on_card(a, field)} / {fmt_on_card(b, field)}", fmt_ratio(ratio(get(b, field), get(a, field)))]
    (ka, ra), (kb, rb) = _rate(a), _rate(b)
    row += [f"{_rate_text(ka, ra)} / {_rate_text(kb, rb)}", fmt_ratio(ratio(rb, ra)) if ka == kb else "n/a"]
    notes = [f"status {a.get('status')} / {b.get('status')}"] if not (is_ok(a) and is_ok(b)) else []
    if ka and kb and ka != kb:
        notes.append(f"tokens/s {ka} / {kb}: no ratio across kinds")
    return row + ["; ".join(notes), Raw(md_code(a["id"])), Raw(md_code(b["id"]))]


def compare_across(dir_a: Path, dir_b: Path, key: str = "card", where: Iterable[str] = ()) -> str:
    """Markdown: one row per cell present in both directories up to ``key``, A's and B's on-card
    figures side by side with B / A ratios; then the cells found on one side only."""
    if key not in ACROSS:
        raise ReportError(f"--across {key!r}: choose one of {', '.join(ACROSS)}")
    conditions = parse_where(where)
    recs_a = _by_key(select(load_dir(dir_a), conditions) if conditions else load_dir(dir_a), key, "A")
    recs_b = _by_key(select(load_dir(dir_b), conditions) if conditions else load_dir(dir_b), key, "B")
    common = [k for k in recs_a if k in recs_b]
    pairs = [(recs_a[k], recs_b[k]) for k in common]
    axes = Axes.of([a for a, _ in pairs], exclude=(key,))
    out = [f"# Across {key}s: A = {md_code(dir_a)}, B = {md_code(dir_b)}", "",
           f"{len(common)} cells in both up to {key}, {len(recs_a) - len(common)} only in A, "
           f"{len(recs_b) - len(common)} only in B"
           + (f" (where {', '.join(f'{k}={v}' for k, v in conditions)})" if conditions else "") + ".", ""]
    if not pairs:
        return "\n".join(out + [f"No cell is present in both result sets up to {key}."]) + "\n"
    out += [md(axes.header()), "",
            md_table(axes.columns() + [f"{key} A", f"{key} B", "tensor peak", "reserved peak (predicted) A / B",
                                       "B / A", "device peak (predicted) A / B", "B / A", "tokens/s A / B (predicted unless said)",
                                       "B / A",
                                       "notes", "id A", "id B"],
                     [_pair_row(axes, a, b, key) for a, b in pairs]), ""]
    out += _notes(pairs)
    return "\n".join(out) + "\n"


def _notes(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """What the figures are: the allocator's model and the time model, each band as the records carry it."""
    lines = ["Reserved and device peaks are predictions (the caching allocator's model replayed over the estimated "
             "run, plus the card's context: docs/card-memory.md); the tensor peak is the step's own and the same on "
             "every card."]
    bands = {json.dumps(get(r, "info.time_model.error_band"), sort_keys=True): get(r, "info.time_model")
             for p in pairs for r in p if get(r, "info.time_model.error_band")}
    for model in bands.values():
        lines.append(f"Predicted tokens/s: the step-time model v{model.get('time_model_version')}, not a measurement; "
                     f"{error_band_text(model.get('error_band'))}. A ratio of two predictions carries both errors.")
    missing = [get(r, "info.time_model.not_predicted") for p in pairs for r in p
               if get(r, "info.time_model.not_predicted")]
    if missing:
        lines.append(f"{len(missing)} record(s) have no predicted time: {missing[0]}")
    lines.append("KiB/MiB/GiB = 2^10/2^20/2^30 bytes; B / A is B's figure over A's.")
    return [md(line) for line in lines] + [""]

