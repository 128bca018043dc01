"""``compare``: two result sets side by side, cells matched by id, changes as B / A.

Rows can be filtered (``where``: ``method=lora``, ``r=8``, ``cell.options.freeze_mode=mask``),
limited to changes above a threshold, and sorted. Each row shows the settings that vary
among the shown cells (``axes.Axes``) instead of a long id, and only the metrics that changed
somewhere. A pair whose modes differ (an estimate against a measurement) or whose
environments differ is flagged, and the environment fields that differ are named.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

from ..results.record import FLOPS, MEMORY, PARAMS, TIME
from ..results.files import ENV_FIELDS as RESULTS_ENV_FIELDS
from .axes import Axes
from .escape import md, md_code
from .records import ReportError, get, is_ok, load_dir, mode
from .tables import Raw, md_table
from .units import fmt_bytes, fmt_count, fmt_flops, fmt_rate

# (column title, dotted field, formatter)
COMPARED_METRICS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("peak", MEMORY.peak, fmt_bytes),
    ("peak (optimizer phase)", MEMORY.peak_step, fmt_bytes),
    ("saved activations", MEMORY.saved_activations, fmt_bytes),
    ("saved act. (adapter)", MEMORY.saved_activations_adapter, fmt_bytes),
    ("trainable params", PARAMS.trainable, fmt_count),
    ("adapter FLOPs (fwd)", FLOPS.adapter_forward, fmt_flops),
    ("step FLOPs (fwd)", FLOPS.forward, fmt_flops),
    ("throughput", TIME.tokens_per_s, fmt_rate),
)
SORTS = ("change", "order", "peak", "throughput")
# Environment fields named when they differ: the ones a baseline stores (results.ENV_FIELDS:
# the fingerprint's and python), then the ones that describe the run without entering it.
ENV_FIELDS = RESULTS_ENV_FIELDS + ("device_name", "driver", "cpu_threads", "harness", "schema")


def env_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (A's value, B's value)} for the environment fields that differ."""
    ea, eb = a.get("env") or {}, b.get("env") or {}
    return {f: (ea.get(f), eb.get(f)) for f in ENV_FIELDS if ea.get(f) != eb.get(f)}


def _lookup(record: dict[str, Any], key: str) -> tuple[bool, Any]:
    """A ``--where`` key: a dotted record path, a cell key or a method option."""
    candidates = [key] if "." in key else [f"cell.{key}", f"cell.options.{key}"]
    for path in candidates:
        node: Any = record
        found = True
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                found = False
                break
            node = node[part]
        if found:
            return True, node
    return False, None


def _matches(value: Any, wanted: str) -> bool:
    import json

    if isinstance(value, (list, tuple)):
        return wanted in (",".join(map(str, value)), json.dumps(value))
    return wanted in (str(value), json.dumps(value), str(value).lower())


def parse_where(conditions: Iterable[str]) -> list[tuple[str, str]]:
    out = []
    for cond in conditions:
        key, sep, value = cond.partition("=")
        if not sep or not key.strip():
            raise ReportError(f"--where {cond!r}: expected KEY=VALUE, e.g. method=lora")
        out.append((key.strip(), value.strip()))
    return out


def select(records: list[dict[str, Any]], where: list[tuple[str, str]]) -> list[dict[str, Any]]:
    for key, _ in where:
        if not any(_lookup(r, key)[0] for r in records):
            raise ReportError(f"--where {key}: no record has this field (try a cell key such as method, r, "
                              "targets, or a dotted path such as cell.options.freeze_mode)")
    return [r for r in records if all(_matches(_lookup(r, k)[1], v) for k, v in where if _lookup(r, k)[0])
            and all(_lookup(r, k)[0] for k, _ in where)]


def _change(a: dict[str, Any], b: dict[str, Any], field: str) -> float | None:
    va, vb = get(a, field), get(b, field)
    if va is None or vb is None or va == 0:
        return None
    return (vb - va) / va * 100.0


