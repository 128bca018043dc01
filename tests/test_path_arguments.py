"""Every path argument of every verb is checked before any work: one line, exit 2, nothing run.

The case that prompted it: ``lamda-bench verify --gpu DIR`` with a DIR that did not exist ran
the claims suite's 36 cells before noticing. Each test gives one bad path and checks that the
command stopped at once: the exit code, a single ``lamda-bench: error:`` line naming the path,
and no output directory or record written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lamda_bench import cli, paths

ROOT = Path(__file__).resolve().parent.parent
CI_SUITE = ROOT / "suites" / "ci.toml"
MEASURED = ROOT / "reports" / "gpu" / "measured"


def one_line_exit_2(capsys, *argv, needle: str) -> None:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("lamda-bench: error:") and needle in lines[0], err


def test_verify_gpu_dir_missing_runs_nothing(tmp_path, capsys):
    out = tmp_path / "claims"
    one_line_exit_2(capsys, "verify", "--out", out, "--gpu", tmp_path / "nope", needle="--gpu: no such directory")
    assert not out.exists()


def test_verify_gpu_dir_without_results_runs_nothing(tmp_path, capsys):
    out = tmp_path / "claims"
    one_line_exit_2(capsys, "verify", "--out", out, "--gpu", tmp_path, needle="no results.jsonl")
    assert not out.exists()


def test_verify_out_whose_later_parts_cannot_be_written_runs_nothing(tmp_path, capsys):
    out = tmp_path / "claims"
    (out / "probes").parent.mkdir()
    (out / "probes").write_text("a file where the probes' folder goes")
    one_line_exit_2(capsys, "verify", "--out", out, needle="probes: --out: exists and is not a directory")
    (out / "probes").unlink()
    (out / "claims.md").mkdir()
    one_line_exit_2(capsys, "verify", "--out", out, needle="claims.md: --out: exists and is not a regular file")
    assert not (out / "results.jsonl").exists()


@pytest.mark.parametrize("dry", [[], ["--dry-run"]], ids=["run", "dry-run"])
def test_run_out_under_a_file(tmp_path, capsys, dry):
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_exit_2(capsys, "run", CI_SUITE, "--out", blocker / "out", *dry, needle="is a file, not a directory")


def test_fit_out_files_checked_before_any_probe(tmp_path, capsys):
    out = tmp_path / "fit"
    (out / "fit.json").mkdir(parents=True)
    one_line_exit_2(capsys, "fit", "--workload", "tiny-llama", "--method", "lora", "--budget", "1GiB",
                    "--seq", "64", "--out", out, needle="fit.json: --out: exists and is not a regular file")
    assert not (out / "results.jsonl").exists()


@pytest.mark.skipif(not (MEASURED / "results.jsonl").is_file(), reason="reports/gpu/measured not in this checkout")
def test_agreement_out_that_is_a_directory(tmp_path, capsys):
    one_line_exit_2(capsys, "agreement", MEASURED, MEASURED, "--out", tmp_path,
                    needle="--out: exists and is not a regular file")


def test_checks_create_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "c.md"
    assert paths.writable_file(target, "--out") == target
    assert paths.writable_dir(tmp_path / "x" / "y", "--out") == tmp_path / "x" / "y"
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_ancestor_is_named(tmp_path, monkeypatch):
    """A directory the user cannot write to (simulated: the tests run as root, whom chmod cannot stop)."""
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(paths.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    with pytest.raises(paths.PathArgumentError, match="locked is not writable"):
        paths.writable_dir(locked / "out", "--out")
    with pytest.raises(paths.PathArgumentError, match="directory is not writable"):
        paths.writable_dir(locked, "--out")
    assert paths.writable_dir(tmp_path / "free", "--out") == tmp_path / "free"
