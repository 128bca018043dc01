"""launch_ray.py on a local Ray instance with 2 CPUs (one instance for the module).

The runner_* functions are imported by path ("test_launch_ray:runner_by_r") in the Ray
workers: the local instance hands them the driver's sys.path (launch_ray.connect).
Tests that need Ray are skipped, with the install command, where it is missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import signal
import sys
import time

import pytest

from lamda_bench.suite.cell import Cell
from lamda_bench.cli import main
from lamda_bench.launch.local import LaunchError, run_cells
from lamda_bench.results.files import load_results, results_path

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed: pip install 'lamda-bench[ray]'")

# ---- fake runners (run in the Ray worker) ---------------------------------------------------


def runner_ok(cell, artifacts_dir):
    print("hello from", cell["r"])  # goes to the cell's log
    return {"status": "ok", "error": None, "cell": cell, "params": {"trainable": cell["r"] * 1000},
            "pid": os.getpid(), "artifacts_dir": artifacts_dir}


def runner_by_r(cell, artifacts_dir):
    """r picks the behaviour: 1 ok, 2 raises, 4 SIGKILLs its own process mid-run, 5 hangs."""
    r = cell["r"]
    if r == 2:
        raise RuntimeError("boom\nsecond line")
    if r == 4:
        print("about to die", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if r == 5:
        time.sleep(60)
    return runner_ok(cell, artifacts_dir)


def runner_slow(cell, artifacts_dir):
    time.sleep(1.0 + 0.1 * cell["r"])
    return runner_ok(cell, artifacts_dir)


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs for the whole module, started the launcher's way."""
    if not HAVE_RAY:
        pytest.skip("ray is not installed: pip install 'lamda-bench[ray]'")
    import ray

    from lamda_bench.launch.ray import connect

    started = connect(None, jobs=2)
    assert ray.cluster_resources().get("CPU") == 2
    yield ray
    if started:
        ray.shutdown()


def cells(*rs, **kw):
    return [Cell(workload="linear", method="lora", r=r, d_in=64, d_out=64, **kw) for r in rs]


def by_r(records):
    return {r["cell"]["r"]: r for r in records}


# ---- tests -------------------------------------------------------------------------------


# Without Ray (these run first, before the module's Ray instance starts).


def test_missing_ray_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    from lamda_bench.launch.ray import import_ray, run_cells_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(LaunchError, match=r"pip install 'lamda-bench\[ray\]'"):
        import_ray()
    with pytest.raises(LaunchError, match="not installed"):
        run_cells_ray(cells(1), tmp_path, suite="t", runner="test_launch_ray:runner_ok", progress=False)
    suite = tmp_path / "s.toml"
    suite.write_text('[suite]\nname = "x"\n[[sweep]]\nworkload = "linear"\nmethod = "lora"\nr = 4\n')
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--launcher", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'lamda-bench[ray]'" in err
    assert not results_path(tmp_path / "o").exists()


