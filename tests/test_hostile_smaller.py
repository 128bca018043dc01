"""Issue 45's smaller items: a fit flag that would change nothing, the advise hint's levers, the
units an answer uses, and docs/trainer-configs.md's optimizer list."""

from __future__ import annotations

from pathlib import Path

from lamda_bench import cli

ROOT = Path(__file__).resolve().parent.parent


def test_paged_evictable_with_an_unpaged_optimizer_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["fit", "--workload", "tiny-llama", "--method", "lora", "--budget", "1GiB", "--seq", "16",
                     "--paged-evictable", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--paged-evictable: optimizer 'adamw' keeps no paged state" in lines[0], err
    assert not out.exists()


def test_the_advise_hint_lists_every_lever():
    from lamda_bench.fit.advise_output import pointer
    from lamda_bench.fit.levers import LEVERS

    text = pointer({"method": "lora", "axis": "batch", "next": 4})
    assert "optimizer" in LEVERS and all(name in text for name in LEVERS)


def test_units_past_the_note_are_defined_when_used():
    from lamda_bench.one_cell.output import _units_beyond

    assert _units_beyond(["peak 11.55 TiB", "512.00 EFLOP"]).endswith(
        "Also: TiB = 2^40 bytes, EFLOP = 10^18 floating-point operations.")
    assert "Also" not in _units_beyond(["peak 1.00 GiB", "2.00 TFLOP"])


def test_trainer_configs_doc_does_not_say_the_cell_knows_only_adamw_and_sgd():
    text = (ROOT / "docs" / "trainer-configs.md").read_text(encoding="utf-8")
    assert "known: adamw, sgd" not in text and "only `adamw` and `sgd`" not in text
