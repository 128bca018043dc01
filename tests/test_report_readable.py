"""Reports a person can read: every varying setting shown, a headline ranking, plots whose
text does not overlap, escaped markup and formulas, compare's filters, the notebook API.

Records come from ``test_report.make_record`` (closed-form figures) and, for the large
plot set, from the committed result files under reports/ (real estimates and H100 runs).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from matplotlib.text import Text

from lamda_bench.report import compare, write_report
from lamda_bench.report.axes import Axes
from lamda_bench.report.escape import csv_field, md
from lamda_bench.report.headline import headline
from lamda_bench.report.plots import draw_all
from lamda_bench.report.records import load_dir
from lamda_bench.report.summary import summary_table
from lamda_bench.report.tables import results_table
from lamda_bench.report.timing import flagged_step_times
from tests.test_report import full_result_set, make_record, write_results

REPO = Path(__file__).resolve().parents[1]
COMMITTED = [REPO / "reports" / p for p in ("llama7b-cpu", "gpu/layers", "gpu/measured")]


def lookalikes() -> list[dict[str, Any]]:
    """Cells that differ only in targets, adapter dtype, checkpointing or freeze mode."""
    recs = []
    for targets in ("all", "attn"):
        for autocast in (True, False):
            for ckpt in (False, True):
                recs.append(make_record("lora", targets=targets, gradient_checkpointing=ckpt,
                                        options={"autocast_adapter_dtype": autocast}))
    recs += [make_record("lamda", freeze_mode=m) for m in ("split", "mask")]
    recs.append(make_record("full"))
    return recs


def _table_rows(table: str) -> list[str]:
    """Data rows of a Markdown table without the trailing id column."""
    return [line.rsplit("|", 2)[0] for line in table.splitlines()[2:]]


def test_rows_and_labels_that_differ_only_in_one_setting_are_told_apart(tmp_path):
    recs = lookalikes()
    rows = _table_rows(results_table(recs))
    assert len(rows) == len(recs) and len(set(rows)) == len(rows)
    summary = summary_table(recs).splitlines()[3:-1]
    assert len(summary) == len(recs) and len(set(summary)) == len(summary)
    labels = [Axes.of(recs).label(r) for r in recs]
    assert len(set(labels)) == len(labels)
    header = results_table(recs).splitlines()[0]
    for column in ("targets", "checkpointing", "method options", "peak", "peak (optimizer phase)"):
        assert f" {column} " in header
    assert "| dtype" not in header and "| seq" not in header  # constant: in the held-fixed line
    assert "seq=16" in Axes.of(recs).header()
    # plots: the labels drawn for the cells (tick labels of the bar panels) are unique too
    plots = {p.key: p for p in draw_all(recs, tmp_path, tmp_path / "plots")}
    ticks = [t.get_text() for ax in plots["peak_memory_by_category"].figure.axes for t in ax.get_yticklabels()]
    assert len(ticks) == len(recs) and len(set(ticks)) == len(ticks)
    assert "adapters=fp32 (no autocast)" in " ".join(ticks) and "freeze=mask" in " ".join(ticks)


def test_headline_ranks_by_peak_with_ratios_against_lora_and_full():
    recs = [make_record("lora", d=256), make_record("lamda", d=256), make_record("full", d=256),
            make_record("lora", d=256, mode="measure"), make_record("full", d=256, mode="measure")]
    text = headline(recs)
    measured, estimated = text.split("### Estimated")
    assert measured.startswith("### Measured")  # estimate and measure in separate tables
    rows = [line for line in estimated.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split("|")[2].strip() for r in rows] == ["lamda", "lora", "full"]
    peaks = {r["cell"]["method"]: r["memory"]["peak"] for r in recs[:3]}
    lamda_row = rows[0]
    assert f"{peaks['lamda'] / peaks['lora']:.3f}x" in lamda_row
    assert f"{peaks['lamda'] / peaks['full']:.3f}x" in lamda_row
    assert "activations -" in lamda_row  # where LaMDA saves against LoRA
    assert "(LoRA reference)" in rows[1]


def test_markup_and_formulas_are_escaped(tmp_path):
    rec = make_record("lora", status="error")
    rec["error"] = "boom | <script>alert(1)</script> <img src=x onerror=alert(2)>"
    rec["suite"] = "=HYPERLINK(\"http://x\")"
    ok = make_record("lamda")
    ok["cell"]["targets"] = ["q|k", "<b>v</b>"]
    results_dir = write_results(tmp_path, [rec, ok])
    text = write_report(results_dir).read_text()
    assert "<script>" not in text and "<img" not in text and "&lt;script>" in text
    failed = [line for line in text.split("## Cells that did not finish")[1].splitlines() if "boom" in line][0]
    header = text.split("## Cells that did not finish")[1].splitlines()[2]
    assert failed.replace("\\|", "").count("|") == header.count("|")  # the pipe does not split the row
    with open(results_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(row["suite"].startswith("'=") or not row["suite"].startswith("=") for row in rows)
    assert csv_field("-1.5") == "-1.5" and csv_field("@SUM(A1)") == "'@SUM(A1)" and csv_field("\tx") == "'\tx"
    assert md("a|b") == "a\\|b"


def test_compare_filters_thresholds_sorts_and_names_env_fields(tmp_path):
    a = [make_record("lora", d=128), make_record("lamda", d=128), make_record("lora", d=64)]
    b = [make_record("lora", d=128, scale=1.01), make_record("lamda", d=128, scale=0.5),
         make_record("lora", d=64, scale=2.0)]
    b[2]["env"]["torch"] = "2.14.0"
    da, db = write_results(tmp_path / "a", a), write_results(tmp_path / "b", b)
    text = compare(da, db, where=["method=lora"])
    assert a[1]["id"] not in text and a[0]["id"] in text and a[2]["id"] in text
    assert "torch: 2.13.0 -> 2.14.0 (1 cell)" in text and "env: torch" in text
    text = compare(da, db, threshold=5)
    assert a[0]["id"] not in text.split("\n|")[-1] and a[1]["id"] in text  # +1% is under the threshold
    ordered = compare(da, db, sort="change")
    assert ordered.index(a[2]["id"]) < ordered.index(a[1]["id"]) < ordered.index(a[0]["id"])
    from lamda_bench.report import ReportError
    with pytest.raises(ReportError, match="no record has this field"):
        compare(da, db, where=["nosuchkey=1"])


def test_flags_a_step_time_far_off_its_neighbours():
    recs = [make_record(m, mode="measure") for m in ("lora", "lamda", "full")]
    recs[1]["time"].update(step_median_s=0.08, steps_timed=2)
    flagged = flagged_step_times(recs)
    assert list(flagged) == [recs[1]["id"]] and "2 timed step(s)" in flagged[recs[1]["id"]]
    recs[1]["time"]["steps_timed"] = 20  # many steps: the median is trusted
    assert flagged_step_times(recs) == {}


def _texts(fig) -> list[Text]:
    """Every visible, non-empty text the figure draws (tick labels only for drawn ticks)."""
    out = [t for t in fig.texts]
    out += [t for legend in fig.legends for t in legend.get_texts() + [legend.get_title()]]
    for ax in fig.axes:
        out += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label] + list(ax.texts)
        for axis in (ax.xaxis, ax.yaxis):
            out += [tick.label1 for tick in axis._update_ticks() if tick.label1.get_visible()]
            out.append(axis.get_offset_text())
        if ax.get_legend():
            out += ax.get_legend().get_texts()
    if fig._suptitle is not None:
        out.append(fig._suptitle)
    return [t for t in out if t.get_visible() and t.get_text().strip()]


def _drawn(fig):
    """The figure's renderer after one draw (the checks below read the laid-out boxes from it)."""
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _overlaps(fig, renderer) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(fig)]
    bad = []
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            w = min(a.x1, b.x1) - max(a.x0, b.x0)
            h = min(a.y1, b.y1) - max(a.y0, b.y0)
            if w > 1 and h > 1:  # more than a pixel of shared area
                bad.append((ta, tb))
    return bad


