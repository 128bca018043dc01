"""One base for bad input (errors.UserError) and one set of cell rules (Cell.validate)."""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil

import pytest

import lamda_bench
from lamda_bench.suite.cell import Cell, CellError
from lamda_bench.errors import UserError, one_line
from lamda_bench.suite.parse import SuiteError, parse_suite


def _package_error_classes():
    found = {}
    for info in pkgutil.walk_packages(lamda_bench.__path__, "lamda_bench."):
        if info.name.endswith(("_preload", "__main__")):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == info.name and issubclass(obj, ValueError):
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_value_error_of_the_package_is_a_user_error():
    classes = _package_error_classes()
    assert len(classes) >= 19  # SuiteError, CellError, MethodError, ... (guards the walk itself)
    assert [name for name, cls in classes.items() if not issubclass(cls, UserError)] == []


def test_one_line_keeps_a_user_errors_text_and_names_anything_else():
    assert one_line(CellError("cell r must be ...\nmore")) == "cell r must be ..."
    assert one_line(RuntimeError("boom\nstack")) == "RuntimeError: boom"
    assert one_line(ValueError("")) == "ValueError"


def test_cli_prints_any_user_error_in_one_line_exit_2(monkeypatch, capsys):
    from lamda_bench import cli
    from lamda_bench.safe_files import UnsafeFileError

    def boom(args):
        raise UnsafeFileError("x: not a regular file\nsecond line")

    class Parser:  # the parsed command raises a user error from deep inside
        def parse_args(self, argv):
            return argparse.Namespace(func=boom)

    monkeypatch.setattr(cli, "build_parser", Parser)
    assert cli.main(["list", "ci"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == "lamda-bench: error: x: not a regular file second line\n"


# ---- Cell.validate: the rules the suite parser and the runner share --------------------

GOOD = dict(workload="linear", method="lora", d_in=16, d_out=16, device="cpu", mode="estimate")


@pytest.mark.parametrize("change, key, words", [
    ({"r": 0}, "r", "cell r must be an integer >= 1, got 0"),
    ({"batch": True}, "batch", "cell batch must be an integer >= 1, got True"),
    ({"warmup": -1}, "warmup", "cell warmup must be an integer >= 0, got -1"),
    ({"steps": -1}, "steps", "cell steps must be an integer >= 0, got -1"),
    ({"device": "tpu"}, "device", "cell device 'tpu' is not one of"),
    ({"attn_implementation": "flash"}, "attn_implementation", "is not one of"),
    ({"world_size": 2}, "world_size", "needs parallel"),
])
def test_validate_names_the_first_bad_value(change, key, words):
    cell = Cell(**{**GOOD, **change})
    assert cell.problem()[0] == key and words in cell.problem()[1]
    with pytest.raises(CellError, match=words.split(",")[0].replace("'", ".")):
        cell.validate()


def test_zero_timed_steps_is_one_rule_for_suite_and_runner():
    """steps = 0 (no timed step; the instrumented step still runs) is accepted by both."""
    from lamda_bench.runner import run_cell

    Cell(**GOOD, steps=0).validate()
    suite = parse_suite("[[sweep]]\nworkload = 'linear'\nmethod = 'lora'\nd_in = 16\nsteps = 0\n"
                        "device = 'cpu'\nmode = 'estimate'\n", source="s.toml")
    assert suite.cells[0].steps == 0
    record = run_cell(suite.cells[0].to_dict())
    assert record["status"] == "ok", record["error"]
    assert record["time"]["steps_timed"] == 0


def test_suite_and_runner_refuse_the_same_bad_value():
    with pytest.raises(SuiteError, match="s.toml: \\[\\[sweep\\]\\] #1: warmup: -1 is less than 0"):
        parse_suite("[[sweep]]\nworkload = 'linear'\nmethod = 'lora'\nwarmup = -1\n", source="s.toml")
    from lamda_bench.runner import run_cell

    record = run_cell({**Cell(**GOOD).to_dict(), "warmup": -1})
    assert record["status"] == "error" and record["error"] == "cell warmup must be an integer >= 0, got -1"
