"""The report's plots, each drawn only when its data exists.

Every ``plot_*`` function takes the records and returns a ``Plot``: the PNG it wrote, or
the reason it was skipped. Figures use matplotlib's object API on an Agg canvas (no pyplot
state). Conventions (``plotstyle``): small multiples, one panel per shape group
(``axes.SHAPE_AXES``), so methods are compared only where they train the same thing; one
fixed colour per method; legends in the figure margin; labels built by ``axes.Axes`` show
every setting that varies in the panel. Estimates are hatched or hollow and say so.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..results.record import FLOPS, MEMORY, PARAMS, PREDICTED_MEMORY, TIME
from .axes import Axes, cell_value, shape_key, shape_order, shape_title
from .plotstyle import (CATEGORIES, CATEGORY_COLORS, ESTIMATE_HATCH, FLAGGED_COLOR, Plot, byte_scale, figure,
                        flop_scale, legend_outside, log_axis, method_color, method_marker, method_order, save,
                        unique_handles)
from .plots_freezing import plot_freezing
from .plots_parallel import plot_peak_per_card_vs_world_size
from .plots_timeline import plot_step_timeline
from .records import bytes_at_peak, get, is_ok, mode, tokens, width
from .timing import flagged_step_times

MAX_PANELS = 12


def shape_groups(records: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(panel title, records) per shape group, measured groups first, in record order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(shape_key(rec), []).append(rec)
    axes = Axes.of(records)
    order = shape_order(records)
    ordered = sorted(groups.values(), key=lambda g: (mode(g[0]) != "measure", order(g[0])))
    out = []
    for g in ordered:
        title = shape_title(g[0], axes)
        out.append((title + (" (estimate)" if mode(g[0]) == "estimate" and "mode" not in axes.varying else ""), g))
    return out


def _color_ticklabels(ax: Any, recs: list[dict[str, Any]], axis: str = "y") -> None:
    labels = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    for label, rec in zip(labels, recs):
        label.set_color(method_color(str(cell_value(rec, "method"))))


def _bar_panels(groups: list[tuple[str, list]], width_in: float = 9.0):
    """A figure with one horizontal-bar panel per group, heights by bar count."""
    heights = [max(1.4, 0.28 * len(g) + 0.9) for _, g in groups]
    fig = figure(width_in, sum(heights) + 0.6)
    grid = fig.add_gridspec(len(groups), 1, height_ratios=heights)
    return fig, [fig.add_subplot(grid[i, 0]) for i in range(len(groups))]


def _panel_grid(n: int, margin: float, panel_height: float) -> tuple[Any, list]:
    """Small multiples: ``n`` panels, three to a row, and ``margin`` inches on the right for the
    legend outside the data; returns the figure and its axes in reading order."""
    cols = min(3, n)
    rows = -(-n // cols)
    fig = figure(4.2 * cols + margin, panel_height * rows)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def _limit(groups: list, plot: Plot) -> list:
    if len(groups) > MAX_PANELS:
        plot.description += f" Only the first {MAX_PANELS} of {len(groups)} shape groups are drawn."
    return groups[:MAX_PANELS]


# ---- 1. peak memory by category -----------------------------------------------------------


def plot_peak_by_category(records: list[dict[str, Any]], out_dir: Path) -> Plot:
    plot = Plot("peak_memory_by_category", "Peak memory by category, per shape",
                "Live bytes at the run's peak (memory.at_peak; for a sharded cell rank 0's "
                "memory.per_rank.at_peak, which adds the all-gathered parameters and communication buffers), "
                "stacked by what holds them; one panel per "
                "shape (model, batch, sequence, dtype, device, mode), variants sorted by peak. Tick labels "
                "are coloured by method. Hatched bars are estimates (fake tensors, not measured).")
    recs = [r for r in records if is_ok(r) and get(r, MEMORY.at_peak)]
    if not recs:
        plot.skipped = "no ok record has memory.at_peak"
        return plot
    groups = _limit(shape_groups(recs), plot)
    fig, axs = _bar_panels(groups)
    shown: set[str] = set()  # categories some drawn bar holds bytes of
    for ax, (title, group) in zip(axs, groups):
        group = sorted(group, key=lambda r: get(r, MEMORY.peak) or 0)
        labels = Axes.of(group)
        held = [bytes_at_peak(r) for r in group]
        shown.update(c for h in held for c, n in h.items() if n)
        divisor, unit = byte_scale(max(sum(h.values()) for h in held))
        ys = list(range(len(group)))
        lefts = [0.0] * len(group)
        for cat in [c for c in CATEGORY_COLORS if any(h.get(c) for h in held)]:
            widths = [h.get(cat, 0) / divisor for h in held]
            bars = ax.barh(ys, widths, left=lefts, color=CATEGORY_COLORS[cat], label=cat)
            for bar, rec in zip(bars, group):
                if mode(rec) == "estimate":
                    bar.set_hatch(ESTIMATE_HATCH)
            lefts = [a + b for a, b in zip(lefts, widths)]
        ax.set_yticks(ys, [labels.label(r) for r in group], fontsize=8)
        _color_ticklabels(ax, group)
        ax.set_ylim(len(group) - 0.5, -0.5)  # lowest peak on top, as the headline ranks
        ax.set_xlabel(f"memory at peak ({unit})", fontsize=8)
        ax.set_title(title, fontsize=9, loc="left")
    handles = [Patch(color=color, label=c) for c, color in CATEGORY_COLORS.items() if c in CATEGORIES or c in shown]
    if any(mode(r) == "estimate" for r in recs):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch=ESTIMATE_HATCH, label="estimate"))
    legend_outside(fig, handles, [h.get_label() for h in handles], "at peak")
    return save(fig, out_dir, plot)


# ---- 2. adapter saved activations per token vs d ---------------------------------------------

_SWEEP_FIXED = ("workload", "layers", "r", "dtype", "targets", "gradient_checkpointing", "device", "mode")


def plot_saved_per_token_vs_d(records: list[dict[str, Any]], out_dir: Path) -> Plot:
    plot = Plot("saved_activations_per_token_vs_d",
                "Adapter saved-activation bytes per token vs d, at fixed r",
                "memory.saved_activations_adapter / (batch x seq) against the layer width d, log-log, "
                "for sweeps over d with everything else (workload, r, dtype, targets, ...) fixed. "
                "Markers: observed (filled measured, hollow estimated); dashed: the closed form. "
                "LoRA's grows with d (it saves x); LaMDA's stays flat (it saves only r-wide tensors).")
    recs = [r for r in records if is_ok(r) and width(r) and tokens(r)
            and (get(r, MEMORY.saved_activations_adapter) or 0) > 0]
    sweeps: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in recs:
        sweeps[json.dumps([cell_value(rec, a) for a in _SWEEP_FIXED], default=str)].append(rec)
    panels = [rs for rs in sweeps.values() if len({width(x) for x in rs}) >= 3]
    if not panels:
        plot.skipped = ("no sweep over d (three or more widths at one workload, r, dtype and targets, as "
                        "suites/layers.toml runs): points from different models or dtypes cannot show "
                        "the r-dimensional claim")
        return plot
    panels = _limit(panels, plot)
    fig, axs = _panel_grid(len(panels), margin=2.6, panel_height=3.6)
    for ax, rs in zip(axs, panels):
        inner = Axes.of(rs, exclude=("d_in", "d_out", "batch", "seq"))
        series: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in rs:
            series[inner.label(rec)].append(rec)
        # LoRA and PiSSA share an architecture: shrink each later series' markers so all stay visible.
        for k, (label, srs) in enumerate(sorted(series.items())):
            srs.sort(key=width)
            method = str(cell_value(srs[0], "method"))
            color = method_color(method)
            hollow = mode(srs[0]) == "estimate"
            ax.plot([width(x) for x in srs], [get(x, MEMORY.saved_activations_adapter) / tokens(x) for x in srs],
                    method_marker(method), color=color, markerfacecolor="none" if hollow else color,
                    markersize=max(4, 10 - 2 * k), zorder=2 + k, linestyle="none", label=label)
            pred = [(width(x), get(x, PREDICTED_MEMORY.saved_activations_adapter) / tokens(x))
                    for x in srs if (get(x, PREDICTED_MEMORY.saved_activations_adapter) or 0) > 0]
            if pred:
                ax.plot(*zip(*pred), "--", color=color, linewidth=1)
        log_axis(ax, "x", base=2)
        log_axis(ax, "y", base=2)
        ax.set_xlabel("d (layer width)", fontsize=8)
        ax.set_ylabel("adapter saved bytes / token", fontsize=8)
        ax.set_title(f"{cell_value(rs[0], 'workload')}, r={cell_value(rs[0], 'r')}, {cell_value(rs[0], 'dtype')}, "
                     f"targets={cell_value(rs[0], 'targets')}" + (" (estimate)" if mode(rs[0]) == "estimate" else ""),
                     fontsize=9)
    handles, labels = unique_handles(axs)
    handles.append(Line2D([], [], linestyle="--", color="black"))
    labels.append("closed form")
    legend_outside(fig, handles, labels)
    return save(fig, out_dir, plot)


# ---- 3. trainable parameters and updates vs r -------------------------------------------------

_PARAM_FIXED = ("workload", "d_in", "d_out", "layers", "targets")


def plot_params_vs_r(records: list[dict[str, Any]], out_dir: Path) -> Plot:
    plot = Plot("params_vs_r", "Trainable parameters and parameter updates vs r",
                "params.trainable (solid: trainable at the start of the run, before any freezing) and "
                "params.updates (dotted: trainable parameters summed over the run's steps, so gradual "
                "freezing shows), log scale; one panel per model and targets, so no line joins two models.")
    recs = [r for r in records if is_ok(r) and get(r, PARAMS.trainable) and cell_value(r, "method") != "full"]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in recs:
        groups[json.dumps([cell_value(rec, a) for a in _PARAM_FIXED], default=str)].append(rec)
    panels = [g for g in groups.values() if len({cell_value(x, "r") for x in g}) >= 2]
    if not panels:
        plot.skipped = "no model and target set was run at two or more ranks r"
        return plot
    panels = _limit(panels, plot)
    inner = Axes.of([r for g in panels for r in g], exclude=_PARAM_FIXED + (
        "r", "batch", "seq", "dtype", "mode", "device", "steps", "warmup", "gradient_checkpointing"))
    fig, axs = _panel_grid(len(panels), margin=2.6, panel_height=3.6)
    for ax, group in zip(axs, panels):
        lines: dict[str, dict[int, tuple[int, int]]] = defaultdict(dict)
        for rec in group:  # parameter counts do not depend on batch/seq: one point per r
            lines[inner.label(rec)].setdefault(cell_value(rec, "r"), (get(rec, PARAMS.trainable),
                                                                       get(rec, PARAMS.updates)))
        for label, pts in sorted(lines.items()):
            method = label.split(" ")[0]
            xs = sorted(pts)
            ax.plot(xs, [pts[x][0] for x in xs], "-", marker=method_marker(method), color=method_color(method),
                    label=label)
            upd = [(x, pts[x][1]) for x in xs if pts[x][1]]
            if upd:
                ax.plot(*zip(*upd), ":", color=method_color(method), linewidth=1)
        log_axis(ax, "x", base=2)
        log_axis(ax, "y")
        ax.set_xlabel("r", fontsize=8)
        ax.set_ylabel("parameters", fontsize=8)
        ax.set_title(_model_title(group[0]), fontsize=9)
    handles, labels = unique_handles(axs)
    handles += [Line2D([], [], color="black"), Line2D([], [], color="black", linestyle=":")]
    labels += ["trainable (start of run)", "updates (sum over steps)"]
    legend_outside(fig, handles, labels)
    return save(fig, out_dir, plot)


def _model_title(rec: dict[str, Any]) -> str:
    """'llama2-7b, targets=attn' or 'linear 4096x4096 L2, targets=all'."""
    d_in, d_out, layers = (cell_value(rec, k) for k in ("d_in", "d_out", "layers"))
    shape = f" {d_in}x{d_out or d_in}" if d_in else ""
    shape += f" L{layers}" if layers else ""
    return f"{cell_value(rec, 'workload')}{shape}, targets={cell_value(rec, 'targets')}"


# ---- 4. adapter FLOPs and throughput -----------------------------------------------------------


def plot_throughput_and_flops(records: list[dict[str, Any]], out_dir: Path) -> Plot:
    plot = Plot("throughput_and_flops", "Adapter FLOPs and throughput, per shape",
                "Left: the adapter's own FLOPs in one step (flops.adapter_forward, solid, + adapter_backward, "
                "light); the frozen base's FLOPs are the same for every method and left out, and full "
                "fine-tuning (no adapter) is not drawn. Right, for shapes with timed cells: tokens/s of the "
                "median step, the whisker spanning the slowest to the fastest timed step. Hatched: estimate.")
    recs = [r for r in records if is_ok(r) and cell_value(r, "method") != "full"
            and (get(r, FLOPS.adapter_forward) is not None or get(r, TIME.tokens_per_s))]
    if not recs:
        plot.skipped = "no ok adapter record has adapter FLOP counts or tokens/s"
        return plot
    flagged = flagged_step_times(recs)
    groups = _limit(shape_groups(recs), plot)
    timed_any = any(get(r, TIME.tokens_per_s) for r in recs)
    heights = [max(1.4, 0.28 * len(g) + 0.9) for _, g in groups]
    fig = figure(13.0 if timed_any else 9.0, sum(heights) + 0.6)
    grid = fig.add_gridspec(len(groups), 2 if timed_any else 1, height_ratios=heights)
    for i, (title, group) in enumerate(groups):
        group = sorted(group, key=method_order)
        labels = Axes.of(group)
        ys = list(range(len(group)))
        timed = [r for r in group if get(r, TIME.tokens_per_s)]
        ax = fig.add_subplot(grid[i, 0] if timed or not timed_any else grid[i, :])
        fwd = [get(r, FLOPS.adapter_forward) or 0 for r in group]
        bwd = [get(r, FLOPS.adapter_backward) or 0 for r in group]
        div, unit = flop_scale(max(max(f + b for f, b in zip(fwd, bwd)), 1))
        colors = [method_color(str(cell_value(r, "method"))) for r in group]
        for left, values, alpha in ((None, fwd, 1.0), (fwd, bwd, 0.45)):
            bars = ax.barh(ys, [v / div for v in values], left=None if left is None else [v / div for v in left],
                           color=colors, alpha=alpha)
            for bar, rec in zip(bars, group):
                if mode(rec) == "estimate":
                    bar.set_hatch(ESTIMATE_HATCH)
        ax.set_yticks(ys, [labels.label(r) for r in group], fontsize=8)
        ax.set_ylim(len(group) - 0.5, -0.5)
        _color_ticklabels(ax, group)
        ax.set_xlabel(f"adapter FLOPs per step ({unit}); solid forward, light backward", fontsize=8)
        ax.set_title(title + ("" if timed or not timed_any else "  (not timed)"), fontsize=9, loc="left")
        if timed:
            tax = fig.add_subplot(grid[i, 1], sharey=ax)
            tax.tick_params(labelleft=False)
            scale = 1e6 if max(get(r, TIME.tokens_per_s) for r in timed) >= 1e6 else 1e3
            for y, rec in zip(ys, group):
                rate = get(rec, TIME.tokens_per_s)
                if not rate:
                    continue
                n = tokens(rec) or 0
                lo = n / get(rec, TIME.step_max_s) if get(rec, TIME.step_max_s) else rate
                hi = n / get(rec, TIME.step_min_s) if get(rec, TIME.step_min_s) else rate
                bad = rec.get("id") in flagged
                tax.barh([y], [rate / scale], color=FLAGGED_COLOR if bad else method_color(str(cell_value(rec, "method"))),
                         hatch="xx" if bad else None,
                         xerr=[[max(rate - lo, 0) / scale], [max(hi - rate, 0) / scale]], capsize=3,
                         error_kw={"elinewidth": 1})
            unit = "million" if scale == 1e6 else "thousand"
            tax.set_xlabel(f"{unit} tokens/s (median step; whisker: slowest to fastest)", fontsize=8)
    if flagged:
        plot.description += (" Grey cross-hatched bars are flagged, not findings: " + "; ".join(flagged.values())
                             + ".")
    if not timed_any:
        plot.description += " No record was timed (estimate mode only), so there is no throughput panel."
    return save(fig, out_dir, plot)


# ---- 5. Pareto view: peak memory against trainable parameters ----------------------------------


def plot_pareto(records: list[dict[str, Any]], out_dir: Path) -> Plot:
    plot = Plot("pareto_peak_vs_trainable", "Peak memory against trainable parameters, per shape",
                "One point per cell: trainable parameters at the start of the run (log) against peak memory "
                "(memory.peak); one colour and marker per method, hollow for estimates. Lower left is better "
                "on both; the trade-off against accuracy is not something a memory harness measures.")
    recs = [r for r in records if is_ok(r) and get(r, MEMORY.peak) and get(r, PARAMS.trainable)]
    if not recs:
        plot.skipped = "no ok record has both memory.peak and params.trainable"
        return plot
    groups = _limit(shape_groups(recs), plot)
    fig, axs = _panel_grid(len(groups), margin=2.0, panel_height=3.5)
    for ax, (title, group) in zip(axs, groups):
        divisor, unit = byte_scale(max(get(r, MEMORY.peak) for r in group))
        for rec in group:
            method = str(cell_value(rec, "method"))
            color = method_color(method)
            ax.plot([get(rec, PARAMS.trainable)], [get(rec, MEMORY.peak) / divisor], method_marker(method),
                    color=color, markerfacecolor="none" if mode(rec) == "estimate" else color, markersize=8,
                    linestyle="none", label=method)
        ax.set_ylim(0, 1.12 * max(get(r, MEMORY.peak) for r in group) / divisor)  # from zero: a 0.4%
        # difference must not look like a factor of two
        ax.margins(x=0.15)
        log_axis(ax, "x")
        ax.set_xlabel("trainable parameters", fontsize=8)
        ax.set_ylabel(f"peak ({unit})", fontsize=8)
        ax.set_title(title, fontsize=9)
    handles, labels = unique_handles(axs)
    legend_outside(fig, handles, labels, "method")
    return save(fig, out_dir, plot)


def draw_all(records: list[dict[str, Any]], results_dir: Path, plots_dir: Path) -> list[Plot]:
    """All plots, in report order. A skipped plot's stale PNG from an earlier report (and a
    PNG of a plot this version no longer draws) is removed, so the directory never shows a
    figure that does not match the results."""
    makers: list[Callable[[], Plot]] = [
        lambda: plot_peak_by_category(records, plots_dir),
        lambda: plot_pareto(records, plots_dir),
        lambda: plot_saved_per_token_vs_d(records, plots_dir),
        lambda: plot_params_vs_r(records, plots_dir),
        lambda: plot_throughput_and_flops(records, plots_dir),
        lambda: plot_step_timeline(records, plots_dir, results_dir),
        lambda: plot_freezing(records, plots_dir),
        lambda: plot_peak_per_card_vs_world_size(records, plots_dir),
    ]
    plots = []
    for make in makers:
        plot = make()
        if plot.path is None:
            (plots_dir / f"{plot.key}.png").unlink(missing_ok=True)
        plots.append(plot)
    for retired in RETIRED_PLOTS:
        (plots_dir / f"{retired}.png").unlink(missing_ok=True)
    return plots


# Plots earlier versions drew: their PNGs would otherwise linger next to the new ones.
RETIRED_PLOTS = ("params_vs_d_and_r",)
