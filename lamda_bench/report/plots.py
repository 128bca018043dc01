"""The report's six plots, each drawn only when its data exists.

Every ``plot_*`` function takes the records (and where needed the results directory) and
returns a ``Plot``: the PNG it wrote, or the reason it was skipped. Figures are drawn with
matplotlib's object API on an Agg canvas (no pyplot state, no display needed).

Estimates are marked as such in every figure: hollow/"x" markers, hatched bars and
"(estimate)" in the legend, never the same style as a measurement.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .records import get, is_ok, method_label, mode, tokens, width

CATEGORIES = ("weights", "grads", "optimizer", "activations", "temporaries")
CATEGORY_COLORS = {
    "weights": "#4c72b0", "grads": "#dd8452", "optimizer": "#55a868",
    "activations": "#c44e52", "temporaries": "#8172b3",
}
ESTIMATE_HATCH = "//"


@dataclass
class Plot:
    """One plot of the report: written to ``path``, or skipped for ``skipped`` (a reason)."""

    key: str
    title: str
    description: str
    path: Path | None = None
    skipped: str | None = None


# ---- helpers ------------------------------------------------------------------------------


def _byte_scale(max_bytes: float) -> tuple[float, str]:
    """Divisor and unit that put ``max_bytes`` between 1 and 1024 (GiB = 2^30 bytes)."""
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if max_bytes >= 1024**power:
            return float(1024**power), unit
    return 1.0, "bytes"


def _flop_scale(max_flops: float) -> tuple[float, str]:
    """Divisor and unit for FLOP axes (GFLOP = 10^9, TFLOP = 10^12)."""
    for power, unit in ((15, "PFLOP"), (12, "TFLOP"), (9, "GFLOP"), (6, "MFLOP"), (3, "kFLOP")):
        if max_flops >= 10**power:
            return float(10**power), f"{unit}, 10^{power}"
    return 1.0, "FLOP"


def _estimate_legend_entry(ax: Any, records: list[dict[str, Any]]) -> None:
    """Add 'hatched = estimate' to the legend when any bar is an estimate."""
    if any(mode(r) == "estimate" for r in records):
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Patch(facecolor="white", edgecolor="black", hatch=ESTIMATE_HATCH))
        labels.append("hatched: estimate (not measured)")
        ax.legend(handles, labels, fontsize=8)
    else:
        ax.legend(fontsize=8)


def _varying(records: list[dict[str, Any]], fields: tuple[str, ...]) -> list[str]:
    """The fields (dotted) whose values differ among ``records``: what a label must show."""
    return [f for f in fields if len({json.dumps(get(r, f), default=str) for r in records}) > 1]


_SHORT = {"cell.workload": "", "cell.r": "r", "cell.batch": "b", "cell.seq": "s",
          "cell.dtype": "", "cell.layers": "L", "cell.d_in": "d", "cell.targets": ""}


def _label(rec: dict[str, Any], fields: list[str], with_method: bool = True) -> str:
    parts = [method_label(rec)] if with_method else []
    for f in fields:
        if f == "cell.mode":
            continue
        value = get(rec, f)
        if value is None:
            continue
        parts.append(f"{_SHORT.get(f, f.split('.')[-1] + '=')}{value}")
    if mode(rec) == "estimate":
        parts.append("(estimate)")
    return " ".join(parts)


def _save(fig: Figure, out_dir: Path, key: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{key}.png"
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _sort_key(rec: dict[str, Any]) -> tuple:
    return (str(get(rec, "cell.workload", "")), method_label(rec), get(rec, "cell.r", 0),
            width(rec) or 0, get(rec, "cell.batch", 0), get(rec, "cell.seq", 0), mode(rec))


BAR_FIELDS = ("cell.workload", "cell.r", "cell.batch", "cell.seq", "cell.dtype", "cell.layers", "cell.d_in")


# ---- 1. peak memory by category -----------------------------------------------------------


def plot_peak_by_category(records: list[dict[str, Any]], out_dir: Path) -> Plot:
    plot = Plot("peak_memory_by_category", "Peak memory per method, by category",
                "Live bytes at the step's peak (memory.at_peak), stacked by what holds them, "
                "for each method across batch and sequence length. Hatched bars are estimates.")
    recs = sorted((r for r in records if is_ok(r) and get(r, "memory.at_peak")), key=_sort_key)
    if not recs:
        plot.skipped = "no ok record has memory.at_peak"
        return plot
    divisor, unit = _byte_scale(max(sum(get(r, f"memory.at_peak.{c}", 0) for c in CATEGORIES) for r in recs))
    fields = _varying(recs, BAR_FIELDS)
    fig = Figure(figsize=(max(6.0, 0.55 * len(recs) + 2), 4.8))
    ax = fig.add_subplot()
    xs = range(len(recs))
    bottoms = [0.0] * len(recs)
    for cat in CATEGORIES:
        heights = [get(r, f"memory.at_peak.{cat}", 0) / divisor for r in recs]
        bars = ax.bar(xs, heights, bottom=bottoms, color=CATEGORY_COLORS[cat], label=cat)
        for bar, rec in zip(bars, recs):
            if mode(rec) == "estimate":
                bar.set_hatch(ESTIMATE_HATCH)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.set_xticks(list(xs), [_label(r, fields) for r in recs], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"memory at peak ({unit})")
    ax.set_title(plot.title)
    _estimate_legend_entry(ax, recs)
    plot.path = _save(fig, out_dir, plot.key)
    return plot


# ---- 2. adapter saved activations per token vs d --------------------------------------------


def plot_saved_per_token_vs_d(records: list[dict[str, Any]], out_dir: Path) -> Plot:
    plot = Plot("saved_activations_per_token_vs_d",
                "Adapter saved-activation bytes per token vs d, at fixed r",
                "memory.saved_activations_adapter / (batch x seq), log-log. Markers: observed "
                "(filled circles measured, x estimated with fake tensors); dashed lines: the closed "
                "form (predicted.memory.saved_activations_adapter). LoRA's grows with d (it saves x); "
                "LaMDA's stays flat (it saves only r-wide tensors).")
    recs = [r for r in records if is_ok(r) and width(r) and tokens(r)
            and (get(r, "memory.saved_activations_adapter") or 0) > 0]
    by_r: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for rec in recs:
        by_r[get(rec, "cell.r")].append(rec)
    panels = {r: rs for r, rs in sorted(by_r.items()) if len({width(x) for x in rs}) >= 2}
    if not panels:
        plot.skipped = "no rank r has ok records at two or more values of d with saved adapter activations"
        return plot
    panels = dict(list(panels.items())[:4])
    fig = Figure(figsize=(5.2 * len(panels), 4.6))
    for i, (r, rs) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        fields = _varying(rs, ("cell.workload", "cell.dtype", "cell.layers", "cell.targets"))
        series: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in rs:
            series[_label(rec, fields)].append(rec)
        # Methods with identical figures (LoRA and PiSSA share an architecture) would hide
        # each other: shrink each later series' markers so every one stays visible.
        for k, (label, srs) in enumerate(sorted(series.items())):
            srs.sort(key=width)
            xs = [width(x) for x in srs]
            ys = [get(x, "memory.saved_activations_adapter") / tokens(x) for x in srs]
            estimate = mode(srs[0]) == "estimate"
            (line,) = ax.plot(xs, ys, "x" if estimate else "o", label=label, markersize=max(3, 10 - 2 * k),
                              zorder=2 + k)
            pred = [(width(x), get(x, "predicted.memory.saved_activations_adapter") / tokens(x))
                    for x in srs if (get(x, "predicted.memory.saved_activations_adapter") or 0) > 0]
            if pred:
                ax.plot(*zip(*pred), "--", color=line.get_color(), linewidth=1,
                        label=label.replace(" (estimate)", "") + " predicted")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("d (model width)")
        ax.set_ylabel("adapter saved activations (bytes per token)")
        ax.set_title(f"r = {r}")
        ax.legend(fontsize=7)
    fig.suptitle(plot.title)
    if len(by_r) > len(panels):
        plot.description += f" Only the first {len(panels)} ranks with a sweep over d are drawn."
    plot.path = _save(fig, out_dir, plot.key)
    return plot


# ---- 3. trainable parameters and updates vs d and r -----------------------------------------


def _most_common(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0]


def plot_params_vs_d_and_r(records: list[dict[str, Any]], out_dir: Path) -> Plot:
    plot = Plot("params_vs_d_and_r", "Trainable parameters and parameter updates vs d and r",
                "params.trainable (at the end of the run) and params.updates (trainable parameters "
                "summed over the run's steps, so gradual freezing shows), log scale. Left: against d "
                "at the most common r; right: against r at the most common d.")
    recs = [r for r in records if is_ok(r) and get(r, "params.trainable") is not None and width(r)]
    if not recs:
        plot.skipped = "no ok record has params.trainable and a known d"
        return plot
    fixed_r = _most_common([get(r, "cell.r") for r in recs])
    fixed_d = _most_common([width(r) for r in recs])
    sweeps = {
        "d": ([r for r in recs if get(r, "cell.r") == fixed_r], width, f"d (r = {fixed_r})"),
        "r": ([r for r in recs if width(r) == fixed_d], lambda x: get(x, "cell.r"), f"r (d = {fixed_d})"),
    }
    usable = {k: v for k, v in sweeps.items() if len({v[1](x) for x in v[0]}) >= 2}
    if not usable:
        plot.skipped = "records span a single d and a single r: nothing to draw a line through"
        return plot
    fig = Figure(figsize=(5.2 * len(usable), 8.0))
    for col, (axis, (rs, xfn, xlabel)) in enumerate(usable.items()):
        for row, (field, ylabel) in enumerate((("params.trainable", "trainable parameters"),
                                               ("params.updates", "parameter updates (sum over steps)"))):
            ax = fig.add_subplot(2, len(usable), row * len(usable) + col + 1)
            points: dict[str, dict[Any, float]] = defaultdict(dict)
            for rec in rs:
                value = get(rec, field)
                if value:  # parameter counts do not depend on batch/seq: one point per x
                    points[method_label(rec)].setdefault(xfn(rec), value)
            for label, pts in sorted(points.items()):
                xs = sorted(pts)
                ax.plot(xs, [pts[x] for x in xs], "o-", label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            if points:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, f"no {field} recorded", ha="center", transform=ax.transAxes)
    fig.suptitle(plot.title)
    plot.path = _save(fig, out_dir, plot.key)
    return plot


# ---- 4. throughput and FLOPs --------------------------------------------------------------


def plot_throughput_and_flops(records: list[dict[str, Any]], out_dir: Path) -> Plot:
    plot = Plot("throughput_and_flops", "Throughput and FLOPs per method",
                "Left: tokens/s from timed steps (measure mode only: estimates have no time). "
                "Right: forward and backward FLOPs of one step (FlopCounterMode, attention as the "
                "record's flops.attention_counting says); hatched bars are estimates.")
    timed = sorted((r for r in records if is_ok(r) and get(r, "time.tokens_per_s")), key=_sort_key)
    counted = sorted((r for r in records if is_ok(r) and get(r, "flops.forward") is not None), key=_sort_key)
    if not timed and not counted:
        plot.skipped = "no ok record has tokens/s or FLOP counts"
        return plot
    panels = [p for p in (("time", timed), ("flops", counted)) if p[1]]
    widths = [max(len(rs), 4) for _, rs in panels]
    fig = Figure(figsize=(max(6.0, 0.5 * sum(widths) + 3), 4.8))
    grid = fig.add_gridspec(1, len(panels), width_ratios=widths)
    for i, (kind, rs) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        fields = _varying(rs, BAR_FIELDS)
        xs = list(range(len(rs)))
        if kind == "time":
            ax.bar(xs, [get(r, "time.tokens_per_s") for r in rs], color="#4c72b0")
            ax.set_ylabel("throughput (tokens/s, median step)")
            ax.set_title("throughput (measured)")
        else:
            w = 0.4
            div, unit = _flop_scale(max(max(get(r, "flops.forward") or 0, get(r, "flops.backward") or 0) for r in rs))
            for offset, field, color in ((-w / 2, "flops.forward", "#55a868"), (w / 2, "flops.backward", "#c44e52")):
                bars = ax.bar([x + offset for x in xs], [(get(r, field) or 0) / div for r in rs], w,
                              color=color, label=field.split(".")[1])
                for bar, rec in zip(bars, rs):
                    if mode(rec) == "estimate":
                        bar.set_hatch(ESTIMATE_HATCH)
            ax.set_ylabel(f"FLOPs per step ({unit})")
            ax.set_title("FLOPs per training step")
            _estimate_legend_entry(ax, rs)
        ax.set_xticks(xs, [_label(r, fields) for r in rs], rotation=60, ha="right", fontsize=8)
    if not timed:
        plot.description += " No record was timed (estimate mode only), so the throughput panel is absent."
    plot.path = _save(fig, out_dir, plot.key)
    return plot


# ---- 5. memory over one training step (timelines) --------------------------------------------

TIMELINE_METHODS = ("lora", "lamda")
PHASE_COLORS = {"forward": "#e8f0fb", "backward": "#fbeaea", "optimizer": "#eaf6ec"}


def _load_timeline(results_dir: Path, rec: dict[str, Any]) -> list[dict[str, Any]] | None:
    rel = get(rec, "artifacts.timeline")
    if not rel:
        return None
    path = results_dir / str(rel)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # a damaged side file
        import warnings

        from ..results import DataWarning

        warnings.warn(f"{path}: unreadable timeline ({type(e).__name__}: {e}); left out of the plot",
                      DataWarning, stacklevel=2)
        return None
    # execute.py writes {"id", "unit": "bytes", "events": [...]}; a bare list is accepted too
    events = data.get("events") if isinstance(data, dict) else data
    if not isinstance(events, list) or not events:
        return None
    problem = _timeline_problem(events)
    if problem:
        import warnings

        from ..results import DataWarning

        warnings.warn(f"{path}: {problem}; left out of the plot", DataWarning, stacklevel=2)
        return None
    return events


def _timeline_problem(events: list[Any]) -> str | None:
    """Why these events cannot be drawn (the first bad one), or None."""
    from ..record_values import is_number

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


def _shape_key(rec: dict[str, Any]) -> tuple:
    return tuple(json.dumps(get(rec, f), default=str) for f in
                 ("cell.workload", "cell.d_in", "cell.d_out", "cell.layers", "cell.r", "cell.batch",
                  "cell.seq", "cell.dtype", "cell.mode", "cell.targets"))


def plot_step_timeline(records: list[dict[str, Any]], out_dir: Path, results_dir: Path) -> Plot:
    plot = Plot("memory_over_step_lora_vs_lamda", "Memory over one training step: LoRA vs LaMDA",
                "Live bytes after each tracked event of one step (forward, backward, optimizer), "
                "from the timeline files; x is the position within the step (events differ in "
                "number between methods). Top: total; below: by category for each method.")
    groups: dict[tuple, dict[str, tuple[dict, list]]] = defaultdict(dict)
    for rec in records:
        method = get(rec, "cell.method")
        if not is_ok(rec) or method not in TIMELINE_METHODS:
            continue
        timeline = _load_timeline(results_dir, rec)
        if timeline is not None:
            groups[_shape_key(rec)].setdefault(method, (rec, timeline))
    pairs = [g for g in groups.values() if len(g) == len(TIMELINE_METHODS)]
    if not pairs:
        plot.skipped = ("no LoRA and LaMDA records of the same shape (workload, d, r, batch, seq, dtype, "
                        "mode) both have a timeline file")
        return plot
    pair = max(pairs, key=lambda g: tokens(g["lora"][0]) or 0)
    lora_rec = pair["lora"][0]
    all_live = [e.get("live_bytes", 0) for _, tl in pair.values() for e in tl]
    divisor, unit = _byte_scale(max(all_live))
    fig = Figure(figsize=(11, 9))
    top = fig.add_subplot(3, 1, 1)
    for method, (rec, tl) in pair.items():
        n = max(len(tl) - 1, 1)
        top.plot([i / n for i in range(len(tl))], [e.get("live_bytes", 0) / divisor for e in tl],
                 label=method + (" (estimate)" if mode(rec) == "estimate" else ""))
    top.set_ylabel(f"live ({unit})")
    top.set_title(f"{plot.title}  [{get(lora_rec, 'cell.workload')}, d={width(lora_rec)}, "
                  f"r={get(lora_rec, 'cell.r')}, batch={get(lora_rec, 'cell.batch')}, "
                  f"seq={get(lora_rec, 'cell.seq')}]", fontsize=10)
    for row, (method, (rec, tl)) in enumerate(pair.items()):
        ax = fig.add_subplot(3, 1, row + 2, sharex=top)
        n = max(len(tl) - 1, 1)
        xs = [i / n for i in range(len(tl))]
        cats = [c for c in CATEGORIES if any(c in (e.get("by_category") or {}) for e in tl)]
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
    plot.path = _save(fig, out_dir, plot.key)
    return plot


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


# ---- 6. LaMDA gradual freezing ---------------------------------------------------------------

# (series field, axis label, how to scale: count | bytes | flops)
SERIES_FIELDS = (("trainable", "trainable parameters", "count"),
                 ("optimizer", "optimizer state", "bytes"),
                 ("backward_flops", "backward FLOPs", "flops"))


def plot_freezing(records: list[dict[str, Any]], out_dir: Path) -> Plot:
    plot = Plot("lamda_gradual_freezing", "LaMDA gradual freezing over training steps: split vs mask",
                "Per step (record.series): trainable parameters, optimizer state and backward FLOPs "
                "while B's rank components freeze. 'split' really freezes them (fewer parameters, "
                "optimizer state released, less backward work); 'mask' zeroes their gradients as the "
                "authors' code does, which saves nothing.")
    recs = sorted((r for r in records if is_ok(r) and str(get(r, "cell.method", "")).startswith("lamda")
                   and get(r, "series.step")), key=_sort_key)
    if not recs:
        plot.skipped = "no ok LaMDA record has a per-step series"
        return plot
    fields = _varying(recs, ("cell.workload", "cell.r", "cell.batch", "cell.seq", "cell.layers", "cell.d_in"))
    fig = Figure(figsize=(15, 4.4))
    for i, (field, ylabel, kind) in enumerate(SERIES_FIELDS):
        ax = fig.add_subplot(1, len(SERIES_FIELDS), i + 1)
        values_seen = [v for r in recs for v in (get(r, f"series.{field}") or []) if v is not None]
        scaler = {"bytes": _byte_scale, "flops": _flop_scale}.get(kind)
        div, unit = scaler(max(values_seen, default=0)) if scaler else (1.0, "")
        for rec in recs:
            steps, ys = get(rec, "series.step") or [], get(rec, f"series.{field}") or []
            pts = [(s, y / div) for s, y in zip(steps, ys) if y is not None]
            if pts:
                freeze = get(rec, "cell.options.freeze_mode", "split")
                label = _label(rec, fields).replace(method_label(rec), f"{get(rec, 'cell.method')} {freeze}", 1)
                ax.plot(*zip(*pts), "o-" if freeze == "split" else "s--", markersize=3, label=label)
        ax.set_xlabel("training step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        positive = [v for v in values_seen if v > 0]
        if positive and max(positive) / min(positive) > 100:  # cells of very different sizes
            ax.set_yscale("log")
        ax.set_ylabel(f"{ylabel} ({unit})" if unit else ylabel)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no series.{field} recorded", ha="center", transform=ax.transAxes)
    fig.suptitle(plot.title)
    modes = {get(r, "cell.options.freeze_mode", "split") for r in recs}
    if len(modes) < 2:
        plot.description += f" Only freeze_mode {sorted(modes)} was run, so there is nothing to contrast."
    plot.path = _save(fig, out_dir, plot.key)
    return plot


def draw_all(records: list[dict[str, Any]], results_dir: Path, plots_dir: Path) -> list[Plot]:
    """All six plots, in report order. A skipped plot's stale PNG from an earlier report is
    removed so the directory never shows a figure that no longer matches the results."""
    makers: list[Callable[[], Plot]] = [
        lambda: plot_peak_by_category(records, plots_dir),
        lambda: plot_saved_per_token_vs_d(records, plots_dir),
        lambda: plot_params_vs_d_and_r(records, plots_dir),
        lambda: plot_throughput_and_flops(records, plots_dir),
        lambda: plot_step_timeline(records, plots_dir, results_dir),
        lambda: plot_freezing(records, plots_dir),
    ]
    plots = []
    for make in makers:
        plot = make()
        if plot.path is None:
            (plots_dir / f"{plot.key}.png").unlink(missing_ok=True)
        plots.append(plot)
    return plots
