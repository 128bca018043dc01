"""Per-card peak against world size: what each card of a data-parallel job holds as it grows.

Drawn when data-parallel cells (``cell.parallel`` set, e.g. ``fsdp2``) of one model and shape
were run at two or more world sizes (``suites/sharded.toml``). Each record's ``memory.peak`` is
rank 0's, i.e. one card's, so the lines read directly as "what each of my N GPUs needs".
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.lines import Line2D

from ..results.record import MEMORY
from .axes import Axes, cell_value
from .plotstyle import (Plot, byte_scale, figure, legend_outside, log_axis, method_color, method_marker, save,
                        unique_handles)
from .records import get, is_ok, mode

# What one panel holds fixed: the model, the data and the precision (world size is the x axis).
PANEL_AXES = ("workload", "d_in", "d_out", "layers", "batch", "seq", "dtype", "precision", "device", "mode")
MAX_PANELS = 6


def _is_parallel(rec: dict[str, Any]) -> bool:
    return str(cell_value(rec, "parallel") or "none") != "none"


def _panel_title(rec: dict[str, Any]) -> str:
    return (f"{cell_value(rec, 'workload')} {cell_value(rec, 'dtype')}, "
            f"b{cell_value(rec, 'batch')} s{cell_value(rec, 'seq')}")


def plot_peak_per_card_vs_world_size(records: list[dict[str, Any]], out_dir: Path) -> Plot:
    plot = Plot("peak_per_card_vs_world_size", "Per-card peak memory vs world size",
                "memory.peak of rank 0 (one card's step peak: its shards of the weights, grads and "
                "optimizer state, the blocks it gathers, the collective buffers and its activations) "
                "against the job's world size, one line per method, log scales; one panel per model and shape. "
                "Hollow markers: estimates (rank 0 of a fake process group), filled: measurements.")
    parallel = [r for r in records if _is_parallel(r)]
    recs = [r for r in parallel if is_ok(r) and get(r, MEMORY.peak) and cell_value(r, "world_size")]
    panels: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for rec in recs:
        panels[tuple(str(cell_value(rec, a)) for a in PANEL_AXES)].append(rec)
    drawn = [g for g in panels.values() if len({cell_value(r, "world_size") for r in g}) >= 2]
    if not drawn:
        plot.skipped = "no data-parallel cells (cell.parallel) of one model and shape at two or more world sizes"
        return plot
    if len(drawn) > MAX_PANELS:
        plot.description += f" Only the first {MAX_PANELS} of {len(drawn)} panels are drawn."
        drawn = drawn[:MAX_PANELS]
    missing = len(parallel) - len(recs)
    if missing:
        plot.description += f" {missing} data-parallel cell(s) without a peak (failed) are not drawn."
    inner = Axes.of([r for g in drawn for r in g], exclude=PANEL_AXES + ("world_size", "steps", "warmup"))
    cols = min(3, len(drawn))
    rows = -(-len(drawn) // cols)
    fig = figure(4.4 * cols + 2.8, 3.6 * rows)
    axs = [fig.add_subplot(rows, cols, i + 1) for i in range(len(drawn))]
    for ax, group in zip(axs, drawn):
        div, unit = byte_scale(max(get(r, MEMORY.peak) for r in group))
        lines: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        for rec in group:
            lines[inner.label(rec)].setdefault(int(cell_value(rec, "world_size")), rec)
        for label, pts in sorted(lines.items(), key=lambda kv: kv[0]):
            method = str(cell_value(next(iter(pts.values())), "method"))
            xs = sorted(pts)
            color = method_color(method)
            ax.plot(xs, [get(pts[x], MEMORY.peak) / div for x in xs], "-", marker=method_marker(method),
                    color=color, markerfacecolor="white", label=label)
            measured = [x for x in xs if mode(pts[x]) == "measure"]
            if measured:  # filled over the hollow estimate marker
                ax.plot(measured, [get(pts[x], MEMORY.peak) / div for x in measured], method_marker(method),
                        color=color, linestyle="none")
        world_sizes = sorted({int(cell_value(r, "world_size")) for r in group})
        ax.set_xscale("log", base=2)
        ax.set_xticks(world_sizes, [str(w) for w in world_sizes])
        ax.minorticks_off()
        log_axis(ax, "y")  # full fine-tuning and the adapters differ by about 10x on one card
        ax.set_xlabel("world size (ranks)", fontsize=8)
        ax.set_ylabel(f"peak per card ({unit})", fontsize=8)
        ax.set_title(_panel_title(group[0]), fontsize=9)
        ax.grid(True, alpha=0.3)
    handles, labels = unique_handles(axs)
    handles += [Line2D([], [], marker="o", color="black", markerfacecolor="white", linestyle="none")]
    labels += ["estimate (hollow)"]
    legend_outside(fig, handles, labels)
    return save(fig, out_dir, plot)
