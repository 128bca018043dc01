"""Reports from small hand-built result sets: plots are real, valid PNGs; report.md names
each plot and labels estimates; the CSV has one row per record; compare gives ratios.

``make_record`` builds records in the format of docs/ARCHITECTURE.md (the report's input)
with figures from simple closed forms, so tests can vary method/d/r/batch/seq/status.
test_gate.py reuses it.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from matplotlib import image as mpimg

from lamda_bench.results.record import run_mode
from lamda_bench.suite.cell import Cell
from lamda_bench.report import ReportError, compare, flatten, write_report
from lamda_bench.report.markdown import PLOTS_DIR
from lamda_bench.report.records import width
from lamda_bench.report.units import fmt_bytes, fmt_count, fmt_flops
from lamda_bench.results.files import RESULTS_FILE, append_record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FP32 = 4


def make_record(method: str = "lora", d: int = 128, r: int = 4, batch: int = 2, seq: int = 16,
                status: str = "ok", mode: str = "estimate", layers: int = 2, freeze_mode: str | None = None,
                series_steps: int = 0, fingerprint: str = "fp-cpu-test", timeline: bool = False,
                scale: float = 1.0, targets: str = "all", gradient_checkpointing: bool = False,
                options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A record of a linear workload (``layers`` d x d linears, all adapted) in fp32.

    Figures follow the methods' closed forms (LoRA saves x and A x per layer, LaMDA two
    r-wide tensors, full x); ``scale`` multiplies the memory figures (to plant changes).
    ``timeline=True`` sets artifacts.timeline (write the file with ``write_timeline``).
    ``targets``, ``gradient_checkpointing`` and ``options`` only change the cell (and id).
    """
    options = {**({"freeze_mode": freeze_mode} if freeze_mode else {}), **(options or {})}
    cell = Cell(workload="linear", method=method, r=r, d_in=d, d_out=d, layers=layers, batch=batch,
                seq=seq, dtype="fp32", device="cpu", mode=mode, targets=targets,
                gradient_checkpointing=gradient_checkpointing, options=tuple(sorted(options.items())))
    n = batch * seq
    family = {"pissa": "lora", "dora": "lora", "lora-fa": "lora", "vera": "lora", "lamda++": "lamda"}.get(method, method)
    trainable = {"lora": 2 * d * r, "lamda": r * r + d * r, "full": d * d}[family] * layers
    saved_adapter = {"lora": n * (d + r), "lamda": 2 * n * r, "full": n * d}[family] * layers * FP32
    at_peak = {"weights": int(layers * d * d * FP32 * scale), "grads": int(trainable * FP32 * scale),
               "optimizer": int(2 * trainable * FP32 * scale), "activations": int((saved_adapter + n * d * FP32) * scale),
               "temporaries": int(n * d * FP32 * scale)}
    record: dict[str, Any] = {
        "schema": 1, "id": cell.id, "suite": "unit", "status": status,
        "error": None if status == "ok" else f"{status}: planted failure for the test",
        "cell": cell.to_dict(),
        "params": {"total": layers * d * d + trainable, "trainable": trainable, "updates": trainable * 3},
        "memory": {"weights": at_peak["weights"], "trainable_weights": trainable * FP32, "grads": at_peak["grads"],
                   "optimizer": at_peak["optimizer"], "saved_activations": int((saved_adapter + n * d * FP32) * scale),
                   "saved_activations_adapter": int(saved_adapter * scale), "peak_forward": sum(at_peak.values()) // 2,
                   "peak_backward": sum(at_peak.values()), "peak_step": sum(at_peak.values()),
                   "peak": sum(at_peak.values()), "at_peak": at_peak, "cuda_max_allocated": None,
                   "cuda_max_reserved": None, "cuda_max_active": None, "nvml_used": None,
                   "host_rss_peak": 300 << 20 if mode == "measure" else None},
        "flops": {"forward": 2 * n * d * d * layers, "backward": 4 * n * d * d * layers,
                  "adapter_forward": 4 * n * d * r * layers, "adapter_backward": 8 * n * d * r * layers,
                  "attention_counting": "none (linear workload)"},
        "time": {"step_median_s": 0.01 if mode == "measure" else None,
                 "step_min_s": 0.009 if mode == "measure" else None, "step_max_s": 0.012 if mode == "measure" else None,
                 "steps_timed": 3 if mode == "measure" else 0,
                 "tokens_per_s": n / 0.01 if mode == "measure" else None},
        "series": {"step": [], "trainable": [], "optimizer": [], "backward_flops": []},
        "predicted": {"params": {"trainable": trainable, "updates": trainable * 3},
                      "memory": {"saved_activations_adapter": saved_adapter},
                      "flops": {"adapter_forward": 4 * n * d * r * layers, "adapter_backward": 8 * n * d * r * layers}},
        "info": {}, "artifacts": {"timeline": f"timelines/{cell.id}.json" if timeline else None, "detail": None},
        "env": {"torch": "2.13.0", "transformers": "5.23", "peft": "0.21.2", "python": "3.12", "harness": "0.1.0",
                "git_commit": "0" * 40, "device_name": "cpu", "driver": None, "cuda": None,
                "PYTORCH_CUDA_ALLOC_CONF": None, "fingerprint": fingerprint},
        "wall_s": 1.0, "started_at": "2026-01-01T00:00:00Z",
    }
    if status != "ok":
        for key in ("params", "memory", "flops", "predicted"):
            record[key] = None
    if series_steps:
        # split frees B's columns step by step; mask keeps everything (zeroed gradients only)
        frozen = [min(1.0, s / series_steps) for s in range(1, series_steps + 1)]
        keep = [1.0 if freeze_mode == "mask" else 1.0 - f for f in frozen]
        record["series"] = {"step": list(range(1, series_steps + 1)),
                            "trainable": [int(layers * (r * r + d * r * k)) for k in keep],
                            "optimizer": [int(2 * FP32 * layers * (r * r + d * r * k)) for k in keep],
                            "backward_flops": [int(4 * n * d * d * layers * (0.6 + 0.4 * k)) for k in keep]}
    return record


