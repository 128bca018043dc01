"""Cells forked from the preloaded server (lamda_bench/launch/forkserver.py): imports paid once, and a
fresh process per cell all the same.

The runner_* functions run in the cell processes, imported by path ("test_forkserver:...").
"""

from __future__ import annotations

import gc
import os
import sys

import pytest

from lamda_bench.launch import forkserver
from lamda_bench.suite.cell import Cell
from lamda_bench.launch.local import run_cells

pytestmark = pytest.mark.skipif(not forkserver.available(), reason="no forkserver start method here")

# ---- runners (run in the cell process) ----------------------------------------------------


def runner_mutates_globals(cell, artifacts_dir):
    """Reports the global state it found, then changes it: a later cell must not see the change."""
    import torch

    import lamda_bench.runner as runner

    seen = {"default_dtype": str(torch.get_default_dtype()), "flops_limit": runner.CPU_MEASURE_MAX_FLOPS,
            "marker": getattr(torch, "_lamda_bench_test_marker", None)}
    torch.set_default_dtype(torch.float64)
    runner.CPU_MEASURE_MAX_FLOPS = -1.0
    torch._lamda_bench_test_marker = cell["r"]
    return {"status": "ok", "error": None, "seen": seen, "pid": os.getpid()}


def runner_reports_process(cell, artifacts_dir):
    """What the cell process was started with: preloaded modules, its parent's threads, env."""
    ppid = os.getppid()
    try:
        parent_threads = len(os.listdir(f"/proc/{ppid}/task"))
    except OSError:
        parent_threads = None
    return {"status": "ok", "error": None, "pid": os.getpid(),
            "preloaded": all(m in sys.modules for m in ("torch", "transformers", "peft")),
            "parent_threads": parent_threads, "env": os.environ.get("LAMDA_BENCH_TEST_VALUE"),
            "cwd": os.getcwd(), "frozen": gc.get_freeze_count()}


def cells(*rs, **kw):
    return [Cell(workload="linear", method="lora", r=r, d_in=64, d_out=64, **kw) for r in rs]


# ---- tests ----------------------------------------------------------------------------------


def test_global_state_a_cell_changes_does_not_reach_the_next(tmp_path):
    summary = run_cells(cells(1, 2, 3), tmp_path, suite="t", runner="test_forkserver:runner_mutates_globals",
                        jobs=1, progress=False)
    records = summary.records
    assert [r["status"] for r in records] == ["ok"] * 3
    assert {r["launch"]["start"] for r in records} == {"forkserver"}
    assert len({r["pid"] for r in records}) == 3  # a fresh process per cell
    for rec in records:
        assert rec["seen"] == {"default_dtype": "torch.float32", "flops_limit": 3e10, "marker": None}


def test_forked_cells_find_the_libraries_imported_and_the_server_without_threads(tmp_path):
    summary = run_cells(cells(1), tmp_path, suite="t", runner="test_forkserver:runner_reports_process",
                        progress=False)
    rec = summary.records[0]
    assert rec["launch"]["start"] == "forkserver" and rec["preloaded"] is True
    # Forking is only safe from a process that has started no threads (torch's pool included).
    if rec["parent_threads"] is not None:
        assert rec["parent_threads"] == 1


@pytest.mark.parametrize("start", ["auto", "spawn"])
def test_a_cell_runs_with_the_imported_heap_frozen(tmp_path, start):
    """The libraries' objects are out of the cyclic collector's sight (child.freeze_heap), so
    the two collections of each tracked step do not walk them (about 0.25 s each)."""
    summary = run_cells(cells(1), tmp_path, suite="t", runner="test_forkserver:runner_reports_process",
                        start=start, progress=False)
    assert summary.records[0]["frozen"] > 10_000


def test_spawn_start_imports_nothing_in_advance(tmp_path):
    summary = run_cells(cells(1), tmp_path, suite="t", runner="test_forkserver:runner_reports_process",
                        start="spawn", progress=False)
    rec = summary.records[0]
    assert rec["launch"]["start"] == "spawn" and rec["preloaded"] is False


def test_a_forked_cell_sees_the_launchers_environment_and_directory_of_now(tmp_path, monkeypatch):
    run_cells(cells(1), tmp_path / "first", suite="t", runner="test_forkserver:runner_reports_process",
              progress=False)  # the server is running from here on
    monkeypatch.setenv("LAMDA_BENCH_TEST_VALUE", "set after the server started")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    summary = run_cells(cells(2), "relative-out", suite="t", runner="test_forkserver:runner_reports_process",
                        progress=False)
    rec = summary.records[0]
    assert rec["launch"]["start"] == "forkserver"
    assert rec["env"] == "set after the server started"
    assert rec["cwd"] == str(workdir) and (workdir / "relative-out" / "results.jsonl").exists()


def test_cells_that_may_use_cuda_are_spawned(tmp_path):
    summary = run_cells(cells(1, device="cuda"), tmp_path, suite="t", runner="test_forkserver:runner_reports_process",
                        gpus=0, progress=False)
    assert summary.records[0]["launch"]["start"] == "spawn"


def test_an_estimate_cell_forked_matches_the_spawned_one(tmp_path):
    """The real runner through both starts: the same bytes and FLOPs."""
    cell = Cell(workload="tiny-llama", method="lamda", r=4, batch=2, seq=32, mode="estimate", device="cpu")
    forked = run_cells([cell], tmp_path / "fork", suite="t", progress=False).records[0]
    spawned = run_cells([cell], tmp_path / "spawn", suite="t", start="spawn", progress=False).records[0]
    assert forked["status"] == spawned["status"] == "ok", (forked["error"], spawned["error"])
    assert forked["launch"]["start"] == "forkserver" and spawned["launch"]["start"] == "spawn"
    assert forked["memory"] == spawned["memory"] and forked["flops"] == spawned["flops"]
    assert forked["env"]["cpu_threads"] == spawned["env"]["cpu_threads"]
