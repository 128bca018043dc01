"""What ``fit --advise`` prints and draws: the advice table per method and ``OUT/fit-advise.png``.

Costs are kept apart by kind: extra FLOPs per step are measured (the cells' own FLOP counts,
the combination's step against the cell as asked, at the same batch); every other cost is a
named caveat, listed in words, never turned into a number, except activation offloading's host
RAM and host-link bytes, which its cells record (a line per row; with a card, the seconds the
copies take at the card's link rate if they do not overlap compute). Rows are ordered by how many
caveats they carry, then by their measured extra FLOPs: no caveat is ranked above another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .budgets import Budget
from ..report.units import error_band_text, fmt_bytes, fmt_seconds

ORDER_NOTE = ("Ordered by the number of caveats, then by measured extra FLOPs; caveats are costs the harness does "
              "not measure, so none is ranked above another.")


def _flops(value: int | None, rel: float | None, per_token: float | None = None) -> str:
    if value is None:
        return "not recorded"
    text = next((f"{value / d:+.3g} {u}FLOP" for d, u in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
                 if abs(value) >= d), f"{value:+d} FLOP")
    text += f" ({rel:+.1%})" if rel is not None else ""
    if per_token is not None and rel is not None and abs(per_token - rel) > 5e-4:
        text += f"\nper token {per_token:+.1%}"
    return text


def _seconds(f: dict[str, Any]) -> str:
    """A lever's predicted seconds per step and its change against the cell as asked; empty where
    either has no prediction (the reason is a line under the table)."""
    if f.get("extra_step_s_predicted") is None:
        return ""
    text = f"{fmt_seconds(f['step_s_predicted'])} ({f['extra_step_s_relative']:+.1%})"
    per_token = f.get("extra_step_s_per_token_relative")
    if per_token is not None and abs(per_token - f["extra_step_s_relative"]) > 5e-4:
        text += f"\nper token {per_token:+.1%}"
    return text


def seconds_lines(adv: dict[str, Any]) -> list[str]:
    """With a card: what the seconds column is (a prediction, its error band), and why a row has none."""
    if "time" not in adv["base"]:
        return []
    base = adv["base"]["time"] or {}
    lines = [f"  predicted s/step: the step-time model v{base.get('time_model_version', '?')} on "
             f"{base.get('card', '?')}, not a measurement"
             + (f" (the cell as asked: {fmt_seconds(base['step_s_predicted'])} at {adv['axis']} {adv[adv['axis']]})"
                if base.get("step_s_predicted") is not None else "")
             + f"; {error_band_text(base.get('error_band'))}."]
    lines += [f"  #{i}: no predicted seconds: {f['step_s_missing']}"
              for i, f in enumerate(adv["fitting"], 1) if f.get("step_s_missing")]
    return lines


def host_lines(adv: dict[str, Any]) -> list[str]:
    """Per offloading row: the host RAM its offloaded activations take and the host-link bytes a step,
    with a card the seconds at the link rate (the step's wait if the copies do not overlap compute)."""
    out = []
    for i, f in enumerate(adv["fitting"], 1):
        h = f.get("host_costs")
        if not h:
            continue
        text = (f"  #{i}: host RAM {fmt_bytes(h['host_ram_bytes'])} (offloaded activations, recorded), host-link "
                f"traffic {fmt_bytes(h['host_link_bytes_per_step'] or 0)} a step (out in forward, back in backward)")
        if h.get("host_link_s_serial") is not None:
            text += (f", {fmt_seconds(h['host_link_s_serial'])} at {h['host_link_rate'] / 1e9:.0f} GB/s each way "
                     f"({h['host_link_source']}) if the copies do not overlap compute")
        out.append(text)
    return out


def pointer(row: dict[str, Any]) -> str:
    """The line printed under a method that does not fit when --advise was not given."""
    from .levers import LEVERS

    return (f"{row['method']}: does not fit at {row['axis']} {row['next']}; `--advise` searches the levers "
            f"({', '.join(LEVERS)}) that would make it fit, each a real estimate (`--levers` restricts them)")


def advice_text(row: dict[str, Any], budget: Budget) -> str:
    """The advice block for one method's row."""
    from tabulate import tabulate

    adv = row["advice"]
    axis = adv["axis"]
    head = (f"{row['method']} r{row['r']}: advice at {axis} {adv[axis]} (levers: {', '.join(adv['levers'])}; "
            f"applicable here: {', '.join(adv['applicable']) or 'none'})")
    lines = [head]
    if adv["verdict"] == "fits as asked":
        lines.append("  fits as asked: nothing to change.")
    elif adv["verdict"] == "error":
        lines.append(f"  no advice: the cell's own estimate failed: {adv['base']['error']}")
    elif not adv["fitting"]:
        lines.append("  none of the allowed levers is enough: " + adv["stopped"] + ".")
        for c in adv["ceilings"]:
            changes = ", ".join(f"{k}={v}" for k, v in c["changes"].items())
            state = f"peak {fmt_bytes(c['peak'])}" if c["peak"] is not None else f"error: {c['error']}"
            lines.append(f"  strongest: {changes}: {state} (usable {fmt_bytes(budget.usable)})")
    else:
        body = []
        timed = "time" in adv["base"]  # a card: predicted seconds per step beside the FLOPs
        for i, f in enumerate(adv["fitting"], 1):
            best = f.get(f"max_{axis}")
            best_text = "-" if best is None else f"{best}{'+' if f['max_verdict'] == 'fits up to the limit' else ''}"
            body.append([i, "\n".join(f"{k}={v}" for k, v in f["changes"].items()), fmt_bytes(f["peak"]),
                         fmt_bytes(f["headroom"]), best_text, _flops(f["extra_flops"], f["extra_flops_relative"],
                                                                  f["extra_flops_per_token_relative"]),
                         *([_seconds(f)] if timed else []), ", ".join(f["caveats"]) or "none"])
        lines.append(tabulate(body, headers=["#", "change", f"peak ({axis} {adv[axis]})", "headroom",
                                             f"max {axis}", "extra FLOPs/step (measured)",
                                             *(["s/step (predicted)"] if timed else []), "caveats"]))
        lines += seconds_lines(adv)
        lines += host_lines(adv)
        named = {k: v for f in adv["fitting"] for k, v in f["caveats"].items()}
        lines += [f"  caveat {k}: {v}" for k, v in named.items()]
        lines.append("  " + ORDER_NOTE)
        first = adv["fitting"][0]
        lines.append("  #1 as a fit: " + first.get("command", "lamda-bench fit ... " + " ".join(first["flags"])))
    base = adv["base"]
    lines.append(f"  cell as asked: peak {fmt_bytes(base['peak'])} at {axis} {adv[axis]}; search: {adv['stopped']}; "
                 f"{adv['lever_estimates']} lever estimates over {adv['combinations']} combinations, "
                 f"{adv['max_search_estimates']} for the max {axis} searches; of these "
                 f"{adv['estimates_new']} cells estimated now, {adv['estimates_reused']} records reused.")
    failed = [e for e in adv["estimated"] if e["error"]]
    if failed:
        first = ", ".join(f"{k}={v}" for k, v in failed[0]["changes"].items()) or "the cell as asked"
        lines.append(f"  {len(failed)} combination(s) could not be estimated and were left out (first: {first}: "
                     f"{failed[0]['error']}).")
    if adv["premise_violations"]:
        lines.append(f"  WARNING: the monotone premise failed on {len(adv['premise_violations'])} estimated pair(s) "
                     f"(first: {adv['premise_violations'][0]}); combinations inferred not to fit may fit.")
    return "\n".join(lines)


def write_advice_plot(rows: list[dict[str, Any]], budget: Budget, out_dir: Path) -> Path | None:
    """``out_dir/fit-advise.png``: every estimated combination's peak against its extra FLOPs
    per step (fitting ones filled, the others hollow), the usable budget as a line; None when no
    method was advised."""
    from ..report.plotstyle import byte_scale, figure, flop_scale, method_color, method_marker
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    advised = [r for r in rows if r.get("advice") and r["advice"]["base"]["flops"]]
    if not advised:
        return None
    fig = figure(7.5, 4.4)
    ax = fig.add_subplot()
    peaks = [e["peak"] for r in advised for e in r["advice"]["estimated"] if e["peak"] is not None] + [budget.usable]
    flops = [abs(e["flops"] - r["advice"]["base"]["flops"]) for r in advised for e in r["advice"]["estimated"]
             if e["flops"] is not None] + [1]
    ydiv, yunit = byte_scale(max(peaks))
    xdiv, xunit = flop_scale(max(flops))
    for row in advised:
        adv, color, marker = row["advice"], method_color(row["method"]), method_marker(row["method"])
        base_flops = adv["base"]["flops"]
        pts = [(e["flops"] - base_flops, e["peak"], e["fits"]) for e in adv["estimated"]
               if e["flops"] is not None and e["peak"] is not None]
        over = [(x, y) for x, y, fits in pts if not fits]
        ax.scatter([x / xdiv for x, _ in over], [y / ydiv for _, y in over], facecolors="none", edgecolors=color,
                   marker=marker, label=f"{row['method']}: estimated, over budget", alpha=0.6)
        ax.scatter([0], [adv["base"]["peak"] / ydiv], color="black", marker="x", label=f"{row['method']}: as asked")
        shown = [(i, f) for i, f in enumerate(adv["fitting"], 1) if f["extra_flops"] is not None]
        ax.scatter([f["extra_flops"] / xdiv for _, f in shown], [f["peak"] / ydiv for _, f in shown], color=color,
                   marker=marker, s=60, label=f"{row['method']}: fits (cheapest found)")
        for i, f in shown:
            ax.annotate(f"#{i}", (f["extra_flops"] / xdiv, f["peak"] / ydiv), fontsize=8,
                        xytext=(4, 3), textcoords="offset points")
    ax.axhline(budget.usable / ydiv, color="#c44e52", linestyle="--", linewidth=1,
               label=f"usable {fmt_bytes(budget.usable)}")
    ax.axvline(0, color="#999999", linewidth=0.8)
    ax.set_xlabel(f"extra FLOPs per step vs the cell as asked ({xunit}; measured)")
    ax.set_ylabel(f"estimated peak ({yunit})")
    adv0 = advised[0]["advice"]
    ax.set_title(f"{advised[0]['workload'].split('/')[-1]}: lever combinations at {adv0['axis']} {adv0[adv0['axis']]}, "
                 f"budget {budget.text} (estimates)", fontsize=8)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    FigureCanvasAgg(fig)
    path = out_dir / "fit-advise.png"
    fig.savefig(path, dpi=110)
    return path