def test_address_without_the_ray_launcher_is_refused(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text('[suite]\nname = "x"\n[[sweep]]\nworkload = "linear"\nmethod = "lora"\nr = 4\n')
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--address", "auto"]) == 2
    assert "--address is for --launcher ray" in capsys.readouterr().err
    assert not results_path(tmp_path / "o").exists()


def test_an_address_where_nothing_listens_fails_in_one_line_not_after_minutes(tmp_path, capsys):
    pytest.importorskip("ray")
    suite = tmp_path / "s.toml"
    suite.write_text('[suite]\nname = "x"\n[[sweep]]\nworkload = "linear"\nmethod = "lora"\nr = 4\n')
    out = tmp_path / "o"
    assert main(["run", str(suite), "--out", str(out), "--launcher", "ray", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--address 127.0.0.1:1: nothing answers at 127.0.0.1:1" in err
    assert not results_path(out).exists()


# With a local Ray instance.


@needs_ray
def test_killed_raising_and_hung_cells_are_recorded_and_the_sweep_goes_on(local_ray, tmp_path):
    from lamda_bench.launch.ray import run_cells_ray

    # Only the hung cell 5 gets the short timeout: on a loaded machine a worker's start and
    # imports alone can take seconds, and the other cells must not time out.
    todo = (cells(1, 2, 4, timeout_s=120.0) + cells(5, timeout_s=3.0)
            + cells(6, device="cuda"))  # no GPU here: runs on a CPU
    t0 = time.monotonic()
    summary = run_cells_ray(todo, tmp_path, suite="t", runner="test_launch_ray:runner_by_r", jobs=2,
                            progress=False)
    assert time.monotonic() - t0 < 120
    recs = by_r(load_results(results_path(tmp_path)).records)
    assert len(summary.records) == 5 and set(recs) == {1, 2, 4, 5, 6}
    assert recs[1]["status"] == "ok" and recs[1]["params"]["trainable"] == 1000
    assert recs[6]["status"] == "ok"
    assert recs[2]["status"] == "error" and recs[2]["error"] == "runner raised RuntimeError: boom"
    assert recs[4]["status"] == "error" and "worker process died without a result" in recs[4]["error"]
    assert recs[5]["status"] == "timeout" and "3 s" in recs[5]["error"]
    # One worker process per cell: the two ok cells ran in different processes.
    assert recs[1]["pid"] != recs[6]["pid"]
    written = {r["id"]: r for r in load_results(results_path(tmp_path)).records}
    for cell in todo:
        rec = written[cell.id]
        assert rec["suite"] == "t" and rec["schema"] == 1 and rec["env"]["harness"]
        assert rec["launch"]["launcher"] == "ray" and rec["launch"]["node"]
        assert rec["launch"]["wall_s"] >= 0 and rec["started_at"].endswith("Z")
    # The output dir is on this node: logs and artifacts go there, as with the local launcher.
    assert recs[1]["artifacts_dir"] == str(tmp_path.absolute())
    assert "boom" in (tmp_path / recs[2]["artifacts"]["log"]).read_text()
    assert "about to die" in (tmp_path / recs[4]["artifacts"]["log"]).read_text()
    assert not [p for p in (tmp_path / "logs").iterdir() if p.name.startswith(".")]  # token removed

    # Resume: nothing re-run, nothing duplicated; --retry-failed re-runs error and timeout only.
    again = run_cells_ray(todo, tmp_path, suite="t", runner="test_launch_ray:runner_by_r", jobs=2,
                          progress=False)
    assert again.skipped == 5 and again.records == []
    # The retry's cell 5 no longer hangs: it gets the ids' same cells with a generous timeout
    # (timeout_s is not part of an id), so a slow worker start on a loaded machine cannot time it out.
    relaxed = [dataclasses.replace(c, timeout_s=120.0) for c in todo]
    retry = run_cells_ray(relaxed, tmp_path, suite="t", runner="test_launch_ray:runner_ok", jobs=2,
                          retry_failed=True, progress=False)
    assert retry.skipped == 2 and sorted(r["cell"]["r"] for r in retry.records) == [2, 4, 5]
    assert {r["status"] for r in retry.records} == {"ok"}
    assert len(load_results(results_path(tmp_path)).records) == 8  # appended, never rewritten


@needs_ray
def test_records_match_the_local_launcher_in_estimate_mode(local_ray, tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text(
        # One cell, LaMDA's (its own adapter layer, so the saved-activation check below means something):
        # each Ray worker pays the torch/transformers/peft imports (~9 s of CPU); two Ray cells at once are
        # test_killed_raising_and_hung_cells_are_recorded_and_the_sweep_goes_on's.
        '[suite]\nname = "cmp"\n[[sweep]]\nworkload = "linear"\nd_in = 64\nmethod = "lamda"\n'
        'r = 4\nbatch = 1\nseq = 16\ndevice = "cpu"\nmode = "estimate"\n')
    from lamda_bench.suite.parse import load_suite

    todo = list(load_suite(suite).cells)
    run_cells(todo, tmp_path / "local", suite="cmp", jobs=2, progress=False)
    code = main(["run", str(suite), "--out", str(tmp_path / "ray"), "--launcher", "ray", "--jobs", "2",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    local = {r["id"]: r for r in load_results(results_path(tmp_path / "local")).records}
    ray_ = {r["id"]: r for r in load_results(results_path(tmp_path / "ray")).records}
    assert set(local) == set(ray_) == {c.id for c in todo}
    for cell_id, rec in ray_.items():
        assert rec["status"] == local[cell_id]["status"] == "ok", rec["error"]
        assert rec["launch"]["launcher"] == "ray" and local[cell_id]["launch"]["launcher"] == "local"
        for part in ("params", "memory", "flops", "cell"):
            assert rec[part] == local[cell_id][part], part
        assert rec["memory"]["saved_activations_adapter"] > 0


@needs_ray
def test_worker_without_the_output_dir_sends_its_log_back_and_writes_no_artifacts(local_ray, tmp_path):
    from lamda_bench.launch.ray import cell_task

    (tmp_path / "logs").mkdir()  # visible here, but the token names no file: "another node"
    task = local_ray.remote(max_calls=1, max_retries=0, num_cpus=1)(cell_task)
    gen = task.remote("test_launch_ray:runner_ok", cells(3)[0].to_dict(), "c3", str(tmp_path), "no-token")
    marker = local_ray.get(next(gen))
    assert marker["shared"] is False and marker["node"] and marker["pid"]
    record, tail = local_ray.get(next(gen))
    assert record["status"] == "ok" and record["artifacts_dir"] is None
    assert "hello from 3" in tail and not os.path.exists(marker["log"])  # temp log cleaned up


@needs_ray
def test_sigterm_stops_the_sweep_keeps_what_finished_and_the_next_run_resumes(local_ray, tmp_path):
    import threading

    from lamda_bench.launch.ray import run_cells_ray

    before = signal.getsignal(signal.SIGTERM)
    todo = cells(1, 2, 3, 4, 5, 6)
    timer = threading.Timer(2.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        summary = run_cells_ray(todo, tmp_path, suite="t", runner="test_launch_ray:runner_slow", jobs=2,
                                progress=False)
    finally:
        timer.cancel()
    assert summary.interrupted and signal.getsignal(signal.SIGTERM) is before
    recorded = load_results(results_path(tmp_path)).records
    assert len(recorded) == len(summary.records) < 6
    rest = run_cells_ray(todo, tmp_path, suite="t", runner="test_launch_ray:runner_ok", jobs=2, progress=False)
    assert rest.skipped == len(recorded) and len(rest.records) == 6 - len(recorded)
    ids = [r["id"] for r in load_results(results_path(tmp_path)).records]
    assert sorted(ids) == sorted(c.id for c in todo)  # each cell once: nothing lost, nothing twice