def write_timeline(results_dir: Path, record: dict[str, Any]) -> None:
    """The timeline file run_cell writes: {"id", "unit", "events": [{phase, module, event, live_bytes, by_category}]}."""
    events = []
    weights = record["memory"]["weights"]
    act = record["memory"]["saved_activations"]
    for phase, count in (("forward", 4), ("backward", 4), ("optimizer", 2)):
        for i in range(count):
            saved = act * (i + 1) // 4 if phase == "forward" else (act * (3 - i) // 4 if phase == "backward" else 0)
            cats = {"weights": weights, "activations": saved,
                    "grads": record["memory"]["grads"] if phase != "forward" else 0,
                    "optimizer": record["memory"]["optimizer"] if phase == "optimizer" else 0}
            events.append({"phase": phase, "module": f"layers.{i % 2}", "event": f"{phase}-{i}",
                           "live_bytes": sum(cats.values()), "by_category": cats})
    path = results_dir / record["artifacts"]["timeline"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"id": record["id"], "unit": "bytes", "events": events}))  # as runner/assemble.py writes it


def write_results(results_dir: Path, records: list[dict[str, Any]]) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    for rec in records:
        append_record(results_dir / RESULTS_FILE, rec)
        if rec.get("artifacts") and rec["artifacts"].get("timeline"):
            write_timeline(results_dir, rec)
    return results_dir


def sharded_record(method: str, world_size: int, status: str = "ok") -> dict[str, Any]:
    """A data-parallel record of a 70B-like model: rank 0's peak falls as 1/W plus a constant."""
    rec = make_record(method, status=status)
    rec["cell"].update(workload="llama2-70b", d_in=None, d_out=None, layers=None, dtype="bf16",
                       world_size=world_size, parallel="fsdp2")
    rec["id"] = Cell.from_dict(rec["cell"]).id
    if status == "ok":
        per_method = {"full": 1100, "lora": 140, "lamda": 135}[method] << 30
        rec["memory"]["peak"] = per_method // world_size + (3 << 30)
    return rec