def _legend_clear_of_data(fig, renderer) -> bool:
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        if any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes):
            return False
    return True


def _large_set() -> tuple[Path, list[dict[str, Any]]]:
    records = [r for d in COMMITTED for r in load_dir(d)]
    return COMMITTED[0], records


# "large" (every committed report's records) is slow: "small" runs the same checks on the quick path
@pytest.mark.parametrize("which", ["small", pytest.param("large", marks=pytest.mark.slow)])
def test_plot_text_does_not_overlap(which, tmp_path):
    if which == "small":
        results_dir = write_results(tmp_path / "small", full_result_set() + lookalikes())
        records = load_dir(results_dir)
    else:
        results_dir, records = _large_set()
    plots = [p for p in draw_all(records, results_dir, tmp_path / "plots") if p.figure is not None]
    assert len(plots) >= 5
    renderers = {p.key: _drawn(p.figure) for p in plots}  # one draw per figure for both checks
    overlapping = {p.key: found[:3] for p in plots if (found := _overlaps(p.figure, renderers[p.key]))}
    assert overlapping == {}
    assert [p.key for p in plots if not _legend_clear_of_data(p.figure, renderers[p.key])] == []


def test_layers_report_flags_the_two_step_outlier():
    flagged = flagged_step_times(load_dir(REPO / "reports" / "gpu" / "layers"))
    assert len(flagged) == 1 and "lamda" in next(iter(flagged.values()))


