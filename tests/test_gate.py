"""The memory regression gate: exit codes, the table of what changed, baseline writing.

Records come from ``test_report.make_record`` (the ARCHITECTURE.md record format).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from lamda_bench import gate
from lamda_bench.results import RESULTS_FILE
from test_report import make_record, write_results


def _records() -> list[dict]:
    return [make_record("lora", d=128), make_record("lamda", d=128, batch=4, seq=64), make_record("full", d=64),
            make_record("lora", d=64, mode="measure")]


def _run(results_dir: Path, baseline: Path, update: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    code = gate.check_cli(results_dir, baseline, update_baseline=update, stream=out)
    return code, out.getvalue()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    records = _records()
    results_dir = write_results(tmp_path / "run", records)
    baseline = tmp_path / "baselines" / "ci.json"
    code, text = _run(results_dir, baseline, update=True)
    assert code == gate.EXIT_PASS, text
    return results_dir, baseline, records


def _edit_baseline(baseline: Path, edit) -> None:
    data = json.loads(baseline.read_text())
    edit(data)
    baseline.write_text(json.dumps(data))


def test_update_baseline_creates_file_with_metrics_and_fingerprints(setup):
    _, baseline, records = setup
    data = json.loads(baseline.read_text())
    assert data["format"] == gate.BASELINE_FORMAT
    assert set(data["cells"]) == {r["id"] for r in records}
    lamda = data["cells"][records[1]["id"]]
    assert lamda["fingerprint"] == "fp-cpu-test" and lamda["mode"] == "estimate"
    assert lamda["metrics"]["memory.peak"] == records[1]["memory"]["peak"]
    assert "memory.cuda_max_allocated" not in lamda["metrics"]  # null on CPU: not gated
    assert not list(baseline.parent.glob(".*.tmp"))  # the atomic write left no temp file


def test_identical_run_passes(setup):
    results_dir, baseline, _ = setup
    code, text = _run(results_dir, baseline)
    assert code == gate.EXIT_PASS, text
    assert "No gated metric changed" in text and "gate: PASS (exit 0)" in text


def test_planted_regression_fails_naming_the_metric(setup):
    results_dir, baseline, records = setup
    lamda_id = records[1]["id"]

    def lower(data):  # the baseline says LaMDA's adapter activations used to be smaller
        cell = data["cells"][lamda_id]["metrics"]
        cell["memory.saved_activations_adapter"] = cell["memory.saved_activations_adapter"] // 2

    _edit_baseline(baseline, lower)
    code, text = _run(results_dir, baseline)
    assert code == gate.EXIT_REGRESSION, text
    assert f"REGRESSION: memory.saved_activations_adapter of cell {lamda_id}" in text
    row = next(line for line in text.splitlines() if "memory.saved_activations_adapter" in line and line.startswith("|"))
    assert "REGRESSION" in row and "+100.00%" in row
    assert "gate: REGRESSION (exit 1)" in text


def test_estimate_tolerance_is_tight_and_measure_tolerance_loose(setup):
    results_dir, baseline, records = setup
    est_id, meas_id = records[0]["id"], records[3]["id"]

    def nudge(data):  # 5 KiB lower than now: beyond the 1 KiB estimate tolerance,
        for cid in (est_id, meas_id):  # within the 16 KiB measure tolerance
            data["cells"][cid]["metrics"]["memory.peak"] -= 5 * 1024

    _edit_baseline(baseline, nudge)
    code, text = _run(results_dir, baseline)
    assert code == gate.EXIT_REGRESSION
    assert f"memory.peak of cell {est_id}" in text
    assert f"memory.peak of cell {meas_id}" not in text

    def override(data):  # a per-metric override stored in the baseline file loosens it
        data["metrics"]["memory.peak"]["estimate"] = {"rel": 0.0, "abs": 8192}

    _edit_baseline(baseline, override)
    code, text = _run(results_dir, baseline)
    assert code == gate.EXIT_PASS, text


def test_improvement_passes_and_says_so(setup):
    results_dir, baseline, records = setup
    _edit_baseline(baseline, lambda d: d["cells"][records[0]["id"]]["metrics"].__setitem__("memory.peak", 10**9))
    code, text = _run(results_dir, baseline)
    assert code == gate.EXIT_PASS
    assert "improved" in text and "--update-baseline" in text


def test_fingerprint_mismatch_is_reported_distinctly(setup):
    results_dir, baseline, records = setup
    _edit_baseline(baseline, lambda d: d["cells"][records[2]["id"]].__setitem__("fingerprint", "fp-other-gpu"))
    code, text = _run(results_dir, baseline)
    assert code == gate.EXIT_ENV_MISMATCH, text
    assert f"ENVIRONMENT MISMATCH: cell {records[2]['id']}" in text and "fp-other-gpu" in text


def test_missing_baseline_file_and_cell_are_distinct(setup, tmp_path):
    results_dir, baseline, records = setup
    code, text = _run(results_dir, tmp_path / "nope.json")
    assert code == gate.EXIT_MISSING_BASELINE and "does not exist" in text

    _edit_baseline(baseline, lambda d: d["cells"].pop(records[1]["id"]))
    code, text = _run(results_dir, baseline)
    assert code == gate.EXIT_MISSING_BASELINE
    assert f"MISSING BASELINE: cell {records[1]['id']}" in text

    # a baseline cell that was not run is missing too: the gate cannot vouch for it
    other = write_results(tmp_path / "subset", records[:1])
    _run(results_dir, baseline, update=True)
    code, text = _run(other, baseline)
    assert code == gate.EXIT_MISSING_BASELINE and "MISSING RESULT" in text


def test_failed_cell_is_a_regression(setup):
    results_dir, baseline, records = setup
    failed = dict(records[1], status="oom", error="out of memory", memory=None, params=None)
    write_results(results_dir, [failed])  # appended: the last record per id wins
    code, text = _run(results_dir, baseline)
    assert code == gate.EXIT_REGRESSION
    assert f"cell {records[1]['id']} did not finish (oom: out of memory)" in text


def test_usage_errors(setup, tmp_path):
    results_dir, baseline, _ = setup
    code, text = _run(tmp_path / "no-such-dir", baseline)
    assert code == gate.EXIT_USAGE and text.startswith("usage error:") and text.count("\n") == 1
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert _run(results_dir, bad)[0] == gate.EXIT_USAGE
    _edit_baseline(baseline, lambda d: d["metrics"]["memory.peak"].__setitem__("direction", "sideways"))
    code, text = _run(results_dir, baseline)
    assert code == gate.EXIT_USAGE and "direction" in text
    empty = write_results(tmp_path / "failed-only", [make_record("lora", status="error")])
    code, text = _run(empty, tmp_path / "new.json", update=True)
    assert code == gate.EXIT_USAGE and not (tmp_path / "new.json").exists()


def test_update_keeps_tolerances_and_replaces_cells(setup):
    results_dir, baseline, records = setup
    _edit_baseline(baseline, lambda d: d["tolerances"]["measure"].__setitem__("rel", 0.2))
    (results_dir / RESULTS_FILE).unlink()
    write_results(results_dir, records[:2])
    code, _ = _run(results_dir, baseline, update=True)
    data = json.loads(baseline.read_text())
    assert code == gate.EXIT_PASS
    assert data["tolerances"]["measure"]["rel"] == 0.2
    assert set(data["cells"]) == {records[0]["id"], records[1]["id"]}