def full_result_set() -> list[dict[str, Any]]:
    """Every plot has data: a sweep over d and r, batch x seq, timelines, split vs mask series,
    one measured cell, one failed cell."""
    recs = []
    for method in ("lora", "lamda", "full"):
        for d in (64, 128, 256):
            recs.append(make_record(method, d=d, r=4))
        recs.append(make_record(method, d=128, r=8))
    recs.append(make_record("lora", d=128, r=4, batch=4, seq=32, timeline=True))
    recs.append(make_record("lamda", d=128, r=4, batch=4, seq=32, timeline=True))
    recs.append(make_record("lamda", d=64, r=4, batch=1, seq=8, freeze_mode="split", series_steps=6))
    recs.append(make_record("lamda", d=64, r=4, batch=1, seq=8, freeze_mode="mask", series_steps=6))
    recs.append(make_record("lora", d=64, r=4, batch=1, seq=8, mode="measure"))
    recs.append(make_record("lora", d=512, r=4, status="oom"))
    recs += [sharded_record(m, w) for m in ("lora", "lamda") for w in (2, 8)]
    return recs


ALL_PLOTS = ("peak_memory_by_category", "pareto_peak_vs_trainable", "saved_activations_per_token_vs_d",
             "params_vs_r", "throughput_and_flops", "memory_over_step_lora_vs_lamda", "lamda_gradual_freezing",
             "peak_per_card_vs_world_size")


def _assert_valid_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert len(data) > 10_000, f"{path.name} is suspiciously small ({len(data)} bytes)"
    pixels = mpimg.imread(path)  # matplotlib decodes what it wrote
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels.std() > 0.01, f"{path.name} is a blank image"


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], str]:
    records = full_result_set()
    results_dir = write_results(tmp_path_factory.mktemp("full"), records)
    report = write_report(results_dir)
    return results_dir, records, report.read_text()


def test_every_plot_is_a_valid_nonempty_png(full_report):
    results_dir, _, _ = full_report
    for key in ALL_PLOTS:
        _assert_valid_png(results_dir / PLOTS_DIR / f"{key}.png")


def test_report_names_and_links_every_plot(full_report):
    results_dir, _, text = full_report
    for key in ALL_PLOTS:
        assert f"]({PLOTS_DIR}/{key}.png)" in text
    assert "Skipped:" not in text
    assert "LoRA vs LaMDA" in text and "split vs mask" in text


def test_report_labels_estimates_and_lists_failures(full_report):
    _, records, text = full_report
    assert "## Measured results" in text
    assert "## Estimated results (not measured)" in text
    measured = text.split("## Measured results")[1].split("\n## ")[0]
    estimated = text.split("## Estimated results (not measured)")[1].split("\n## ")[0]
    measured_rows = [line for line in measured.splitlines() if line.startswith("| ") and "`" in line]
    assert len(measured_rows) == 1 and "mode=measure" in measured  # the held-fixed line names the mode
    assert "throughput (min-max)" in measured and "throughput" not in estimated  # no always-n/a columns
    est_rows = [line for line in estimated.splitlines() if line.startswith("| ") and "`" in line]
    assert len(est_rows) == sum(1 for r in records if r["status"] == "ok" and run_mode(r) == "estimate")
    assert "mode=estimate" in estimated and "mode=measure" not in estimated
    failed = text.split("## Cells that did not finish")[1].split("\n## ")[0]
    assert "oom" in failed and "planted failure for the test" in failed
    # human units with the unit named
    assert " KiB" in text and ("GFLOP" in text or "MFLOP" in text)


def test_csv_has_one_row_per_record_with_raw_numbers(full_report):
    results_dir, records, _ = full_report
    with open(results_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records)
    by_id = {row["id"]: row for row in rows}
    for rec in records:
        row = by_id[rec["id"]]
        assert row["status"] == rec["status"]
        if rec["status"] == "ok":
            assert int(row["memory.peak"]) == rec["memory"]["peak"]  # raw bytes, not scaled
            assert int(row["memory.at_peak.grads"]) == rec["memory"]["at_peak"]["grads"]
    assert not any(key.startswith("series") for key in rows[0])


