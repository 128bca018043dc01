"""launch.py with fake runner functions (no torch in the cell processes: each spawn stays cheap).

The runner_* functions below are imported by path ("test_launch:runner_ok") in the spawned
cell processes; tests/ is on sys.path there because spawn hands the parent's path over.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from lamda_bench.suite.cell import Cell
from lamda_bench.launch.local import LaunchError, cuda_device_count, run_cells
from lamda_bench.results.files import load_results, results_path

# ---- fake runners (run in the cell process) -----------------------------------------------


def runner_ok(cell, artifacts_dir):
    # Figures derived from the input, so a test can tell which cell a record came from.
    return {"status": "ok", "error": None, "cell": {**cell, "device": "cpu", "mode": "measure"},
            "params": {"trainable": cell["r"] * 1000}, "memory": {"peak": cell["r"] * 2**30},
            "time": {"tokens_per_s": float(cell["batch"] * cell["seq"])},
            "pid": os.getpid()}


def runner_by_r(cell, artifacts_dir):
    """r picks the behaviour: 1 ok, 2 raises, 3 sys.exit, 4 SIGKILL itself, 5 hangs."""
    r = cell["r"]
    if r == 2:
        raise RuntimeError("boom\nsecond line")
    if r == 3:
        sys.exit(3)
    if r == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    if r == 5:
        time.sleep(60)
    return runner_ok(cell, artifacts_dir)


def runner_log_times(cell, artifacts_dir):
    """Logs [start, end, CUDA_VISIBLE_DEVICES] to artifacts_dir/times/<r>.json."""
    start = time.time()
    time.sleep(1.0)  # wide enough for start-up jitter on a loaded machine
    folder = os.path.join(artifacts_dir, "times")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{cell['r']}.json"), "w") as f:
        json.dump([start, time.time(), os.environ.get("CUDA_VISIBLE_DEVICES")], f)
    print("hello from the cell")  # goes to logs/<id>.log, not to the terminal
    return runner_ok(cell, artifacts_dir)


def runner_threads(cell, artifacts_dir):
    """Reports the thread settings the cell process started with, and torch's pool size."""
    import torch

    return {**runner_ok(cell, artifacts_dir),
            "threads": [os.environ.get("OMP_NUM_THREADS"), os.environ.get("MKL_NUM_THREADS"),
                        torch.get_num_threads()]}


def runner_slow(cell, artifacts_dir):
    time.sleep(0.5 + 0.1 * cell["r"])
    return runner_ok(cell, artifacts_dir)


# ---- tests ----------------------------------------------------------------------------


def cells(*rs, **kw):
    return [Cell(workload="linear", method="lora", r=r, d_in=64, d_out=64, **kw) for r in rs]


def by_r(records):
    return {r["cell"]["r"]: r for r in records}


def test_every_failure_kind_becomes_a_record_and_the_sweep_goes_on(tmp_path):
    # Only cell 5 (which never returns) gets the short timeout: on a loaded machine process
    # start and imports alone can take seconds, and the other cells must not time out.
    todo = cells(1, 2, 3, 4, timeout_s=120.0) + cells(5, timeout_s=3.0)
    t0 = time.monotonic()
    summary = run_cells(todo, tmp_path, suite="t", runner="test_launch:runner_by_r", jobs=3, progress=False)
    assert time.monotonic() - t0 < 120
    recs = by_r(load_results(results_path(tmp_path)).records)
    assert len(summary.records) == 5 and set(recs) == {1, 2, 3, 4, 5}
    assert recs[1]["status"] == "ok" and recs[1]["params"]["trainable"] == 1000
    assert recs[2]["status"] == "error" and recs[2]["error"] == "runner raised RuntimeError: boom"
    assert recs[3]["status"] == "error" and "exited with code 3" in recs[3]["error"]
    # A small process killed by SIGKILL: no memory pressure, so not called an OOM.
    assert recs[4]["status"] == "error" and "signal 9" in recs[4]["error"]
    assert recs[5]["status"] == "timeout" and "3 s" in recs[5]["error"]
    for cell, rec in zip(todo, (recs[i] for i in range(1, 6))):
        assert rec["id"] == cell.id and rec["suite"] == "t" and rec["schema"] == 1
        assert rec["env"]["harness"] and rec["wall_s"] >= 0 and rec["started_at"].endswith("Z")
        assert rec["launch"]["wall_s"] >= rec["wall_s"] and rec["launch"]["launcher"] == "local"
    # The traceback of the raising runner is kept in the cell's log.
    assert "boom" in (tmp_path / recs[2]["artifacts"]["log"]).read_text()


def test_resume_skips_recorded_cells_and_retry_failed_reruns_errors(tmp_path):
    todo = cells(1, 2)
    run_cells(todo, tmp_path, suite="t", runner="test_launch:runner_by_r", progress=False)
    again = run_cells(todo + cells(6), tmp_path, suite="t", runner="test_launch:runner_by_r", progress=False)
    assert again.skipped == 2 and [r["cell"]["r"] for r in again.records] == [6]
    retry = run_cells(todo, tmp_path, suite="t", runner="test_launch:runner_ok", retry_failed=True,
                      progress=False)
    assert retry.skipped == 1 and [(r["cell"]["r"], r["status"]) for r in retry.records] == [(2, "ok")]
    assert len(load_results(results_path(tmp_path)).records) == 4  # appended, never rewritten


