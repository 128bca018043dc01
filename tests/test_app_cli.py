"""``lamda-bench app`` without the app extra: one line naming the install command, exit 2, and no
other verb imports gradio (runs with or without gradio installed)."""

from __future__ import annotations

import subprocess
import sys

from lamda_bench import cli
from lamda_bench.app import INSTALL_HINT


def test_app_without_gradio_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError, as when not installed
    assert cli.main(["app", str(tmp_path / "answers")]) == 2
    err = capsys.readouterr().err
    assert err == f"lamda-bench: error: {INSTALL_HINT}\n"
    assert "pip install -e '.[app]'" in err and not (tmp_path / "answers").exists()


def test_an_answer_dir_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(["app", str(tmp_path / "file" / "answers")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lamda-bench: error: ") and "OUT_DIR" in err and err.count("\n") == 1


def test_the_cli_does_not_import_gradio():
    code = "import sys; from lamda_bench import cli; cli.build_parser(); print('gradio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
