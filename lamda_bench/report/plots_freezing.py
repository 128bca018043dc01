"""LaMDA's gradual freezing over training steps, split against mask: per step (``record.series``),
trainable parameters, optimizer state and backward FLOPs as fractions of step 1's.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..results.record import CELL, OPTIONS, SERIES
from .axes import cell_value
from .plotstyle import Plot, figure, legend_outside, method_color, method_order, save, unique_handles
from .records import get, is_ok

SERIES_FIELDS = (("trainable", "trainable parameters", "count"),
                 ("optimizer", "optimizer state", "bytes"),
                 ("backward_flops", "backward FLOPs", "flops"))


def plot_freezing(records: list[dict[str, Any]], out_dir: Path) -> Plot:
    plot = Plot("lamda_gradual_freezing", "LaMDA gradual freezing over training steps: split vs mask",
                "Per step (record.series), as a fraction of the first step's value: trainable parameters, "
                "optimizer state and backward FLOPs while B's rank components freeze; one line per cell, "
                "coloured by method. 'split' (solid) really freezes them (fewer parameters, optimizer state "
                "released, less backward work); 'mask' (dashed) zeroes their gradients as the authors' code "
                "does, which saves nothing. Fractions let cells of every size share one axis.")
    recs = sorted((r for r in records if is_ok(r) and str(get(r, CELL.method, "")).startswith("lamda")
                   and get(r, SERIES.step)), key=method_order)
    if not recs:
        plot.skipped = "no ok LaMDA record has a per-step series"
        return plot
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for rec in recs:
        counts[(str(cell_value(rec, "method")), str(get(rec, OPTIONS.freeze_mode, "split")))] += 1
    fig = figure(14, 3.8)
    axs = []
    for i, (field, ylabel, _) in enumerate(SERIES_FIELDS):
        ax = fig.add_subplot(1, len(SERIES_FIELDS), i + 1)
        axs.append(ax)
        drawn = 0
        for rec in recs:
            steps, ys = get(rec, SERIES.step) or [], get(rec, SERIES.path(field)) or []
            pts = [(s, y) for s, y in zip(steps, ys) if y is not None]
            if len(pts) < 2 or not pts[0][1]:
                continue  # an estimate counts FLOPs at its one instrumented step: no line to draw
            method, freeze = str(cell_value(rec, "method")), str(get(rec, OPTIONS.freeze_mode, "split"))
            ax.plot([p[0] for p in pts], [p[1] / pts[0][1] for p in pts], "-" if freeze == "split" else "--",
                    marker="o" if freeze == "split" else "s", markersize=3, color=method_color(method),
                    alpha=0.8, label=f"{method}, {freeze} ({counts[(method, freeze)]} cells)")
            drawn += 1
        ax.set_xlabel("training step", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(f"{ylabel} / step 1", fontsize=8)
        ax.set_title(ylabel, fontsize=9)
        if not drawn:
            ax.text(0.5, 0.5, f"no cell has series.{field}\nat two or more steps", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
    handles, names = unique_handles(axs)
    legend_outside(fig, handles, names)
    modes = {get(r, OPTIONS.freeze_mode, "split") for r in recs}
    if len(modes) < 2:
        plot.description += f" Only freeze_mode {sorted(modes)} was run, so there is nothing to contrast."
    return save(fig, out_dir, plot)
