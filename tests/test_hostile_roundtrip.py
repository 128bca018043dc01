"""A record describes its cell (issue 45): the cell is written as asked (device and mode
"auto" stay "auto"; the resolution is ``info.resolved``), so a record fed back as a suite is
the same cell with the same id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamda_bench.one_cell.cell import build_cell, run_one
from lamda_bench.results.record import run_device, run_mode
from lamda_bench.suite.cell import Cell

ROOT = Path(__file__).resolve().parent.parent


def committed_records():
    for path in sorted((ROOT / "reports").rglob("results.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                record = json.loads(line)
                if isinstance(record.get("cell"), dict):
                    yield f"{path.relative_to(ROOT)}:{n}", record


def test_every_committed_records_cell_reparses_to_its_id():
    seen = 0
    for where, record in committed_records():
        assert Cell.from_dict(record["cell"]).id == record["id"], where
        seen += 1
    assert seen > 200


def as_suite_keys(cell: dict) -> dict:
    keys = {k: v for k, v in cell.items() if k != "options" and v is not None}  # TOML has no null: None is the default
    keys.update(cell.get("options") or {})
    return keys


@pytest.mark.parametrize("keys", [
    {"workload": "tiny-llama", "method": "lora", "seq": 16},  # device and mode auto
    {"workload": "tiny-llama", "method": "lora", "seq": 16, "mode": "estimate"},  # device auto
])
def test_a_record_fed_back_is_the_same_cell(tmp_path, keys):
    cell = build_cell(keys)
    record, _ = run_one(cell, tmp_path / "out", progress=False)
    assert record["status"] == "ok", record.get("error")
    assert record["cell"]["device"] == "auto" and record["cell"]["mode"] == cell.mode
    assert run_device(record) in ("cpu", "cuda") and run_mode(record) in ("measure", "estimate")
    assert record["info"]["resolved"] == {"device": run_device(record), "mode": run_mode(record)}
    again = build_cell(as_suite_keys(record["cell"]))
    assert again == cell and again.id == record["id"]
