"""The memory regression gate: exit codes, the table of what changed, baseline writing.

Records come from ``test_report.make_record`` (the ARCHITECTURE.md record format).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from lamda_bench.results import gate
from lamda_bench.results.files import RESULTS_FILE
from test_report import make_record, write_results


def _records() -> list[dict]:
    return [make_record("lora", d=128), make_record("lamda", d=128, batch=4, seq=64), make_record("full", d=64),
            make_record("lora", d=64, mode="measure")]


def _run(results_dir: Path, baseline: Path, update: bool = False, **flags) -> tuple[int, str]:
    out = io.StringIO()
    code = gate.check_cli(results_dir, baseline, update_baseline=update, stream=out, **flags)
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
    code, text = _run(results_dir, baseline, update=True, drop_missing=True)
    data = json.loads(baseline.read_text())
    assert code == gate.EXIT_PASS, text
    assert data["tolerances"]["measure"]["rel"] == 0.2
    assert set(data["cells"]) == {records[0]["id"], records[1]["id"]}
    assert f"dropped (no result): {records[2]['id']}" in text


# ---- environment drift: named, strict by default, comparable on request ----------------------


def _drifted(records: list[dict], version: str = "5.24.0", scale: float = 1.0) -> list[dict]:
    """The same cells as if run after a transformers upgrade (new fingerprint, same bytes)."""
    out = []
    for rec in records:
        rec = json.loads(json.dumps(rec))
        rec["env"]["transformers"] = version
        rec["env"]["fingerprint"] = rec["env"]["fingerprint"] + "-" + version
        if scale != 1.0:
            rec["memory"]["peak"] = int(rec["memory"]["peak"] * scale)
        out.append(rec)
    return out


def test_baseline_stores_the_environment_fields(setup):
    _, baseline, records = setup
    env = json.loads(baseline.read_text())["cells"][records[0]["id"]]["env"]
    assert env["transformers"] == "5.23" and env["torch"] == "2.13.0" and env["peft"] == "0.21.2"
    assert "python" in env and "device_class" in env


def test_version_drift_names_the_field_once_and_is_strict(setup, tmp_path):
    _, baseline, records = setup
    drifted = write_results(tmp_path / "upgraded", _drifted(records))
    code, text = _run(drifted, baseline)
    assert code == gate.EXIT_ENV_MISMATCH, text
    drift_lines = [line for line in text.splitlines() if line.startswith("ENVIRONMENT DRIFT")]
    assert drift_lines == [f"ENVIRONMENT DRIFT: transformers 5.23 -> 5.24.0 ({len(records)} of {len(records)} "
                           f"mismatched cells)"]
    assert text.count("ENVIRONMENT MISMATCH: cell ") == len(records)
    assert "transformers 5.23 -> 5.24.0; not compared" in text
    assert "gate: ENVIRONMENT MISMATCH (exit 4)" in text


def test_allow_env_drift_passes_on_equal_bytes_and_fails_on_a_planted_regression(setup, tmp_path):
    _, baseline, records = setup
    same = write_results(tmp_path / "same", _drifted(records))
    code, text = _run(same, baseline, allow_env_drift=True)
    assert code == gate.EXIT_PASS, text
    assert "ENVIRONMENT DRIFT (compared anyway: --allow-env-drift): transformers 5.23 -> 5.24.0" in text
    assert f"No gated metric changed ({len(records)} cells compared)" in text
    assert "gate: PASS across environment drift (exit 0)" in text

    worse = write_results(tmp_path / "worse", _drifted(records, scale=1.5))
    code, text = _run(worse, baseline, allow_env_drift=True)
    assert code == gate.EXIT_REGRESSION, text
    assert f"REGRESSION: memory.peak of cell {records[0]['id']} rose beyond tolerance" in text


def test_old_baseline_without_fields_says_so(setup, tmp_path):
    _, baseline, records = setup
    _edit_baseline(baseline, lambda d: [c.pop("env") for c in d["cells"].values()])
    code, text = _run(write_results(tmp_path / "upgraded", _drifted(records)), baseline)
    assert code == gate.EXIT_ENV_MISMATCH
    assert "the baseline stores no environment fields; re-record it to name them" in text


# ---- --update-baseline never hides a regression ---------------------------------------------


def test_update_refuses_a_regression_and_leaves_the_file(setup, tmp_path):
    _, baseline, records = setup
    before = baseline.read_bytes()
    worse = write_results(tmp_path / "worse", [make_record("lora", d=128, scale=24.0)] + records[1:])
    code, text = _run(worse, baseline, update=True)
    assert code == gate.EXIT_REGRESSION, text
    assert baseline.read_bytes() == before
    assert "NOT WRITTEN:" in text and "--accept-regressions" in text and "left untouched" in text
    assert "REGRESSION: memory.peak of cell" in text

    code, text = _run(worse, baseline, update=True, accept_regressions=True)
    assert code == gate.EXIT_PASS, text
    assert f"accepted regression: memory.peak of cell {records[0]['id']}" in text
    assert json.loads(baseline.read_text())["cells"][records[0]["id"]]["metrics"]["memory.peak"] > \
        json.loads(before)["cells"][records[0]["id"]]["metrics"]["memory.peak"]


def test_update_refuses_failed_and_disappearing_cells(setup, tmp_path):
    results_dir, baseline, records = setup
    before = baseline.read_bytes()
    failed = dict(records[1], status="error", error="boom", memory=None, params=None)
    write_results(results_dir, [failed])
    code, text = _run(results_dir, baseline, update=True)
    assert code == gate.EXIT_REGRESSION and baseline.read_bytes() == before, text
    assert f"{records[1]['id']} (error: boom)" in text and "--drop-missing" in text

    partial = write_results(tmp_path / "partial", records[:2])
    code, text = _run(partial, baseline, update=True)
    assert code == gate.EXIT_MISSING_BASELINE and baseline.read_bytes() == before, text
    assert "would disappear" in text and records[3]["id"] in text

    code, text = _run(results_dir, baseline, update=True, drop_missing=True)
    assert code == gate.EXIT_PASS, text
    assert f"left out (did not finish): {records[1]['id']}" in text
    assert records[1]["id"] not in json.loads(baseline.read_text())["cells"]


def test_update_across_a_drift_names_it(setup, tmp_path):
    _, baseline, records = setup
    code, text = _run(write_results(tmp_path / "upgraded", _drifted(records)), baseline, update=True)
    assert code == gate.EXIT_PASS, text
    assert "accepted environment drift: transformers 5.23 -> 5.24.0" in text
    assert json.loads(baseline.read_text())["cells"][records[0]["id"]]["env"]["transformers"] == "5.24.0"


# ---- the baseline is validated as strictly as a suite -----------------------------------------


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.__setitem__("metrics", {}), "the gate would check nothing"),
    (lambda d: d["metrics"].__setitem__("memory.peak", None), "needs \"direction\""),
    (lambda d: d["tolerances"].__setitem__("estimate", 5), "tolerances.estimate must be an object"),
    (lambda d: d["metrics"]["memory.peak"].__setitem__("estimate", "loose"), "metrics.memory.peak.estimate"),
    (lambda d: d["metrics"]["memory.peak"].__setitem__("rel", 1e400), "finite number"),
    (lambda d: d["metrics"]["memory.peak"].__setitem__("abs", True), "finite number"),
    (lambda d: next(iter(d["cells"].values()))["metrics"].__setitem__("memory.peak", None), "not a finite number"),
    (lambda d: next(iter(d["cells"].values()))["metrics"].__setitem__("memory.peak", "12"), "not a finite number"),
    (lambda d: next(iter(d["cells"].values()))["metrics"].__setitem__("memory.peak", -5), "is negative"),
])
def test_a_baseline_that_would_check_nothing_is_refused(setup, edit, needle):
    results_dir, baseline, _ = setup
    _edit_baseline(baseline, edit)
    code, text = _run(results_dir, baseline)
    assert code == gate.EXIT_USAGE, text
    assert text.startswith("usage error:") and needle in text and text.count("\n") == 1


def test_non_standard_json_constants_are_refused(setup):
    results_dir, baseline, _ = setup
    baseline.write_text(baseline.read_text().replace('"rel": 0.0', '"rel": Infinity', 1))
    code, text = _run(results_dir, baseline)
    assert code == gate.EXIT_USAGE and "Infinity" in text, text


def test_a_bad_value_in_a_record_fails_the_gate_in_one_line(setup, tmp_path):
    _, baseline, records = setup
    bad = json.loads(json.dumps(records[0]))
    bad["memory"]["peak"] = -1
    code, text = _run(write_results(tmp_path / "bad", [bad] + records[1:]), baseline)
    assert code == gate.EXIT_REGRESSION, text
    assert f"REGRESSION: memory.peak of cell {records[0]['id']} is -1 now, not a finite number >= 0" in text
