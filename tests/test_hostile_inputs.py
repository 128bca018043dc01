"""Hostile and careless input, round three (issue 45): the trainer-config file reader and the
cells that the suite and the model's config already rule out. Each bad input: one line, exit 2,
nothing written under --out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lamda_bench import cli
from lamda_bench.trainer_config import document


def refused(capsys, argv: list[str], out: Path, *needles: str) -> str:
    code = cli.main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, (code, err, captured.out[-500:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamda-bench: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    return lines[0]


def from_file(tmp_path: Path, capsys, name: str, text: str, *needles: str, extra=()) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    return refused(capsys, ["estimate", "--from", str(path), "--out", str(out), "--no-progress", *extra], out,
                   *needles)


HEAD = "base_model: tiny-llama\nsequence_len: 32\nadapter: lora\n"


def billion_laughs() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return HEAD + "\n".join(lines) + "\n"


# ---- 1, 2. bounded time and memory: aliases, nesting, numbers --------------------------------

def test_billion_laughs_is_refused_quickly(tmp_path, capsys):
    text = billion_laughs()
    assert len(text) < 1024
    start = time.monotonic()
    from_file(tmp_path, capsys, "laughs.yml", text, "laughs.yml", "aliases expand to more than 100,000 values")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("name, text, needle", [
    ("self.yml", HEAD + "x: &x [1, *x]\n", "an alias refers to its own anchor (line 4)"),
    ("deep.yml", HEAD + "x: " + "[" * 5000 + "]" * 5000 + "\n", f"nested more than {document.MAX_DEPTH} levels"),
    ("deep.json", '{"base_model": "tiny-llama", "x": ' + "[" * 5000 + "]" * 5000 + "}",
     f"nested more than {document.MAX_DEPTH} levels"),
    ("deep-alias.yml", HEAD + "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 40)),
     "once its aliases are expanded"),
    ("bigint.yml", HEAD + "lora_r: " + "9" * 5000 + "\n", "a YAML value that cannot be read"),
    ("bigint.json", '{"base_model": "tiny-llama", "lora_r": ' + "9" * 5000 + "}", "a YAML value that cannot be read"),
    ("baddate.yml", HEAD + "seed: 2024-13-45\n", "a YAML value that cannot be read"),
])
def test_unbounded_documents_are_one_line(tmp_path, capsys, name, text, needle):
    from_file(tmp_path, capsys, name, text, name, needle)


def test_the_size_limit(tmp_path, capsys):
    text = HEAD + "# " + "x" * document.MAX_BYTES + "\n"
    from_file(tmp_path, capsys, "big.yml", text, f"larger than the {document.MAX_BYTES}-byte limit")


# ---- 5. keys -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, needle", [
    ("1: a\nnull: b\n", "key 1 is a number, not a name"),
    ("null: b\n", "key None is a null, not a name"),
    ("true: c\n", "key True is a boolean, not a name"),
    ("2024-01-01: d\n", "key datetime.date(2024, 1, 1) is a date, not a name"),
    (HEAD + "lora_r: 8\nlora_r: 16\n", "key lora_r is given twice in one mapping (line 5)"),
    ("", "is empty"),
    ("- a\n- b\n", "holds a list, not a mapping"),
])
def test_keys_that_are_not_names_or_given_twice(tmp_path, capsys, text, needle):
    from_file(tmp_path, capsys, "k.yml", text, needle)


def test_duplicate_json_key(tmp_path, capsys):
    from_file(tmp_path, capsys, "d.json", '{"base_model": "tiny-llama", "lora_r": 8, "lora_r": 16}',
              "key lora_r is given twice in one object")


def test_a_merge_key_is_not_a_duplicate(tmp_path):
    path = tmp_path / "m.yml"
    path.write_text("base: &b {lora_r: 8}\nother:\n  <<: *b\n  lora_r: 16\n", encoding="utf-8")
    assert document.read_document(path)["other"] == {"lora_r": 16}


def test_a_homoglyph_key_is_shown_escaped(tmp_path, capsys):
    out = tmp_path / "out"
    line = refused(capsys, ["estimate", "--workload", "tiny-llama", "--method", "lora", "--set", "l\u043era_r=8",
                            "--out", str(out)], out, "'l\\u043era_r'")
    assert "\u043e" not in line


# ---- smaller: the file's own key ----------------------------------------------------------

def test_errors_from_a_file_name_the_files_key(tmp_path, capsys):
    line = from_file(tmp_path, capsys, "r.yml", HEAD + 'lora_r: "8"\n', "r.yml: lora_r: expected an integer, got '8'")
    assert "[[sweep]]" not in line


# ---- caught too late: refused while parsing, nothing written -----------------------------------

@pytest.mark.parametrize("flags, needles", [
    (["--method", "lamda", "--optimizer", "adamw_bnb_8bit"], ["--optimizer", "LaMDA's freezing"]),
    (["--method", "lora", "--images", "2"], ["--images", "image-text workloads only"]),
    (["--method", "lora", "--targets", "experts"], ["--targets", "has none"]),
    (["--method", "full", "--quant", "nf4"], ["--quant", "full fine-tuning trains the base weights"]),
    (["--method", "lora", "--world-size", "2", "--parallel", "fsdp2", "--optimizer", "paged_adamw_8bit"],
     ["--optimizer", "parallel 'fsdp2'"]),
    (["--method", "lora", "--targets", "foo_proj"], ["--targets", "unknown target module(s) 'foo_proj'"]),
    (["--method", "lora", "--seq", "1000000000"], ["--seq", "max_position_embeddings 512"]),
])
def test_estimate_refuses_what_the_config_rules_out(tmp_path, capsys, flags, needles):
    out = tmp_path / "out"
    refused(capsys, ["estimate", "--workload", "tiny-llama", *flags, "--out", str(out), "--no-progress"], out,
            *needles)


def test_run_refuses_lamda_with_an_8bit_optimizer_before_any_cell(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text('[[sweep]]\nworkload = "tiny-llama"\nmethod = ["lora", "lamda"]\noptimizer = "adamw_bnb_8bit"\n'
                     'mode = "estimate"\nseq = 16\n', encoding="utf-8")
    out = tmp_path / "out"
    refused(capsys, ["run", str(suite), "--out", str(out)], out, "[[sweep]] #1: optimizer", "LaMDA's freezing")


def test_targets_found_only_past_two_blocks_are_accepted():
    """The quick two-block check must not refuse a name that a deeper stack has."""
    from lamda_bench.suite.model_checks import problem
    from lamda_bench.methods import get_method
    from lamda_bench.suite.cell import Cell

    cell = Cell(workload="tiny-llama", method="lora", targets=("q_proj", "layers.3.self_attn.v_proj"), layers=4)
    assert problem(cell, get_method("lora")) is None
    shallow = Cell(workload="tiny-llama", method="lora", targets=("layers.3.self_attn.v_proj",), layers=2)
    assert problem(shallow, get_method("lora"))[0] == "targets"


def test_json_records_nothing_for_a_valid_reader_result(tmp_path):
    """The bounded reader still reads an honest config, anchors and merge keys included."""
    path = tmp_path / "ok.yml"
    path.write_text(HEAD + "common: &c {lr: 0.1}\nx:\n  <<: *c\n", encoding="utf-8")
    assert document.read_document(path)["x"] == {"lr": 0.1}
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"base_model": "tiny-llama", "nested": [[[1]]]}), encoding="utf-8")
    assert document.read_document(path)["nested"] == [[[1]]]
