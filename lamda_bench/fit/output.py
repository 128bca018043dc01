"""What ``lamda-bench fit`` writes: the terminal table, ``OUT/fit.json`` and ``OUT/fit.png``.

``fit.json`` is a list of rows, one per method (``fit.MethodSearch.answer``), each carrying the
budget, the margin policy and ``"estimate": true``: a row read on its own still says what it is.
The plot is drawn on an Agg canvas (no display), hatched like every estimate in the reports.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .budgets import Budget
from ..report.units import error_band_text, fmt_bytes, fmt_duration, fmt_rate, fmt_seconds

ESTIMATE_NOTE = ("These are estimates (the real training step run on fake tensors), not measurements: "
                 "a row fits when {policy}.")


def answer_text(row: dict[str, Any]) -> str:
    """One sentence per row: the answer, or why there is none."""
    axis, method = row["axis"], row["method"]
    fixed = "seq" if axis == "batch" else "batch"
    at = f"{fixed} {row[fixed]}"
    verdict = row["verdict"]
    if verdict == "error":
        return f"{method}: no answer: {row['error']}"
    if verdict == "does not fit":
        return (f"{method}: does not fit even {axis} {row['next']} at {at} "
                f"(estimated peak {fmt_bytes(row['peak_at_next'])}, usable {fmt_bytes(row['usable'])})")
    best = row[f"max_{axis}"]
    if verdict == "fits up to the limit":
        return (f"{method}: {axis} {best} at {at} fits (estimated peak {fmt_bytes(row['peak_at_max'])}); "
                f"the search stopped at its limit {row['limit']}, so the true maximum may be larger")
    return (f"{method}: max {axis} {best} at {at} (estimated peak {fmt_bytes(row['peak_at_max'])}); "
            f"{axis} {row['next']} does not fit ({fmt_bytes(row['peak_at_next'])})")


def time_text(row: dict[str, Any]) -> str | None:
    """With a card: the predicted tokens/s at the max and the time for 1 M tokens, or why there is
    none; None without a card (no time model ran: nothing is said about time)."""
    time = row.get("time_at_max")
    if time is None:
        return None
    axis = row["axis"]
    at = f"{axis} {row[f'max_{axis}']}"
    if time["tokens_per_s_predicted"] is None:
        return f"{row['method']}: no predicted time at {at}: {time.get('not_predicted') or 'not recorded'}"
    per = " per card" if row.get("world_size", 1) > 1 else ""
    return (f"{row['method']}: predicted on {time['card']} at {at}: {fmt_seconds(time['step_s_predicted'])} per step, "
            f"{fmt_rate(time['tokens_per_s_predicted'])}{per}, 1M tokens in "
            f"{fmt_duration(time['seconds_per_1m_tokens_predicted'])}")


def time_note(rows: list[dict[str, Any]]) -> str | None:
    """What the predicted times are, once: the time model, its card and its error band."""
    time = next((r["time_at_max"] for r in rows if r.get("time_at_max")), None)
    if time is None:
        return None
    return (f"Times are predictions of the step-time model v{time['time_model_version']} on {time['card']} "
            f"(the traced step's ops priced on the card's rates), not measurements: "
            f"{error_band_text(time['error_band'])}.")


def _time_cells(row: dict[str, Any]) -> list[str]:
    time = row.get("time_at_max")
    if time is None:
        return ["", ""]
    if time["tokens_per_s_predicted"] is None:
        return ["not predicted", ""]
    return [f"{time['tokens_per_s_predicted']:,.0f}", fmt_duration(time["seconds_per_1m_tokens_predicted"])]


def per_card_note(row: dict[str, Any]) -> str:
    """What "per card" means for the row's data-parallel layout (``fit.Layout``)."""
    how = ("rank 0 of the FSDP2 job (weights, grads and optimizer state sharded, plus its gathered "
           "blocks and collective buffers)" if row["parallel"] == "fsdp2" else
           "one DDP replica's (the one-device step plus DDP's gradient buckets, one more copy of the gradients)")
    return (f"Per card, {row['world_size']} rank(s) under {row['parallel']}: the budget and each peak are {how}; "
            "batch is per rank (the job's global batch is world_size x batch).")


def table(rows: list[dict[str, Any]], budget: Budget) -> str:
    from tabulate import tabulate

    axis = rows[0]["axis"] if rows else "batch"
    fixed = "seq" if axis == "batch" else "batch"
    body = []
    for row in rows:
        body.append([row["method"], row["r"], row[fixed], row.get(f"max_{axis}"), row.get("tokens_at_max"),
                     fmt_bytes(row.get("peak_at_max")), row.get("next"), fmt_bytes(row.get("peak_at_next")),
                     row["verdict"], row["probes"]])
    headers = ["method", "r", fixed, f"max {axis}", "tokens/step", "peak at max", f"next {axis}",
               "peak at next", "verdict", "probes"]
    timed = any(r.get("time_at_max") for r in rows)  # a card's probes: the predicted time beside
    if timed:
        body = [line + _time_cells(row) for line, row in zip(body, rows)]
        headers += ["tokens/s at max (predicted)", "1M tokens (predicted)"]
    lines = [tabulate(body, headers=headers)]
    lines += [answer_text(r) for r in rows]
    lines += [t for t in map(time_text, rows) if t]
    card = f" ({budget.card}: {budget.source})" if budget.card else ""
    lines.append(f"Budget {budget.text} = {budget.bytes:,} B = {fmt_bytes(budget.bytes)}{card}; margin "
                 f"{fmt_bytes(budget.margin)}, usable {fmt_bytes(budget.usable)}.")
    if rows and rows[0].get("parallel", "none") != "none":
        lines.append(per_card_note(rows[0]))
    lines.append(ESTIMATE_NOTE.format(policy=budget.policy()))
    if timed:
        lines.append(time_note(rows))
    lines.append("KiB/MiB/GiB = 2^10/2^20/2^30 bytes.")
    return "\n".join(lines)


def write_json(rows: list[dict[str, Any]], budget: Budget, out_dir: Path) -> Path:
    """``out_dir/fit.json``: every row with the budget's full description (atomic replace)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    described = [{**row, "budget_detail": budget.to_dict(), "note": ESTIMATE_NOTE.format(policy=budget.policy())}
                 for row in rows]
    path = out_dir / "fit.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(described, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_plot(rows: list[dict[str, Any]], budget: Budget, out_dir: Path) -> Path | None:
    """``out_dir/fit.png``: max tokens per step per method (hatched: estimates); None when no
    method has an answer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    answered = [r for r in rows if r.get("tokens_at_max")]
    if not answered:
        return None
    axis = answered[0]["axis"]
    fixed = "seq" if axis == "batch" else "batch"
    fig = Figure(figsize=(max(4.0, 1.2 * len(answered) + 2), 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = [f"{r['method']} r{r['r']}" for r in answered]
    values = [r["tokens_at_max"] for r in answered]
    bars = ax.bar(labels, values, color="#4c72b0", hatch="//", edgecolor="white", label="estimate")
    for bar, r in zip(bars, answered):
        text = f"{axis} {r[f'max_{axis}']}" + ("+" if r["verdict"] == "fits up to the limit" else "")
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.set_ylabel("max tokens per step (batch x seq)")
    ax.set_title(f"{answered[0]['workload']}, {fixed} {answered[0][fixed]}: fits {budget.text} "
                 f"(estimate)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "fit.png"
    fig.savefig(path, dpi=120)
    return path