def test_skipped_plots_are_explained_and_stale_pngs_removed(full_report, tmp_path):
    # a copy of the full report's directory: every plot drawn once already (that report's own PNGs)
    results_dir = Path(shutil.copytree(full_report[0], tmp_path / "full"))
    assert (results_dir / PLOTS_DIR / "lamda_gradual_freezing.png").exists()
    # the same directory, rewritten with one estimate cell: most plots have no data now
    (results_dir / RESULTS_FILE).unlink()
    write_results(results_dir, [make_record("lora", d=64, r=4)])
    text = write_report(results_dir).read_text()
    for key in ("saved_activations_per_token_vs_d", "params_vs_r",
                "memory_over_step_lora_vs_lamda", "lamda_gradual_freezing", "peak_per_card_vs_world_size"):
        assert not (results_dir / PLOTS_DIR / f"{key}.png").exists()
        assert f"{key}.png" not in text
    assert text.count("*Skipped: ") == 5
    assert "no sweep over d" in text and "timeline file" in text and "per-step series" in text
    _assert_valid_png(results_dir / PLOTS_DIR / "peak_memory_by_category.png")


def test_compare_matches_cells_by_id_and_gives_ratios(tmp_path):
    a = [make_record("lora", d=128), make_record("lamda", d=128), make_record("full", d=64)]
    b = [make_record("lora", d=128), make_record("lamda", d=128, scale=0.5), make_record("lora", d=256)]
    text = compare(write_results(tmp_path / "a", a), write_results(tmp_path / "b", b))
    assert "2 cells in both, 1 only in A, 1 only in B;" in text
    lamda_row = next(line for line in text.splitlines() if f"`{a[1]['id']}`" in line)
    assert "(-50.0%)" in lamda_row  # peak halved
    lora_row = next(line for line in text.splitlines() if f"`{a[0]['id']}`" in line)
    assert "(same)" in lora_row and "%" not in lora_row  # nothing changed: no change shown
    assert a[2]["id"] in text.split("Only in A:")[1]


def test_compare_across_cards_pairs_the_same_cell_estimated_on_two_cards(tmp_path, capsys):
    """The same tiny-llama cell estimated with card = H100-80GB and with RTX4090-24GB: different ids,
    so plain compare pairs nothing; ``--across card`` pairs them and shows each card's predicted
    reserved and device peaks and tokens/s with B / A ratios, from the records' own fields."""
    from lamda_bench.cli import main
    from lamda_bench.report.units import fmt_ratio
    from lamda_bench.runner import run_cell

    def on(card, **kw):
        rec = run_cell(Cell(workload="tiny-llama", method="lora", r=4, batch=2, seq=32, mode="estimate", card=card,
                            **kw).to_dict())
        assert rec["status"] == "ok", rec["error"]
        return rec

    a, b = on("H100-80GB"), on("RTX4090-24GB")
    other = on("RTX4090-24GB", gradient_checkpointing=True)  # only in B
    dir_a, dir_b = write_results(tmp_path / "a", [a]), write_results(tmp_path / "b", [b, other])
    assert a["id"] != b["id"] and "0 cells in both" in compare(dir_a, dir_b)  # unchanged without --across
    assert main(["compare", str(dir_a), str(dir_b), "--across", "card"]) == 0
    text = capsys.readouterr().out
    assert "1 cells in both up to card, 0 only in A, 1 only in B." in text
    line = next(line for line in text.splitlines() if f"`{a['id']}`" in line)
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    cells = [""] + cells[cells.index("H100-80GB"):]  # the axis columns (none vary here), then card A, card B, ...
    assert cells[1:3] == ["H100-80GB", "RTX4090-24GB"] and cells[-1] == f"`{b['id']}`"
    mem, rates = (a["memory"], b["memory"]), (a["time"], b["time"])
    assert mem[0]["peak"] == mem[1]["peak"] and cells[3] == f"{fmt_bytes(mem[0]['peak'])} (same)"
    for i, field in ((4, "reserved_peak"), (6, "device_peak")):
        assert cells[i:i + 2] == [f"{fmt_bytes(mem[0][field])} / {fmt_bytes(mem[1][field])}",
                                  fmt_ratio(mem[1][field] / mem[0][field])]
    ta, tb = (t["tokens_per_s_predicted"] for t in rates)
    assert cells[8:10] == [f"{ta:,.0f} / {tb:,.0f}", fmt_ratio(tb / ta)]
    band = a["info"]["time_model"]["error_band"]
    assert f"median {band['median_abs_error'] * 100:.1f}%" in text and "not a measurement" in text
    # Two cards of one cell in one directory cannot pair: one line, exit 2; so are --sort / --threshold.
    write_results(tmp_path / "a", [on("A100-80GB")])
    assert main(["compare", str(dir_a), str(dir_b), "--across", "card"]) == 2
    assert "differ only in card" in capsys.readouterr().err
    assert main(["compare", str(dir_a), str(dir_b), "--across", "card", "--sort", "peak"]) == 2


