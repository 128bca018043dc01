"""Hostile cases against `run` (issue 19): two runners on one --out, side files, an --out that
cannot be written, and cells that must die with their runner.

Fake runners (no torch in the cell processes) are imported by path in the spawned cells, as
in test_launch.py. The kill tests run the real command in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lamda_bench import cli
from lamda_bench.results.files import load_records

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

SUITE = """
[suite]
name = "hostile"
[defaults]
workload = "linear"
d_in = 64
batch = 2
seq = 16
[[sweep]]
method = "lora"
r = [1, 2, 3]
"""


# ---- fake runners (run in the cell process) -----------------------------------------------

def runner_slow(cell, artifacts_dir):
    """Announces itself in artifacts_dir/started/<r>.<pid>, sleeps SLOW_S, then succeeds."""
    folder = Path(artifacts_dir) / "started"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{cell['r']}.{os.getpid()}").write_text("")
    time.sleep(float(os.environ.get("HOSTILE_SLOW_S", "1.5")))
    return {"status": "ok", "error": None, "cell": {**cell, "device": "cpu", "mode": "measure"},
            "memory": {"peak": cell["r"] * 2**20}}


def runner_counts(cell, artifacts_dir):
    """Succeeds at once and leaves a mark in artifacts_dir/ran/ (to prove it was or was not run)."""
    folder = Path(artifacts_dir) / "ran"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{cell['r']}.{os.getpid()}").write_text("")
    return {"status": "ok", "error": None, "cell": {**cell, "device": "cpu", "mode": "measure"}}


# ---- helpers ------------------------------------------------------------------------------

def write_suite(tmp_path, text=SUITE):
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(text))
    return path


def start_cli(*argv, slow_s="1.5"):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "HOSTILE_SLOW_S": slow_s,
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lamda_bench", *map(str, argv)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_terminal_dispositions)


def _terminal_dispositions():
    """The signal dispositions a command started from a terminal has: under nohup (or a shell
    without job control) SIGHUP / SIGINT are inherited ignored, and the runner would not die of
    the hangup this file sends it (seen: a CI run started with nohup failed the SIGHUP case)."""
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def started_pids(out: Path) -> list[int]:
    folder = out / "started"
    return [int(p.name.split(".")[1]) for p in folder.iterdir()] if folder.is_dir() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (its parent is gone or has not reaped it yet).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# ---- 1. two runners on one --out ------------------------------------------------------------

# The lock tests spawn their fake cells (--start spawn): the lock is the launcher's, whichever way
# its cells start, and the fork server's preload (torch, transformers, peft: ~10 s of CPU) would
# be paid only to run cells that import none of them. The default start is under test below
# (test_cell_dies_with_its_runner) and in test_launch.py / test_forkserver.py.
def test_second_runner_exits_2_naming_the_holder_and_nothing_is_duplicated(tmp_path, capsys):
    suite, out = write_suite(tmp_path), tmp_path / "out"
    first = start_cli("run", suite, "--out", out, "--runner", "test_hostile_run:runner_slow", "--no-progress",
                      "--start", "spawn")
    try:
        wait_for(lambda: started_pids(out), what="the first runner's first cell")
        code = cli.main(["run", str(suite), "--out", str(out), "--runner", "test_hostile_run:runner_counts",
                         "--no-progress"])
        _, err = capsys.readouterr()
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lamda-bench: error: "), err
        assert f"pid {first.pid}" in lines[0] and "--wait" in lines[0]
        assert not (out / "ran").exists()  # the second runner ran nothing
    finally:
        first.wait(timeout=120)
    assert first.returncode == 0, first.stderr.read()
    records = load_records(out / "results.jsonl")
    assert sorted(r["cell"]["r"] for r in records) == [1, 2, 3]  # each cell once


def test_wait_flag_waits_for_the_holder_then_resumes(tmp_path):
    suite, out = write_suite(tmp_path), tmp_path / "out"
    first = start_cli("run", suite, "--out", out, "--runner", "test_hostile_run:runner_slow", "--no-progress",
                      "--start", "spawn")
    wait_for(lambda: started_pids(out), what="the first runner's first cell")
    second = start_cli("run", suite, "--out", out, "--runner", "test_hostile_run:runner_counts", "--no-progress",
                       "--wait", "--start", "spawn")
    assert first.wait(timeout=120) == 0
    assert second.wait(timeout=120) == 0, second.stderr.read()
    assert "3 already recorded" in second.stdout.read()
    assert not (out / "ran").exists()
    assert len(load_records(out / "results.jsonl")) == 3


def test_side_files_use_a_temp_name_of_their_own(tmp_path):
    """The old fixed temp name (timelines/<id>.json.tmp) was shared by every process writing
    that cell; here it is occupied by a directory, and the write must still land."""
    from lamda_bench.runner.assemble import write_artifacts as _write_artifacts

    (tmp_path / "timelines" / "cell-x.json.tmp").mkdir(parents=True)
    (tmp_path / "detail" / "cell-x.json.tmp").mkdir(parents=True)
    res = SimpleNamespace(live=SimpleNamespace(timeline=[{"live_bytes": 1}]),
                          saved=SimpleNamespace(by_module={}),
                          flops=SimpleNamespace(by_module={}, by_op={}), calls=[])
    paths = _write_artifacts(tmp_path, "cell-x", res)
    timeline = json.loads((tmp_path / paths["timeline"]).read_text())
    assert timeline["events"] == [{"live_bytes": 1}]
    leftovers = [p.name for p in (tmp_path / "timelines").iterdir() if p.name.endswith(".tmp") and p.is_file()]
    assert leftovers == []


# ---- 3. an --out that cannot be written: exit 2, one line, nothing run ---------------------

def _run_refused(capsys, suite, out, *needles):
    code = cli.main(["run", str(suite), "--out", str(out), "--runner", "test_hostile_run:runner_counts",
                     "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamda-bench: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_out_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    _run_refused(capsys, write_suite(tmp_path), tmp_path / "afile" / "out", "is a file")


def test_out_where_nothing_can_be_created_is_refused(tmp_path, capsys):
    target = Path("/sys/lamda-bench-hostile-out")
    try:
        target.mkdir()
    except OSError:
        pass
    else:
        target.rmdir()
        pytest.skip("/sys is writable here")
    _run_refused(capsys, write_suite(tmp_path), target, "cannot create the output directory")


def test_results_file_that_is_a_directory_is_refused_before_running(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "results.jsonl").mkdir(parents=True)
    _run_refused(capsys, write_suite(tmp_path), out, "not a regular file")
    assert not (out / "ran").exists()


def test_read_only_results_file_is_refused_before_running(tmp_path, capsys, monkeypatch):
    """The writer's own open (O_WRONLY|O_APPEND) is tried first; EACCES/EROFS from it is
    simulated for the results file (this runs as root, which chmod cannot stop)."""
    out = tmp_path / "out"
    out.mkdir()
    results = out / "results.jsonl"
    results.write_text("")
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if Path(path) == results and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    _run_refused(capsys, write_suite(tmp_path), out, "results.jsonl: cannot be written", "nothing was run")
    assert not (out / "ran").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 444")
def test_read_only_results_file_really_read_only(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text("")
    (out / "results.jsonl").chmod(0o444)
    _run_refused(capsys, write_suite(tmp_path), out, "cannot be written")


# ---- 4. a cell dies with its runner -------------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks /proc")
@pytest.mark.parametrize("sig, start", [(signal.SIGKILL, "auto"), (signal.SIGHUP, "spawn")], ids=["9", "1"])
def test_cell_dies_with_its_runner(tmp_path, sig, start):
    """Neither signal lets the runner clean up: its cells must go by their lifeline, a cell forked
    from the fork server (the default start) and a spawned one alike."""
    suite, out = write_suite(tmp_path), tmp_path / "out"
    runner = start_cli("run", suite, "--out", out, "--runner", "test_hostile_run:runner_slow", "--no-progress",
                       "--start", start, slow_s="60")
    try:
        wait_for(lambda: started_pids(out), what="the cell process")
        cell_pid = started_pids(out)[0]
        os.kill(runner.pid, sig)
        runner.wait(timeout=30)
        wait_for(lambda: not alive(cell_pid), timeout=5, what=f"cell {cell_pid} to die with its runner")
    finally:
        if runner.poll() is None:
            os.kill(runner.pid, signal.SIGKILL)
        for pid in started_pids(out):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not (out / "results.jsonl").exists() or len(load_records(out / "results.jsonl")) == 0


def test_die_with_parent_arms_the_death_signal():
    """In a fresh child: prctl(PR_GET_PDEATHSIG) reads back SIGKILL after die_with_parent()."""
    code = textwrap.dedent("""
        import ctypes, os, signal
        from lamda_bench.launch.lifeline import die_with_parent
        how = die_with_parent(os.getppid())
        libc = ctypes.CDLL(None)
        sig = ctypes.c_int(0)
        libc.prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
        print(how, sig.value)
    """)
    if not sys.platform.startswith("linux"):
        pytest.skip("prctl is Linux only")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["prctl", str(int(signal.SIGKILL))], out.stderr
