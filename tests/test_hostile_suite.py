"""Hostile suites and command lines (issue 19): each refused in one line with exit 2 and
nothing written, never silently accepted; files a suite names are bounded; text from a suite
or a record never reaches the terminal as control sequences.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from lamda_bench import cli
from lamda_bench.suite.parse import SuiteError, load_suite, parse_override

BASE = """
[suite]
name = "hostile"
[defaults]
workload = "linear"
d_in = 64
batch = 2
seq = 16
[[sweep]]
method = ["lora", "lamda"]
r = [4, 8]
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def refused(tmp_path, capsys, suite: Path, *needles, extra=()):
    out = tmp_path / "out"
    code = cli.main(["run", str(suite), "--out", str(out), "--runner", "test_launch:runner_ok", *extra])
    _, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamda-bench: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


# ---- 7. validation gaps -----------------------------------------------------------------------

@pytest.mark.parametrize("addition, needles", [
    ('exclude = [{method = "ful"}]', ["exclude.method", "unknown method 'ful'"]),
    ('exclude = [{r = "8"}]', ["exclude.r", "expected an integer"]),
    ('exclude = [{freeze_fraction = "a"}]', ["exclude.freeze_fraction", "expected"]),
    ("freeze_fraction = true", ["freeze_fraction", "expected float or int, got True"]),
    ("dropout = true", ["dropout", "got True"]),
    ("batch = 18446744073709551617", ["batch", "does not fit in 64 bits"]),
    ("alpha = inf", ["alpha", "not a finite number"]),
    ("lr = nan", ["lr", "not a finite number"]),
    ("timeout_s = -inf", ["timeout_s", "not a finite number"]),
    ("dropout = inf", ["dropout", "not a finite number"]),
    ("seed = 99999999999999999999999", ["seed", "64 bits"]),
])
def test_bad_values_in_a_sweep(tmp_path, capsys, addition, needles):
    refused(tmp_path, capsys, write(tmp_path, BASE + addition), *needles)


def test_suite_name_with_a_trailing_newline(tmp_path, capsys):
    refused(tmp_path, capsys, write(tmp_path, BASE.replace('name = "hostile"', 'name = "abc\\n"')),
            "[suite]: name", "must be a plain name")


def test_deeply_nested_arrays(tmp_path, capsys):
    refused(tmp_path, capsys, write(tmp_path, BASE + "seq = " + "[" * 5000 + "]" * 5000), "nested more than")


def test_deeply_nested_override():
    with pytest.raises(SuiteError, match="nested more than"):
        parse_override("r=" + "[" * 5000 + "]" * 5000)


def test_empty_sweep_array(tmp_path, capsys):
    text = 'sweep = []\n[suite]\nname = "x"\n'  # no [[sweep]] table: an empty array of them
    refused(tmp_path, capsys, write(tmp_path, text), "sweep", "empty")


def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + textwrap.dedent(BASE).encode())
    assert len(load_suite(path).cells) == 4


@pytest.mark.parametrize("override", ["r=4\nx=1", "r=4\rx=1", "mode=estimate\n"])
def test_set_with_a_line_break_is_refused(tmp_path, capsys, override):
    refused(tmp_path, capsys, write(tmp_path, BASE), "--set", "line break", extra=["--set", override])


def test_exclude_that_matches_still_works(tmp_path):
    suite = load_suite(write(tmp_path, BASE + 'exclude = [{method = "lamda", r = 8}]'))
    assert len(suite.cells) == 3


# ---- 5. files a suite names ---------------------------------------------------------------------

LAMDA_PP = """
[suite]
name = "pp"
[[sweep]]
workload = "tiny-llama"
method = "lamda++"
allocation = "{path}"
"""