def test_missing_results_is_one_line_error(tmp_path):
    with pytest.raises(ReportError, match="no results file") as info:
        write_report(tmp_path)
    assert "\n" not in str(info.value)


def test_units_and_flatten():
    assert fmt_bytes(1536) == "1.50 KiB"
    assert fmt_bytes(3 * 2**30) == "3.00 GiB"
    assert fmt_bytes(None) == "n/a"
    assert fmt_flops(2.5e12) == "2.50 TFLOP"
    assert fmt_count(2_498_560) == "2,498,560"
    rec = make_record("lora")
    rec["cell"]["targets"] = ["q_proj", "v_proj"]
    flat = flatten(rec)
    assert flat["memory.at_peak.weights"] == 2 * 128 * 128 * 4
    assert json.loads(flat["cell.targets"]) == ["q_proj", "v_proj"]  # lists become JSON text
    assert flat["error"] is None and "series.step" not in flat


def test_width_of_named_workloads_comes_from_their_config():
    rec = make_record("lora", d=96)
    assert width(rec) == 96
    rec["cell"].update(workload="llama2-7b", d_in=None, d_out=None)
    assert width(rec) == 4096
    rec["cell"]["workload"] = "bart-large"
    assert width(rec) == 1024


def test_agreement_pairs_records_written_before_the_id_neutral_keys_existed():
    """An H100 record from before ``precision``/``world_size``/``parallel`` existed pairs with a
    new estimate of the same cell (whose cell dict holds those keys at their defaults), and not
    with one at another precision."""
    from lamda_bench.report.agreement import pair_key

    measured = make_record("lora", mode="measure")
    estimate = json.loads(json.dumps(make_record("lora", mode="estimate")))
    estimate["cell"].update(precision="pure", world_size=1, parallel="none", reshard_after_forward=True)
    for key in ("precision", "world_size", "parallel", "reshard_after_forward"):
        measured["cell"].pop(key, None)
    assert pair_key(measured) == pair_key(estimate)
    estimate["cell"]["precision"] = "amp-bf16"
    assert pair_key(measured) != pair_key(estimate)


def test_per_card_peak_vs_world_size_has_one_line_per_method(tmp_path):
    records = [sharded_record(m, w) for m in ("full", "lora", "lamda") for w in (1, 2, 4, 8)]
    records.append(sharded_record("lamda", 16, status="error"))
    results_dir = write_results(tmp_path, records)
    text = write_report(results_dir).read_text()
    png = results_dir / PLOTS_DIR / "peak_per_card_vs_world_size.png"
    _assert_valid_png(png)
    assert f"]({PLOTS_DIR}/peak_per_card_vs_world_size.png)" in text
    assert "1 data-parallel cell(s) without a peak (failed) are not drawn" in text
    from lamda_bench.report.plots_parallel import plot_peak_per_card_vs_world_size

    plot = plot_peak_per_card_vs_world_size(records, tmp_path / "again")
    (ax,) = plot.figure.axes
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert sorted(lines) == ["full", "lamda", "lora"]  # world size is the x axis, not a label
    xs, ys = lines["lora"].get_data()
    assert list(xs) == [1, 2, 4, 8]
    # Each point is the record's rank-0 peak, in TiB here (full at one rank peaks at 1103 GiB).
    assert list(ys) == pytest.approx([(140 / w + 3) / 1024 for w in (1, 2, 4, 8)])


