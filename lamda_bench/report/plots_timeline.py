"""Memory over one training step, LoRA against LaMDA, from the timeline files.

Moved out of ``plots.py`` unchanged in style: the top panel the total, one stacked panel
per method by category, phases shaded.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..results.record import ARTIFACTS, CELL, OPTIONS
from ..results.values import is_number
from ..results.files import DataWarning
from .plotstyle import CATEGORY_COLORS, Plot, byte_scale, method_color, save
from .records import get, is_ok, mode, tokens, width

TIMELINE_METHODS = ("lora", "lamda")
PHASE_COLORS = {"forward": "#e8f0fb", "backward": "#fbeaea", "optimizer": "#eaf6ec"}


def _load_timeline(results_dir: Path, rec: dict[str, Any]) -> list[dict[str, Any]] | None:
    rel = get(rec, ARTIFACTS.timeline)
    if not rel:
        return None
    path = results_dir / str(rel)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # a damaged side file
        warnings.warn(f"{path}: unreadable timeline ({type(e).__name__}: {e}); left out of the plot",
                      DataWarning, stacklevel=2)
        return None
    # runner/assemble.py writes {"id", "unit": "bytes", "events": [...]}; a bare list is accepted too
    events = data.get("events") if isinstance(data, dict) else data
    if not isinstance(events, list) or not events:
        return None
    problem = _timeline_problem(events)
    if problem:
        warnings.warn(f"{path}: {problem}; left out of the plot", DataWarning, stacklevel=2)
        return None
    return events


def _timeline_problem(events: list[Any]) -> str | None:
    """Why these events cannot be drawn (the first bad one), or None."""
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            return f"event {i} is not a table"
        values = [("live_bytes", event.get("live_bytes", 0))]
        cats = event.get("by_category") or {}
        if not isinstance(cats, dict):
            return f"event {i}: by_category is not a table"
        values += [(f"by_category.{k}", v) for k, v in cats.items()]
        for key, value in values:
            if not is_number(value):
                return f"event {i}: {key} = {value!r} is not a number"
    return None


def _pair_key(rec: dict[str, Any]) -> tuple:
    """Everything but the method and its options: a LoRA and a LaMDA cell of one shape."""
    cell = dict(rec.get("cell") or {})
    for key in ("method", "options", "id", "timeout_s"):
        cell.pop(key, None)
    return (json.dumps(cell, sort_keys=True, default=str),
            json.dumps(get(rec, OPTIONS.autocast_adapter_dtype), default=str))


def plot_step_timeline(records: list[dict[str, Any]], out_dir: Path, results_dir: Path) -> Plot:
    from matplotlib.figure import Figure

    plot = Plot("memory_over_step_lora_vs_lamda", "Memory over one training step: LoRA vs LaMDA",
                "Live bytes after each tracked event of one step (forward, backward, optimizer), "
                "from the timeline files; x is the position within the step (events differ in "
                "number between methods). Top: total; below: by category for each method.")
    groups: dict[tuple, dict[str, tuple[dict, list]]] = defaultdict(dict)
    for rec in records:
        method = get(rec, CELL.method)
        if not is_ok(rec) or method not in TIMELINE_METHODS:
            continue
        timeline = _load_timeline(results_dir, rec)
        if timeline is not None:
            groups[_pair_key(rec)].setdefault(method, (rec, timeline))
    pairs = [g for g in groups.values() if len(g) == len(TIMELINE_METHODS)]
    if not pairs:
        plot.skipped = ("no LoRA and LaMDA records of the same shape (workload, d, r, batch, seq, dtype, "
                        "mode) both have a timeline file")
        return plot
    pair = max(pairs, key=lambda g: tokens(g["lora"][0]) or 0)
    lora_rec = pair["lora"][0]
    all_live = [e.get("live_bytes", 0) for _, tl in pair.values() for e in tl]
    divisor, unit = byte_scale(max(all_live))
    fig = Figure(figsize=(11, 9))
    top = fig.add_subplot(3, 1, 1)
    for method, (rec, tl) in pair.items():
        n = max(len(tl) - 1, 1)
        top.plot([i / n for i in range(len(tl))], [e.get("live_bytes", 0) / divisor for e in tl],
                 color=method_color(method), label=method + (" (estimate)" if mode(rec) == "estimate" else ""))
    top.set_ylabel(f"live ({unit})")
    top.set_title(f"{plot.title}  [{get(lora_rec, CELL.workload)}, d={width(lora_rec)}, "
                  f"r={get(lora_rec, CELL.r)}, batch={get(lora_rec, CELL.batch)}, "
                  f"seq={get(lora_rec, CELL.seq)}]", fontsize=10)
    for row, (method, (rec, tl)) in enumerate(pair.items()):
        ax = fig.add_subplot(3, 1, row + 2, sharex=top)
        n = max(len(tl) - 1, 1)
        xs = [i / n for i in range(len(tl))]
        cats = [c for c in CATEGORY_COLORS if any(c in (e.get("by_category") or {}) for e in tl)]
        cats += sorted({c for e in tl for c in (e.get("by_category") or {})} - set(cats))
        # Frozen weights are a constant slab that would flatten everything else: say so, leave it out.
        constant = {c for c in cats if len({(e.get("by_category") or {}).get(c, 0) for e in tl}) == 1
                    and (tl[0].get("by_category") or {}).get(c, 0) > 0}
        note = ""
        if "weights" in constant:
            cats.remove("weights")
            note = f", weights ({(tl[0]['by_category']['weights']) / divisor:,.1f} {unit}, constant) not drawn"
        if cats:
            ax.stackplot(xs, [[(e.get("by_category") or {}).get(c, 0) / divisor for e in tl] for c in cats],
                         labels=cats, colors=[CATEGORY_COLORS.get(c, "#999999") for c in cats])
        _shade_phases(ax, xs, [e.get("phase") for e in tl])
        ax.set_ylabel(f"{method} live ({unit})", fontsize=9)
        ax.set_title(f"{method}: live bytes by category{note}", fontsize=9, loc="right")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.axes[-1].set_xlabel("position within the training step (event index / events)")
    fig.set_layout_engine("tight")
    return save(fig, out_dir, plot)


def _shade_phases(ax: Any, xs: list[float], phases: list[Any]) -> None:
    """Background spans per phase, labelled once at their start."""
    start = 0
    for i in range(1, len(phases) + 1):
        if i == len(phases) or phases[i] != phases[start]:
            end = xs[i] if i < len(xs) else xs[-1]
            ax.axvspan(xs[start], end, color=PHASE_COLORS.get(str(phases[start]), "#f4f4f4"), zorder=0)
            ax.text(xs[start], 1.0, f" {phases[start]}", transform=ax.get_xaxis_transform(),
                    va="top", fontsize=7)
            start = i