def test_incompatible_results_file_refused_before_anything_runs(tmp_path):
    path = results_path(tmp_path)
    path.write_text(json.dumps({"schema": 0, "id": "x", "status": "ok"}) + "\n")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="incompatible"):
        run_cells(cells(1), tmp_path, suite="t", runner="test_launch:runner_ok", progress=False)
    assert path.read_bytes() == before and not (tmp_path / "logs").exists()


def test_bad_runner_path_is_an_error_before_spawning(tmp_path):
    with pytest.raises(LaunchError, match="no module named"):
        run_cells(cells(1), tmp_path, suite="t", runner="no_such_module:run", progress=False)
    with pytest.raises(LaunchError, match="module:function"):
        run_cells(cells(1), tmp_path, suite="t", runner="test_launch", progress=False)
    assert not results_path(tmp_path).exists()


def test_one_gpu_cell_at_a_time_per_device_while_cpu_cells_run_in_parallel(tmp_path):
    gpu = cells(11, 12, device="cuda")
    cpu = cells(21, 22, device="cpu")
    run_cells(gpu + cpu, tmp_path, suite="t", runner="test_launch:runner_log_times", jobs=4, gpus=1,
              progress=False)
    times = {int(p.stem): json.loads(p.read_text()) for p in (tmp_path / "times").iterdir()}
    (s1, e1, v1), (s2, e2, v2) = times[11], times[12]
    assert e1 <= s2 or e2 <= s1, "two GPU cells overlapped on one device"
    assert v1 == v2 == "0"  # each GPU cell is pinned to its device
    (c1s, c1e, c1v), (c2s, c2e, _) = times[21], times[22]
    assert c1s < c2e and c2s < c1e, "CPU cells should run in parallel with jobs=4"
    assert c1v is None or c1v == os.environ.get("CUDA_VISIBLE_DEVICES")
    # Output of the cell went to its log, which the record points at.
    rec = load_results(results_path(tmp_path)).records[0]
    assert "hello from the cell" in (tmp_path / rec["artifacts"]["log"]).read_text()


def test_auto_device_is_a_gpu_cell_only_when_a_gpu_exists(tmp_path):
    from lamda_bench.launch.local import is_gpu_cell

    auto, = cells(1)
    assert is_gpu_cell(auto, 1) and not is_gpu_cell(auto, 0)
    assert is_gpu_cell(cells(1, device="cuda")[0], 0)
    assert not is_gpu_cell(cells(1, device="cpu")[0], 2)


def test_cuda_device_count_honours_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cuda_device_count() == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert cuda_device_count() >= 0  # no driver here: 0, and no exception


def test_torn_line_from_a_killed_writer_is_reported_and_resume_continues(tmp_path):
    path = results_path(tmp_path)
    run_cells(cells(1), tmp_path, suite="t", runner="test_launch:runner_ok", progress=False)
    with open(path, "ab") as f:
        f.write(b'{"schema": 1, "id": "half')
    summary = run_cells(cells(1, 2), tmp_path, suite="t", runner="test_launch:runner_ok", progress=False)
    assert summary.skipped == 1 and len(summary.records) == 1
    assert any("incomplete record" in w for w in summary.warnings)
    assert [r["cell"]["r"] for r in load_results(path).records] == [1, 2]
    assert not (tmp_path / "logs").exists()  # silent cells leave no empty logs behind


def test_parent_never_imports_torch(tmp_path):
    import subprocess

    code = (
        "import sys; from lamda_bench.launch.local import run_cells; from lamda_bench.suite.cell import Cell;"
        "run_cells([Cell(workload='linear', method='lora', r=1, d_in=8, d_out=8)], sys.argv[1], suite='t',"
        " runner='test_launch:runner_ok', progress=False);"
        "print('torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.getcwd()])}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_sigterm_stops_a_run_like_ctrl_c_and_restores_the_handler(tmp_path):
    import threading

    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(2.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        summary = run_cells(cells(1, 20, 21, 22), tmp_path, suite="t", runner="test_launch:runner_slow",
                            progress=False)
    finally:
        timer.cancel()
    assert summary.interrupted
    assert signal.getsignal(signal.SIGTERM) is before
    recorded = load_results(results_path(tmp_path)).records
    assert len(recorded) == len(summary.records) < 4


def test_cuda_cells_without_a_gpu_still_get_a_record(tmp_path):
    summary = run_cells(cells(1, 2, device="cuda"), tmp_path, suite="t", runner="test_launch:runner_ok",
                        jobs=2, gpus=0, progress=False)
    assert len(summary.records) == 2 and not summary.interrupted


@pytest.mark.parametrize("jobs", [1, 2, 64])
def test_concurrent_cells_share_the_cores_for_their_thread_pools(tmp_path, monkeypatch, jobs):
    from lamda_bench.launch.local import cpu_threads_per_cell

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    want = max(1, cores // jobs)
    assert cpu_threads_per_cell(jobs) == want
    summary = run_cells(cells(1, 2), tmp_path, suite="t", runner="test_launch:runner_threads", jobs=jobs,
                        progress=False)
    assert [r["threads"] for r in summary.records] == [[str(want), str(want), want]] * 2


def test_a_thread_count_the_user_set_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    summary = run_cells(cells(1), tmp_path, suite="t", runner="test_launch:runner_threads", jobs=1, progress=False)
    assert summary.records[0]["threads"] == ["1", None, 1]