def test_api_load_and_run_return_dataframes(tmp_path):
    pd = pytest.importorskip("pandas")
    import lamda_bench

    results_dir = write_results(tmp_path / "r", full_result_set())
    df = lamda_bench.load(results_dir)
    assert isinstance(df, pd.DataFrame) and len(df) == len(full_result_set())
    assert {"cell.method", "memory.peak", "memory.at_peak.grads"} <= set(df.columns)
    lora = df[df["cell.method"] == "lora"]
    assert len(lora) == sum(1 for r in full_result_set() if r["cell"]["method"] == "lora")
    out = tmp_path / "run"
    df = lamda_bench.run([{"workload": "linear", "method": ["lora", "lamda"], "d_in": 64, "d_out": 64, "r": 4,
                           "batch": 1, "seq": 8, "dtype": "fp32", "device": "cpu", "steps": 1, "warmup": 0}],
                         out=out, progress=False)
    assert list(df["cell.method"]) == ["lora", "lamda"] and (df["status"] == "ok").all()
    assert (df["memory.peak"] > 0).all()
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["suite"] == "notebook"


def test_import_lamda_bench_is_cheap():
    import subprocess
    import sys

    code = "import sys, lamda_bench; print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_progress_bar_names_running_cells_and_summary_follows_suite_order(tmp_path):
    from lamda_bench.suite.cell import Cell
    from lamda_bench.launch.sweep import Sweep

    cells = [Cell(workload="linear", method=m, r=4, d_in=64, d_out=64, targets=t)
             for m in ("lora", "lamda") for t in ("all", "attn")]
    sweep = Sweep(cells, tmp_path, "t", "test_launch:runner_ok", retry_failed=False, progress=True)
    sweep.start()
    try:
        sweep.started(cells[1])
        assert sweep.bar.desc.startswith("t: lora targets=attn")
        sweep.started(cells[2])
        sweep.started(cells[3])
        sweep.started(cells[0])
        assert "+2 more" in sweep.bar.desc
    finally:
        sweep.close()
    # the end-of-run table: suite order, varying columns only
    recs = [make_record(m, d=d) for m, d in (("lamda", 64), ("lora", 128), ("lora", 64))]
    lines = summary_table(recs).splitlines()
    assert lines[0].startswith("Held fixed:") and "r=4" in lines[0]
    assert lines[1].split()[:3] == ["status", "d_in", "d_out"] and "method" in lines[1]
    assert [line.split()[3] for line in lines[3:6]] == ["lamda", "lora", "lora"]
