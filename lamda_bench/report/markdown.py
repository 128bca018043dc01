"""``write_report``: results.jsonl -> report.md + plots/*.png + results.csv in the same directory."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..results.record import ENV, MEMORY
from .csv_export import write_csv
from .plots import Plot, draw_all
from .axes import Axes
from .escape import md
from .headline import headline
from .records import ReportError, device, get, is_ok, load_dir, mode
from .tables import failures_table, predicted_summary, results_table
from .owners import owners_section
from .units import UNITS_NOTE

REPORT_FILE = "report.md"
CSV_FILE = "results.csv"
PLOTS_DIR = "plots"

MODE_NOTE = {
    "measure": "**Measured**: a real training step ran on the device; bytes are live tensor bytes "
               "tracked during the step (plus the device's own counters where it has them).",
    "estimate": "**Estimated** (not measured): the step ran on fake tensors (FakeTensorMode), so "
                "nothing was allocated and nothing was timed; byte and FLOP counts are what the "
                "same step would hold and do. Estimates are never shown as measurements here.",
}


# The card columns' meaning (issue 39, docs/card-memory.md): both figures predicted, never measured.
CARD_NOTE = (" `on the card: reserved` is the CUDA caching allocator's reserved peak (`memory.reserved_peak`) "
             "predicted by replaying the run's allocations; `on the card: device` adds the card's hidden "
             "workspaces and CUDA context (`memory.device_peak`, what nvidia-smi would show). `> X (out of "
             "memory)`: the replay ran out of the card's memory; X is a lower bound.")


def write_report(results_dir: Path) -> Path:
    """Read ``results_dir/results.jsonl``; write ``report.md``, ``plots/*.png`` and
    ``results.csv`` there; return the path of ``report.md``."""
    results_dir = Path(results_dir)
    records = load_dir(results_dir)
    plots_dir = results_dir / PLOTS_DIR
    if plots_dir.exists() and not plots_dir.is_dir():
        raise ReportError(f"{plots_dir}: exists and is not a directory (the report writes its plots there)")
    try:
        plots = draw_all(records, results_dir, plots_dir)
        write_csv(records, results_dir / CSV_FILE)
        path = results_dir / REPORT_FILE
        path.write_text(render_markdown(records, plots, results_dir), encoding="utf-8")
    except OSError as e:  # a read-only directory, report.md that is a directory, a full disk
        raise ReportError(f"{e.filename or results_dir}: cannot write the report: {e.strerror or e}") from None
    return path


def render_markdown(records: list[dict[str, Any]], plots: list[Plot], results_dir: Path) -> str:
    suites = sorted({str(r.get("suite")) for r in records if r.get("suite")})
    statuses = Counter(str(r.get("status")) for r in records)
    ok = [r for r in records if is_ok(r)]
    modes = Counter(mode(r) for r in ok)
    devices = sorted({device(r) for r in ok})
    out: list[str] = [f"# lamda-bench report: {md(', '.join(suites) or 'results')}", ""]
    out.append(f"{len(records)} cells from `results.jsonl` ("
               + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) + "). "
               + (f"Modes: {', '.join(f'{n} {m}' for m, n in sorted(modes.items()))}. " if modes else "")
               + (f"Devices: {md(', '.join(devices))}. " if devices else "")
               + f"Flat table: [`{CSV_FILE}`]({CSV_FILE}).")
    out += ["", UNITS_NOTE, ""]
    for m in sorted(modes):
        if m in MODE_NOTE:
            out += [f"- {MODE_NOTE[m]}"]
    commits: dict[tuple, set[str]] = {}
    for r in ok:
        key = (get(r, ENV.torch), get(r, ENV.transformers), get(r, ENV.peft))
        commits.setdefault(key, set()).add(str(get(r, ENV.git_commit, "unknown"))[:12])
    for (torch_v, tf_v, peft_v), shas in sorted(commits.items(), key=str):
        out.append(md(f"- Software: torch {torch_v}, transformers {tf_v}, peft {peft_v}; harness commit"
                      f"{'s' if len(shas) > 1 else ''} " + ", ".join(sorted(shas)) + "."))
    out.append("")
    out += ["## Headline: least memory per shape", "",
            "Per shape (model, batch, sequence, dtype, device, mode), the variants ranked by peak memory "
            "(`memory.peak`), with ratios against LoRA at the same r, targets and checkpointing (PEFT's "
            f"default fp32 adapters{_plain_recipe_note(ok)}) and against full fine-tuning; the last column names the categories of "
            "`memory.at_peak` that differ most from that LoRA cell. Measured and estimated shapes are "
            "separate tables.", "", headline(ok), ""]

    for m in sorted(modes, key=lambda m: (m != "measure", m)):  # measured first, as in the headline
        heading = "Measured results" if m == "measure" else f"{m.capitalize()}d results (not measured)" \
            if m == "estimate" else f"Results (mode {m})"
        in_mode = [r for r in ok if mode(r) == m]
        axes = Axes.of(in_mode)
        out += [f"## {heading}", "", md(axes.header()), "",
                "`peak` is the highest live total the tracker saw (`memory.peak`, the larger of the forward, "
                "backward and optimizer phases); `peak (optimizer phase)` is the highest during the optimizer "
                "step only (`memory.peak_step`)." + (CARD_NOTE if any(get(r, MEMORY.reserved_peak) is not None
                                                                      for r in in_mode) else ""), "",
                results_table(in_mode, axes), ""]
    if not ok:
        out += ["## Results", "", "No cell finished with status ok.", ""]

    predicted = predicted_summary(ok)
    if predicted:
        out += ["## Observed vs closed form", "",
                "One line per figure `lamda_bench.analytic` predicts: the cell whose observed (measured or "
                "estimated) figure deviates most from its closed form. Every cell's pair is in "
                f"[`{CSV_FILE}`]({CSV_FILE}) (columns `predicted.*`).", "", predicted, ""]

    out += owners_section(ok)  # image-text cells only (report/owners.py)

    failed = [r for r in records if not is_ok(r)]
    out += ["## Cells that did not finish", ""]
    out += [failures_table(failed, Axes.of(records)) if failed else "None: every cell finished with status ok.", ""]

    out += ["## Plots", ""]
    for i, plot in enumerate(plots, start=1):
        out.append(f"### {i}. {md(plot.title)}")
        out.append("")
        if plot.path is not None:
            rel = plot.path.relative_to(results_dir).as_posix()
            out += [md(plot.description), "", f"![{md(plot.title)}]({rel})", ""]
        else:
            out += [f"*Skipped: {md(plot.skipped)}.*", ""]
    return "\n".join(out)


def _plain_recipe_note(records: list[dict[str, Any]]) -> str:
    """Said only where some record sets a recipe key (a fused loss, offloading): which LoRA cell
    the ratios are against then."""
    from .axes import RECIPE_WHEN_SET, at_default

    if all(at_default(r, k) for r in records for k in RECIPE_WHEN_SET):
        return ""
    return "; of those, the one with the model's own loss and no offloading"