def compare(dir_a: Path, dir_b: Path, where: Iterable[str] = (), threshold: float = 0.0,
            sort: str = "change") -> str:
    """Markdown: one row per cell present in both directories (filtered by ``where``, and by
    ``threshold``: only cells where a metric changed by more than that many percent), each
    changed metric as 'A -> B (+x%)'; then counts of cells found in only one of them."""
    if sort not in SORTS:
        raise ReportError(f"--sort {sort!r}: choose one of {', '.join(SORTS)}")
    if threshold < 0:
        raise ReportError(f"--threshold {threshold}: a percentage must not be negative")
    conditions = parse_where(where)
    recs_a = {r["id"]: r for r in load_dir(dir_a)}
    recs_b = {r["id"]: r for r in load_dir(dir_b)}
    chosen = {r["id"] for r in select(list(recs_a.values()) + list(recs_b.values()), conditions)}
    common = [i for i in recs_a if i in recs_b and i in chosen]
    pairs = []
    for cell_id in common:
        a, b = recs_a[cell_id], recs_b[cell_id]
        changes = {field: _change(a, b, field) for _, field, _ in COMPARED_METRICS}
        notes = []
        if not (is_ok(a) and is_ok(b)):
            notes.append(f"status {a.get('status')} -> {b.get('status')}")
        if mode(a) != mode(b):
            notes.append(f"mode {mode(a)} -> {mode(b)}")
        env = env_differences(a, b)
        if env:
            notes.append("env: " + ", ".join(env))
        largest = max((abs(c) for c in changes.values() if c is not None), default=0.0)
        if threshold and largest <= threshold and not notes:
            continue
        pairs.append((a, b, changes, notes, largest))
    if sort == "change":
        pairs.sort(key=lambda p: -p[4])
    elif sort in ("peak", "throughput"):
        field = MEMORY.peak if sort == "peak" else TIME.tokens_per_s
        pairs.sort(key=lambda p: -(get(p[1], field) or 0))
    # peak always; every other metric only where it changed in some shown cell
    shown_metrics = [(t, f, fmt) for t, f, fmt in COMPARED_METRICS
                     if f == MEMORY.peak or any(p[2][f] is not None and abs(p[2][f]) > 1e-9 for p in pairs)]
    axes = Axes.of([p[0] for p in pairs])
    rows = []
    for a, b, changes, notes, _ in pairs:
        row = axes.row(a)
        for _, field, fmt in shown_metrics:
            c = changes[field]
            va, vb = get(a, field), get(b, field)
            if va is None and vb is None:
                row.append("n/a")
            elif c is not None and abs(c) < 1e-9:
                row.append(f"{fmt(vb)} (same)")
            else:
                row.append(f"{fmt(va)} -> {fmt(vb)}" + ("" if c is None else f" ({c:+.1f}%)"))
        rows.append(row + ["; ".join(notes), Raw(md_code(a["id"]))])
    only_a = [i for i in recs_a if i not in recs_b and i in chosen]
    only_b = [i for i in recs_b if i not in recs_a and i in chosen]
    filters = []
    if conditions:
        filters.append("where " + ", ".join(f"{k}={v}" for k, v in conditions))
    if threshold:
        filters.append(f"changes above {threshold:g}%")
    out = [f"# Comparison: A = {md_code(dir_a)}, B = {md_code(dir_b)}", "",
           f"{len(common)} cells in both, {len(only_a)} only in A, {len(only_b)} only in B"
           + (f" ({'; '.join(filters)}: {len(pairs)} shown)" if filters else "") + f"; sorted by {sort}.", ""]
    out += _env_summary([(recs_a[i], recs_b[i]) for i in common])
    unchanged = [t for t, f, _ in COMPARED_METRICS if (t, f) not in {(s[0], s[1]) for s in shown_metrics}]
    if pairs and unchanged:
        out += ["Unchanged (or absent) in every shown cell: " + ", ".join(unchanged) + ".", ""]
    if pairs:
        out += [md(axes.header()), "",
                md_table(axes.columns() + [f"{t} A -> B" for t, _, _ in shown_metrics] + ["notes", "id"], rows)]
    else:
        out.append("No cell id present in both result sets passes the filters." if common or not conditions
                   else "No cell id is present in both result sets.")
    for name, ids in (("A", only_a), ("B", only_b)):
        if ids:
            out += ["", f"Only in {name}: " + ", ".join(md_code(i) for i in ids)]
    return "\n".join(out) + "\n"


def _env_summary(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    counts: Counter = Counter()
    for a, b in pairs:
        for field, (va, vb) in env_differences(a, b).items():
            counts[(field, str(va), str(vb))] += 1
    if not counts:
        return ["Environment: the same in every paired cell (" + ", ".join(ENV_FIELDS[:5]) + ", ...).", ""]
    lines = [f"- {md(f)}: {md(va)} -> {md(vb)} ({n} cell{'s' if n > 1 else ''})"
             for (f, va, vb), n in sorted(counts.items())]
    return ["Environment differs:", ""] + lines + [""]
