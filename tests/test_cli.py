"""The lamda-bench command: bad input (one line, exit 2, nothing written), dry run, run with
a fake runner, list, Ctrl-C and resume.

Most tests call ``cli.main`` in-process (the same code path as the console script, minus
interpreter start-up); one bad-input test and the Ctrl-C test run the real command.
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

import pytest

from lamda_bench import cli
from lamda_bench.results.files import load_records

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

GOOD = """
[suite]
name = "tiny"
description = "fake-runner suite"
[defaults]
workload = "linear"
d_in = 64
batch = 2
seq = 16
[[sweep]]
method = ["lora", "lamda"]
r = [1, 2]
"""


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lamda-bench: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "text, needles",
    [
        (GOOD + "r = [", ["malformed TOML", "line"]),
        (GOOD + "rr = 4", ["rr: unknown key (did you mean 'r'?)"]),
        (GOOD + "batch = 'two'", ["[[sweep]] #1: batch: expected an integer"]),
        (GOOD.replace('"lamda"]', '"lamdda"]'), ["method: unknown method 'lamdda' (did you mean 'lamda'?)"]),
        (GOOD.replace('"linear"', '"lineer"'), ["workload: unknown workload 'lineer' (did you mean 'linear'?)"]),
        (GOOD + "seq = []", ["seq: empty list"]),
        (GOOD.replace("r = [1, 2]", "r = [1, 65]"), ["r: r = 65 exceeds min(d_in, d_out) = 64"]),
        (GOOD + "dtype = 'fp8'", ["dtype: 'fp8' is not one of"]),
    ],
)
def test_bad_suite_one_line_exit_2_nothing_written(tmp_path, capsys, text, needles):
    suite = write(tmp_path, text)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "run", suite, "--out", out, "--runner", "test_launch:runner_ok")
    assert code == 2
    assert_one_line_error(err, str(suite), *needles)
    assert not out.exists()


def test_missing_suite_file(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", tmp_path / "nope.toml", "--out", tmp_path / "out")
    assert code == 2
    assert_one_line_error(err, "nope.toml", "no such suite file")
    assert not (tmp_path / "out").exists()


def test_incompatible_results_file_one_line_exit_2_nothing_written(tmp_path, capsys):
    suite = write(tmp_path, GOOD)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text(json.dumps({"schema": 7, "id": "x", "status": "ok"}) + "\n")
    before = sorted(p.name for p in out.iterdir())
    for extra in ([], ["--dry-run"]):
        code, _, err = run_cli(capsys, "run", suite, "--out", out, "--runner", "test_launch:runner_ok", *extra)
        assert code == 2
        assert_one_line_error(err, "results.jsonl", "schema", "incompatible")
    assert sorted(p.name for p in out.iterdir()) == before


def test_bad_jobs_and_runner(tmp_path, capsys):
    suite = write(tmp_path, GOOD)
    code, _, err = run_cli(capsys, "run", suite, "--out", tmp_path / "o", "--jobs", "0")
    assert code == 2
    assert_one_line_error(err, "--jobs")
    code, _, err = run_cli(capsys, "run", suite, "--out", tmp_path / "o", "--runner", "nope_mod:f")
    assert code == 2
    assert_one_line_error(err, "nope_mod")
    assert not (tmp_path / "o").exists()


def test_bad_input_through_the_real_command(tmp_path):
    suite = write(tmp_path, GOOD + "bacth = 4")
    proc = subprocess.run([sys.executable, "-m", "lamda_bench", "run", str(suite), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, str(suite), "bacth: unknown key (did you mean 'batch'?)")
    assert not (tmp_path / "o").exists()


def test_help_and_flag_errors_answer_without_importing_torch():
    """The parser and its one-line errors need no torch (was ~2 s of import before `--help` printed)."""
    code = ("import sys; from lamda_bench.cli import main\n"
            "for argv in (['--help'], ['fit', '--help'], ['run']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "usage: lamda-bench" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "False", proc.stderr


def test_dry_run_lists_cells_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = write(tmp_path, GOOD)
    code, out, err = run_cli(capsys, "run", suite, "--dry-run")
    assert code == 0
    assert "4 cells planned, 4 to run into reports/tiny/results.jsonl" in out
    assert out.count("linear-lora-r") == 2 and out.count("linear-lamda-r") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_dry_run_names_the_keys_that_tell_two_cells_apart(tmp_path, capsys):
    # objective and offload_activations have no column: without them in the row, the two cells read alike
    text = ('[suite]\nname = "keys"\n[[sweep]]\nworkload = "tiny-llama"\nmethod = "lora"\n'
            'objective = ["sft", "dpo"]\noffload_activations = true\n')
    code, out, err = run_cli(capsys, "run", write(tmp_path, text), "--out", tmp_path / "o", "--dry-run")
    assert code == 0, err
    rows = [line for line in out.splitlines() if "tiny-llama-lora" in line]
    assert len(rows) == 2 and "objective=dpo" in rows[1] and "objective" not in rows[0]
    assert all("offload_activations=True" in row and "timeout_s" not in row for row in rows)


def test_run_writes_records_prints_summary_and_resumes(tmp_path, capsys):
    suite = write(tmp_path, GOOD)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "run", suite, "--out", out, "--jobs", "2", "--no-progress",
                                "--runner", "test_launch:runner_ok")
    assert code == 0, err
    records = load_records(out / "results.jsonl")
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    # Summary: human units that name their unit (runner_ok: peak = r GiB, trainable = 1000 r).
    assert "2.00 GiB" in stdout and "2,000" in stdout and "GiB = 2^30 bytes" in stdout
    assert "4 cells, 0 already recorded, 4 run now (4 ok)" in stdout
    # Dry run now shows them as recorded; a second run skips all.
    code, stdout, _ = run_cli(capsys, "run", suite, "--out", out, "--dry-run")
    assert "4 cells planned, 0 to run" in stdout
    code, stdout, _ = run_cli(capsys, "run", suite, "--out", out, "--no-progress", "--runner", "test_launch:runner_ok")
    assert code == 0 and "4 already recorded, 0 run now" in stdout
    assert len(load_records(out / "results.jsonl")) == 4


def test_run_exit_1_when_cells_fail(tmp_path, capsys):
    suite = write(tmp_path, GOOD)  # runner_by_r: r = 2 raises
    code, stdout, err = run_cli(capsys, "run", suite, "--out", tmp_path / "o", "--no-progress",
                                "--runner", "test_launch:runner_by_r")
    assert code == 1
    assert "lamda-bench: error: linear-lora-r2-" in err and "runner raised RuntimeError: boom" in err
    assert "2 error, 2 ok" in stdout


def test_list_shows_every_method_workload_and_suite(capsys):
    from lamda_bench.methods import all_methods
    from lamda_bench.model.workloads import WORKLOADS

    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for name, method in all_methods().items():
        assert f"\n{name} " in out, name
        for option in method.options:
            assert option in out
    for name in WORKLOADS:
        assert f"\n{name} " in out, name
    for suite in ("ci", "layers", "paper", "llama7b"):
        assert f"suites/{suite}.toml" in out
    assert "invalid" not in out


def test_report_on_a_missing_directory_is_one_line(capsys):
    code, _, err = run_cli(capsys, "report", "/nonexistent/dir")
    assert code == 2 and err.startswith("lamda-bench")


def test_ctrl_c_keeps_finished_cells_and_the_next_run_resumes(tmp_path, capsys):
    suite = write(tmp_path, GOOD.replace("r = [1, 2]", "r = [1, 2, 3, 4, 5, 6]"))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}
    # Spawned fake cells: the fork server's preload (~10 s of CPU) buys nothing for cells that
    # import no torch; stopping forked cells on an interrupt is test_launch.py's SIGTERM test.
    proc = subprocess.Popen(
        [sys.executable, "-m", "lamda_bench", "run", str(suite), "--out", str(out), "--no-progress",
         "--runner", "test_launch:runner_slow", "--start", "spawn"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell without job control starts background jobs with SIGINT ignored, and Python
        # keeps an inherited SIG_IGN: give the CLI the disposition a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = out / "results.jsonl"
    # The wait ends at the first record; the deadline only bounds a run that never writes one
    # (90 s was passed on a 2-core machine shared by five busy processes, and the test failed).
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (results.exists() and results.read_bytes().count(b"\n") >= 1):
        if proc.poll() is not None:
            break  # the run ended on its own: the assertions below say how
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "resumes" in err
    kept = load_records(results)
    assert 1 <= len(kept) < 12
    assert results.read_bytes().endswith(b"\n")
    # No orphaned cell processes keep writing after the parent is gone.
    time.sleep(1.0)
    assert len(load_records(results)) == len(kept)

    code, stdout, _ = run_cli(capsys, "run", suite, "--out", out, "--no-progress", "--jobs", "2",
                              "--runner", "test_launch:runner_ok")
    assert code == 0
    records = load_records(results)
    assert len(records) == 12 and len({r["id"] for r in records}) == 12
    assert f"{len(kept)} already recorded" in stdout
