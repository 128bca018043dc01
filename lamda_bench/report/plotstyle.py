"""What every report plot shares: one fixed colour and marker per method, category colours,
small-multiple grids, legends outside the data, byte/FLOP axis scales, saving.

A method keeps its colour in every plot of every report (``METHOD_COLORS``), so "LaMDA is
green" holds across figures. Figures use constrained layout and put legends in the figure
margin (``loc="outside ..."``), never over the data.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..results.record import CATEGORIES  # noqa: F401 - the tracker's categories (record.py), with their colors below
from .axes import cell_value

METHOD_COLORS = {
    "full": "#333333", "lora": "#1f77b4", "pissa": "#17becf", "lora-fa": "#9467bd", "dora": "#8c564b",
    "vera": "#e377c2", "lamda": "#2ca02c", "lamda++": "#d62728",
}
METHOD_MARKERS = {"full": "s", "lora": "o", "pissa": "v", "lora-fa": "^", "dora": "D", "vera": "P",
                  "lamda": "*", "lamda++": "X"}
_SPARE_COLORS = ("#bcbd22", "#ff7f0e", "#7f7f7f", "#aec7e8", "#98df8a")
CATEGORY_COLORS = {
    "weights": "#4c72b0", "grads": "#dd8452", "optimizer": "#55a868",
    "activations": "#c44e52", "temporaries": "#8172b3",
    "unsharded_weights": "#9fb6dd", "comm_buffers": "#937860",  # sharded cells only
}
ESTIMATE_HATCH = "//"
FLAGGED_COLOR = "#c8c8c8"


@dataclass
class Plot:
    """One plot of the report: written to ``path``, or skipped for ``skipped`` (a reason).
    ``figure`` is the drawn figure (kept for tests that inspect its text)."""

    key: str
    title: str
    description: str
    path: Path | None = None
    skipped: str | None = None
    figure: Any = None


def method_color(method: str) -> str:
    """The method's fixed colour; an unknown method gets a stable spare one."""
    return METHOD_COLORS.get(method) or _SPARE_COLORS[zlib.crc32(method.encode()) % len(_SPARE_COLORS)]


def method_marker(method: str) -> str:
    return METHOD_MARKERS.get(method, "o")


def figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def byte_scale(max_bytes: float) -> tuple[float, str]:
    """Divisor and unit that put ``max_bytes`` between 1 and 1024 (GiB = 2^30 bytes)."""
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if max_bytes >= 1024**power:
            return float(1024**power), unit
    return 1.0, "bytes"


def flop_scale(max_flops: float) -> tuple[float, str]:
    """Divisor and unit for FLOP axes (GFLOP = 10^9, TFLOP = 10^12)."""
    for power, unit in ((15, "PFLOP"), (12, "TFLOP"), (9, "GFLOP"), (6, "MFLOP"), (3, "kFLOP")):
        if max_flops >= 10**power:
            return float(10**power), f"{unit}, 10^{power}"
    return 1.0, "FLOP"


LEGEND_MARGIN_IN = 0.3  # inches above and below a figure-tall legend


def legend_outside(fig: Figure, handles: list[Any], labels: list[str], title: str | None = None) -> None:
    """One legend for the whole figure, in its right margin; the figure is made as tall as the
    legend where the legend is the taller (its last entries were cut off the image otherwise)."""
    if not handles:
        return
    legend = fig.legend(handles, labels, loc="outside right upper", fontsize=8, title=title, title_fontsize=8)
    height = legend.get_window_extent(FigureCanvasAgg(fig).get_renderer()).height / fig.dpi + LEGEND_MARGIN_IN
    if height > fig.get_figheight():
        fig.set_figheight(height)


def unique_handles(axes: list[Any]) -> tuple[list[Any], list[str]]:
    """Legend entries of several panels, each label once."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    return list(seen.values()), list(seen)


def save(fig: Figure, out_dir: Path, plot: Plot) -> Plot:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{plot.key}.png"
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    plot.path, plot.figure = path, fig
    return plot


def _compact(value: float, _pos: Any = None) -> str:
    """200000 -> '200k', 3e9 -> '3G': short tick labels that do not run into each other."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:g}{suffix}"
    return f"{value:g}"


def log_axis(ax: Any, which: str = "x", base: int = 10) -> None:
    """A log axis whose labels cannot collide: only major ticks are labelled (1, 2, 5 per
    decade over a short range, every decade or fewer over a long one), in compact form."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=base)
    lo, hi = (ax.get_xlim() if which == "x" else ax.get_ylim())
    import math

    decades = math.log(max(hi, 1e-300) / max(lo, 1e-300), base) if lo > 0 else 99
    if decades < 1:  # within a decade LogLocator falls back to dense linear ticks: ask for few
        from matplotlib.ticker import MaxNLocator

        axis.set_major_locator(MaxNLocator(nbins=4))
    else:
        subs = (1.0, 2.0, 5.0) if base == 10 and decades < 2 else (1.0,)
        axis.set_major_locator(LogLocator(base=base, subs=subs, numticks=6))
    axis.set_minor_formatter(NullFormatter())
    if base == 10:
        axis.set_major_formatter(FuncFormatter(_compact))


def method_order(rec: dict[str, Any]) -> tuple:
    """Methods in a fixed order (full last), then by r, targets and the rest of the cell."""
    method = str(cell_value(rec, "method"))
    order = list(METHOD_COLORS)
    return (order.index(method) if method in order else len(order), method, cell_value(rec, "r") or 0,
            str(cell_value(rec, "targets")), json.dumps(rec.get("cell"), sort_keys=True, default=str))
