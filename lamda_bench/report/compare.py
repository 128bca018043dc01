"""``compare``: two result sets side by side, cells matched by id, ratios b / a.

A ratio across modes (an estimate against a measurement) or across environment
fingerprints is flagged in the table: such pairs differ for reasons other than the code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tabulate import tabulate

from .records import get, is_ok, load_dir, method_label, mode
from .units import fmt_bytes, fmt_count, fmt_flops, fmt_rate, fmt_ratio, ratio

# (column title, dotted field, formatter)
COMPARED_METRICS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("peak memory", "memory.peak", fmt_bytes),
    ("saved activations", "memory.saved_activations", fmt_bytes),
    ("saved act. (adapter)", "memory.saved_activations_adapter", fmt_bytes),
    ("trainable params", "params.trainable", fmt_count),
    ("forward FLOPs", "flops.forward", fmt_flops),
    ("backward FLOPs", "flops.backward", fmt_flops),
    ("throughput", "time.tokens_per_s", fmt_rate),
)


def _pair(a: dict[str, Any], b: dict[str, Any], field: str, fmt: Callable[[Any], str]) -> str:
    va, vb = get(a, field), get(b, field)
    if va is None and vb is None:
        return "n/a"
    return f"{fmt(va)} -> {fmt(vb)} ({fmt_ratio(ratio(vb, va))})"


def compare(dir_a: Path, dir_b: Path) -> str:
    """Markdown: one row per cell id present in both directories, each main metric as
    'a -> b (b/a)'; then counts (and ids) of cells found in only one of them."""
    recs_a = {r["id"]: r for r in load_dir(dir_a)}
    recs_b = {r["id"]: r for r in load_dir(dir_b)}
    common = [i for i in recs_a if i in recs_b]
    rows = []
    for cell_id in common:
        a, b = recs_a[cell_id], recs_b[cell_id]
        notes = []
        if not (is_ok(a) and is_ok(b)):
            notes.append(f"status {a.get('status')} -> {b.get('status')}")
        if mode(a) != mode(b):
            notes.append(f"mode {mode(a)} -> {mode(b)}")
        if get(a, "env.fingerprint") != get(b, "env.fingerprint"):
            notes.append("environment differs")
        rows.append([f"`{cell_id}`", method_label(a), mode(b)]
                    + [_pair(a, b, field, fmt) for _, field, fmt in COMPARED_METRICS]
                    + ["; ".join(notes)])
    headers = ["id", "method", "mode (B)"] + [title + " A -> B (B/A)" for title, _, _ in COMPARED_METRICS] + ["notes"]
    only_a = [i for i in recs_a if i not in recs_b]
    only_b = [i for i in recs_b if i not in recs_a]
    out = [f"# Comparison: A = `{dir_a}`, B = `{dir_b}`", "",
           f"{len(common)} cells in both, {len(only_a)} only in A, {len(only_b)} only in B.", ""]
    out.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
               if rows else "No cell id is present in both result sets.")
    for name, ids in (("A", only_a), ("B", only_b)):
        if ids:
            out += ["", f"Only in {name}: " + ", ".join(f"`{i}`" for i in ids)]
    return "\n".join(out) + "\n"