@pytest.mark.parametrize("target, needles", [
    ("/dev/zero", ["is a character device", "only regular files"]),
    ("/dev/null", ["is a character device"]),
    ("{tmp}", ["is a directory"]),
    ("{tmp}/fifo", ["is a FIFO"]),
    ("{tmp}/big.json", ["larger than"]),
    ("{tmp}/missing.json", ["no such file"]),
])
def test_files_a_suite_names_are_checked_at_load(tmp_path, capsys, target, needles):
    os.mkfifo(tmp_path / "fifo")
    with open(tmp_path / "big.json", "wb") as f:
        f.truncate(64 * 2**20)  # sparse: no disk used
    path = target.format(tmp=tmp_path)
    refused(tmp_path, capsys, write(tmp_path, LAMDA_PP.format(path=path)), "allocation", path, *needles)


def test_allocation_read_at_run_time_is_bounded(tmp_path):
    from lamda_bench.methods.base import MethodError
    from lamda_bench.methods.lamda.plusplus import Allocation

    with pytest.raises(MethodError, match="is a character device"):
        Allocation.load("/dev/zero")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(MethodError, match="is a FIFO"):
        Allocation.load(tmp_path / "fifo")  # without a writer: refused, not blocked


@pytest.mark.parametrize("target, needle", [("/dev/zero", "character device"), ("{tmp}/fifo", "FIFO")])
def test_suite_file_itself_is_bounded(tmp_path, capsys, target, needle):
    os.mkfifo(tmp_path / "fifo")
    out = tmp_path / "out"
    code = cli.main(["run", target.format(tmp=tmp_path), "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


# ---- 6. terminal escapes ----------------------------------------------------------------------

ESC = "\x1b]8;;http://evil/\x07click\x1b]8;;\x07\x1b[2J"


def test_dry_run_prints_no_control_sequences(tmp_path, capsys):
    text = BASE.replace('name = "hostile"', f'name = "hostile"\ndescription = "{json.dumps(ESC)[1:-1]}"')
    text = text.replace('workload = "linear"', 'workload = "linear"\ntargets = "' + json.dumps(ESC)[1:-1] + '"')
    code = cli.main(["run", str(write(tmp_path, text)), "--out", str(tmp_path / "out"), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]8;;http://evil/\\x07click" in out  # shown, not executed


def test_errors_and_summary_print_no_control_sequences(tmp_path, capsys):
    suite = write(tmp_path, BASE)
    out = tmp_path / "out"
    out.mkdir()
    cells = load_suite(suite).cells
    recs = []
    for c in cells:
        recs.append(json.dumps({"schema": 1, "id": c.id, "suite": "hostile", "status": "error",
                                "error": "boom " + ESC, "cell": {**c.to_dict(), "workload": ESC, "method": ESC}}))
    (out / "results.jsonl").write_text("\n".join(recs) + "\n" + "\x1b[31mgarbage\n")
    code = cli.main(["run", str(suite), "--out", str(out), "--runner", "test_launch:runner_ok"])
    stdout, err = capsys.readouterr()
    assert code == 1
    assert "\x1b" not in stdout and "\x1b" not in err and "\x07" not in err
    assert "boom \\x1b]8;;" in err
    assert cli.main(["compare", str(out), str(out)]) == 0
    stdout, err = capsys.readouterr()
    # shown escaped (compare's Markdown escapes the bracket as well: \x1b\]8;;)
    assert "\x1b" not in stdout + err and "\\x1b\\]8;;" in stdout


def test_unknown_method_with_escapes_is_one_safe_line(tmp_path, capsys):
    line = refused(tmp_path, capsys, write(tmp_path, BASE.replace('"lamda"]', '"\\u001b[31mx"]')),
                   "unknown method")
    assert "\x1b" not in line


# ---- device = "cuda" on a CPU-only torch -------------------------------------------------------

def test_cuda_cell_on_cpu_only_torch_records_one_clear_line():
    import torch

    from lamda_bench.runner import run_cell

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cell = {"workload": "linear", "method": "lora", "r": 2, "d_in": 16, "d_out": 16, "batch": 1, "seq": 4,
            "device": "cuda", "dtype": "fp32"}
    rec = run_cell(cell, None)
    assert rec["status"] == "error"
    assert "device 'cuda'" in rec["error"] and "use device = 'cpu'" in rec["error"], rec["error"]
    assert "AssertionError" not in rec["error"] and "\n" not in rec["error"]