def test_peak_by_category_of_sharded_cells_adds_up_to_the_peak_in_world_size_order(tmp_path):
    """A sharded cell's bars include rank 0's all-gathered parameters and communication buffers
    (memory.per_rank.at_peak), so they sum to memory.peak; panels run W1 W2 W4 W8 whatever
    order the cells finished in."""
    from lamda_bench.report.plots import plot_peak_by_category

    records = []
    for w in (1, 2, 8, 4):
        rec = sharded_record("lora", w)
        cats = {"weights": (130 << 30) // w, "grads": 0, "optimizer": 1 << 28, "activations": 40 << 30,
                "temporaries": 0, "unsharded_weights": (3 << 30) if w > 1 else 0, "comm_buffers": (2 << 30) if w > 1 else 0}
        rec["memory"]["at_peak"] = {c: cats[c] for c in ("weights", "grads", "optimizer", "activations", "temporaries")}
        rec["memory"]["per_rank"] = {"rank": 0, "at_peak": cats}
        rec["memory"]["peak"] = sum(cats.values())
        records.append(rec)
    plot = plot_peak_by_category(records, tmp_path)
    axes = plot.figure.axes
    assert [ax.get_title(loc="left") for ax in axes] == [f"W{w} (estimate)" for w in (1, 2, 4, 8)]
    by_w = {r["cell"]["world_size"]: r for r in records}
    for ax, w in zip(axes, (1, 2, 4, 8)):
        right = max(p.get_x() + p.get_width() for p in ax.patches)
        assert ax.get_xlabel() == "memory at peak (GiB)"
        assert right * 2**30 == pytest.approx(by_w[w]["memory"]["peak"])
    legend = {t.get_text() for t in plot.figure.legends[0].get_texts()}
    assert {"unsharded_weights", "comm_buffers"} <= legend


def test_a_card_shows_reserved_and_device_beside_the_peak_as_predicted_and_oom_as_a_lower_bound(tmp_path):
    fits, oom = make_record(method="lora"), make_record(method="lamda")
    for rec, reserved, extra in ((fits, 3 << 30, {}), (oom, 80 << 30, {"oom": "does not fit: ..."})):
        rec["cell"]["card"] = "H100-80GB"
        rec["memory"].update(reserved_peak=reserved, device_peak=reserved + (1 << 30))
        rec["time"].update(step_s_predicted=0.5, tokens_per_s_predicted=64.0)
        rec["info"]["allocator"] = {"card": "H100-80GB", **extra}
    text = write_report(write_results(tmp_path / "card", [fits, oom])).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| ") and "on the card: reserved" in line)
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns.index("on the card: reserved (predicted)") == columns.index("peak (optimizer phase)") + 1
    assert columns[-2] == "throughput"  # predicted, so shown although nothing was timed
    row = next(line for line in text.splitlines() if fits["id"] in line and line.startswith("| "))
    assert "| 3.00 GiB " in row and "| 4.00 GiB " in row and "64 tokens/s predicted on H100-80GB" in row
    row = next(line for line in text.splitlines() if oom["id"] in line and line.startswith("| "))
    assert "> 80.00 GiB (out of memory)" in row and "> 81.00 GiB (out of memory)" in row
    assert "what nvidia-smi would show" in text
    # without a card nothing of it appears
    plain = write_report(write_results(tmp_path / "plain", [make_record()])).read_text()
    assert "on the card" not in plain and "predicted on" not in plain


def test_offloading_and_the_loss_are_columns_and_labels_where_set_and_the_host_bytes_are_shown(tmp_path):
    plain, fused, offloaded = make_record(), make_record(), make_record()
    for rec, key, value in ((fused, "loss", "fused_linear_ce"), (offloaded, "offload_activations", True)):
        rec["cell"][key] = value
        rec["id"] = Cell.from_dict(rec["cell"]).id
    fused["memory"]["peak"] -= 1 << 20
    offloaded["memory"]["peak"] -= 2 << 20
    offloaded["memory"]["host_offloaded_peak"] = 3 << 20
    text = write_report(write_results(tmp_path / "recipes", [plain, fused, offloaded])).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| ") and "host RAM" in line)
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert {"loss", "offload_activations", "host RAM: offloaded activations (not in peak)"} <= set(columns)
    row = next(line for line in text.splitlines() if offloaded["id"] in line and line.startswith("| "))
    assert "| 3.00 MiB " in row
    # the headline tells the three LoRA cells apart and ranks them against the plain recipe
    assert "lora loss=model offload " in text and "lora loss=fused_linear_ce no offload" in text
    assert "(LoRA reference)" in next(line for line in text.splitlines() if "lora loss=model no offload" in line)
    assert "the one with the model's own loss and no offloading" in text
    # a report without either says nothing of them
    alone = write_report(write_results(tmp_path / "plain", [make_record()])).read_text()
    assert "offload" not in alone and "loss=" not in alone and "host RAM" not in alone
