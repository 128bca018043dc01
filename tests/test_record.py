"""The record module: keys defined once, paths that fail loudly, records that stay plain JSON dicts."""

import json
from pathlib import Path

import pytest

from lamda_bench.model import parallel
from lamda_bench.results import record as R
from lamda_bench.runner import run_cell
from lamda_bench.measure import live
from lamda_bench.report import plotstyle

REPO = Path(__file__).resolve().parents[1]


def _cell(**kw):
    return {**dict(workload="linear", method="lamda", d_in=32, d_out=32, layers=1, r=4, batch=2, seq=8,
                   dtype="fp32", device="cpu", mode="measure", warmup=1, steps=2), **kw}


def test_a_written_record_has_the_blocks_and_keys_record_py_defines():
    """The runner fills the blocks of an ok record with the keys a failed record starts from
    (record.blank_blocks), in the same order: one list of keys, not two that drift apart."""
    rec = run_cell(_cell())
    assert rec["status"] == "ok", rec["error"]
    blank = R.blank_blocks()
    for block in ("params", "flops", "time", "series"):
        assert list(rec[block]) == list(blank[block]), block
    assert list(rec["memory"])[:len(R.MEMORY_KEYS)] == list(R.MEMORY_KEYS)
    assert set(rec["memory"]) <= set(R.MEMORY_KEYS + R.MEMORY_OPTIONAL_KEYS)
    assert list(rec["memory"]["at_peak"]) == list(R.CATEGORIES)
    assert rec["schema"] == R.SCHEMA_VERSION
    assert R.get(rec, R.MEMORY.peak) == rec["memory"]["peak"]
    assert R.get(rec, R.AT_PEAK.grads) == rec["memory"]["at_peak"]["grads"]
    assert R.get(rec, R.PREDICTED_PARAMS.trainable) == rec["predicted"]["params"]["trainable"]


def test_a_failed_record_has_the_same_blocks_all_null():
    rec = run_cell(_cell(r=99))  # r > d: bad input, an error record
    assert rec["status"] == "error" and "r=99" in rec["error"]
    blank = R.blank_blocks()
    for block in ("params", "memory", "flops", "time", "series"):
        assert rec[block] == blank[block]


@pytest.mark.parametrize("path", ["reports/llama7b-cpu/results.jsonl", "reports/claims/results.jsonl",
                                  "reports/sharded/results.jsonl", "reports/gpu/measured/results.jsonl"])
def test_committed_records_read_and_write_back_byte_identical(path):
    """Records stay the dicts json gives: every committed line re-serializes to its own bytes,
    and its memory keys are ones record.py knows."""
    lines = (REPO / path).read_text(encoding="utf-8").splitlines()
    assert lines
    for line in lines:
        rec = json.loads(line)
        assert json.dumps(rec, separators=(",", ":"), allow_nan=False) == line  # as results.py writes
        assert rec["schema"] == R.SCHEMA_VERSION
        if rec["status"] == "ok":
            assert set(rec["memory"]) <= set(R.MEMORY_KEYS + R.MEMORY_OPTIONAL_KEYS)
            assert set(R.get(rec, R.MEMORY.at_peak, {})) <= set(R.CATEGORIES)


def test_paths_fail_loudly_on_a_typo():
    assert R.MEMORY.peak == "memory.peak" and R.AT_PEAK.path("grads") == "memory.at_peak.grads"
    with pytest.raises(AttributeError, match="'memory' has no key 'peek'"):
        R.MEMORY.peek  # noqa: B018
    with pytest.raises(ValueError, match="'gradz' is not a key of memory.at_peak"):
        R.AT_PEAK.path("gradz")


def test_categories_are_defined_once():
    assert live.CATEGORIES is R.CATEGORIES and plotstyle.CATEGORIES is R.CATEGORIES
    assert tuple(plotstyle.CATEGORY_COLORS) == R.CATEGORIES + R.SHARDED_CATEGORIES  # plotting order
    assert (parallel.UNSHARDED_CATEGORY, parallel.COMM_CATEGORY) == R.SHARDED_CATEGORIES
    assert R.RANK_AT_PEAK.keys == R.CATEGORIES + R.SHARDED_CATEGORIES


def test_get_returns_the_default_for_missing_or_null_steps():
    rec = {"memory": {"peak": None, "at_peak": {"grads": 0}}}
    assert R.get(rec, R.MEMORY.peak, 7) == 7
    assert R.get(rec, R.AT_PEAK.grads, 7) == 0
    assert R.get(rec, R.PREDICTED_MEMORY.weights, "n/a") == "n/a"
