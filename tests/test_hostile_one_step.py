"""One step, one answer (issue 45): with steps = 1, warmup = 0 an estimate tracks the steps a
measurement of the same cell tracks, so the two peaks are equal to the byte."""

from __future__ import annotations

import pytest

from lamda_bench.one_cell.cell import build_cell
from lamda_bench.runner import run_cell


@pytest.mark.parametrize("workload", ["tiny-llama", "tiny-mixtral"])
def test_one_step_estimate_equals_measure(workload):
    keys = {"workload": workload, "method": "lora", "seq": 16, "dtype": "fp32", "device": "cpu",
            "steps": 1, "warmup": 0}
    measured = run_cell(build_cell({**keys, "mode": "measure"}).to_dict())
    estimated = run_cell(build_cell({**keys, "mode": "estimate"}).to_dict())
    for record in (measured, estimated):
        assert record["status"] == "ok", record.get("error")
        assert record["info"]["peak_steps"]["untracked"] == [2]
    assert estimated["memory"]["peak"] == measured["memory"]["peak"]
    assert estimated["memory"]["at_peak"] == measured["memory"]["at_peak"]
