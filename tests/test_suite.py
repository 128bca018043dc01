"""suite.py: products, union, zip, exclude, dedup, resolved options, and every bad-input class.

Parsed against the real method and workload registries (the code path `lamda-bench run` takes).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lamda_bench.suite.cell import Cell
from lamda_bench.suite.parse import Catalog, SuiteError, load_suite, parse_suite

SUITES = Path(__file__).resolve().parent.parent / "suites"


@pytest.fixture(scope="module")
def catalog():
    return Catalog.default()


def parse(text, catalog, source="s.toml"):
    return parse_suite(textwrap.dedent(text), source=source, catalog=catalog)


def error(text, catalog) -> str:
    with pytest.raises(SuiteError) as e:
        parse(text, catalog)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("s.toml: ")
    return msg


HEAD = """
[suite]
name = "t"
[defaults]
workload = "linear"
d_in = 64
"""


def test_product_of_axes_in_order(catalog):
    s = parse(HEAD + """
        [[sweep]]
        method = ["lora", "lamda"]
        r = [4, 8, 16]
        batch = 2
    """, catalog)
    assert s.name == "t"
    got = [(c.method, c.r, c.batch) for c in s.cells]
    assert got == [(m, r, 2) for m in ("lora", "lamda") for r in (4, 8, 16)]


def test_union_of_sweeps_dedups_by_id_keeping_order(catalog):
    s = parse(HEAD + """
        [[sweep]]
        method = "lora"
        r = [4, 8]
        [[sweep]]
        method = "lora"
        r = [8, 16]
    """, catalog)
    assert [c.r for c in s.cells] == [4, 8, 16]
    assert len({c.id for c in s.cells}) == 3


def test_zip_pairs_axes(catalog):
    s = parse(HEAD + """
        [[sweep]]
        method = "lora"
        r = [4, 8, 16]
        alpha = [8, 16, 32]
        seq = [32, 64]
        zip = [["r", "alpha"]]
    """, catalog)
    assert [(c.r, c.alpha, c.seq) for c in s.cells] == [
        (4, 8.0, 32), (4, 8.0, 64), (8, 16.0, 32), (8, 16.0, 64), (16, 32.0, 32), (16, 32.0, 64)]


def test_exclude_drops_matching_combinations(catalog):
    s = parse(HEAD + """
        [[sweep]]
        method = ["lora", "pissa"]
        r = [4, 16]
        exclude = [{method = "pissa", r = 16}, {r = [4], method = "lora"}]
    """, catalog)
    assert [(c.method, c.r) for c in s.cells] == [("lora", 16), ("pissa", 4)]


def test_full_has_no_rank_so_an_r_axis_gives_one_cell(catalog):
    s = parse(HEAD + """
        [[sweep]]
        method = ["lora", "full"]
        r = [4, 16]
    """, catalog)
    assert [(c.method, c.r) for c in s.cells] == [("lora", 4), ("lora", 16), ("full", Cell.r)]


def test_options_resolved_and_applied_only_to_methods_that_define_them(catalog):
    s = parse(HEAD + """
        [[sweep]]
        method = ["lora", "lamda"]
        r = 4
        freeze_mode = ["split", "mask"]
    """, catalog)
    lora = [c for c in s.cells if c.method == "lora"]
    lamda = [c for c in s.cells if c.method == "lamda"]
    assert len(lora) == 1  # freeze_mode means nothing to lora: one cell, not two
    assert [c.option("freeze_mode") for c in lamda] == ["split", "mask"]
    # Every option of the method is present with its default: the id is stable.
    assert set(dict(lamda[0].options)) == set(catalog.methods["lamda"].options)
    explicit = parse(HEAD + """
        [[sweep]]
        method = "lamda"
        r = 4
        freeze_mode = "split"
        init = "svd"
    """, catalog)
    assert explicit.cells[0].id == lamda[0].id


def test_targets_rule(catalog):
    s = parse("""
        [defaults]
        workload = "tiny-llama"
        method = "lora"
        [[sweep]]
        targets = ["all", "attn", ["q_proj", "v_proj"]]
    """, catalog)
    assert [c.targets for c in s.cells] == ["all", "attn", ("q_proj", "v_proj")]


def test_linear_defaults_written_in_for_a_stable_id(catalog):
    s = parse("""
        [[sweep]]
        workload = "linear"
        method = "lora"
        [[sweep]]
        workload = "linear"
        method = "lora"
        d_in = 4096
        d_out = 4096
    """, catalog)
    assert len(s.cells) == 1 and (s.cells[0].d_in, s.cells[0].d_out) == (4096, 4096)


def test_list_in_defaults_is_an_axis_unless_overridden(catalog):
    s = parse(HEAD.replace("d_in = 64", "d_in = 64\nbatch = [1, 2]") + """
        [[sweep]]
        method = "lora"
        [[sweep]]
        method = "lamda"
        batch = 4
    """, catalog)
    assert [(c.method, c.batch) for c in s.cells] == [("lora", 1), ("lora", 2), ("lamda", 4)]


@pytest.mark.parametrize(
    "body, expected",
    [
        ("[[sweep]]\nmethod = 'lora'\nrr = 4", "[[sweep]] #1: rr: unknown key (did you mean 'r'?)"),
        ("[[sweep]]\nmethod = 'lora'\nr = '4'", "[[sweep]] #1: r: expected an integer"),
        ("[[sweep]]\nmethod = 'lora'\nr = 0", "[[sweep]] #1: r: 0 is less than 1"),
        ("[[sweep]]\nmethod = 'lora'\nr = 128", "r = 128 exceeds min(d_in, d_out) = 64"),
        ("[[sweep]]\nmethod = 'lorra'", "method: unknown method 'lorra' (did you mean 'lora'?)"),
        ("[[sweep]]\nmethod = 'lora'\nworkload = 'llama7b'", "workload: unknown workload 'llama7b'"),
        ("[[sweep]]\nmethod = 'lora'\nr = []", "r: empty list"),
        ("[[sweep]]\nmethod = 'lora'\ndtype = 'bf17'", "dtype: 'bf17' is not one of ['fp32', 'bf16', 'fp16'] (did you mean 'bf16'?)"),
        ("[[sweep]]\nmethod = 'lora'\ndevice = 'gpu'", "device: 'gpu' is not one of"),
        ("[[sweep]]\nmethod = 'lora'\nmode = 'fast'", "mode: 'fast' is not one of"),
        ("[[sweep]]\nmethod = 'lora'\ngradient_checkpointing = 1", "gradient_checkpointing: expected true or false"),
        ("[[sweep]]\nmethod = 'lamda'\ninit = 'gauss'", "[[sweep]] #1: init: method 'lamda' option 'init'"),
        ("[[sweep]]\nmethod = 'lora'\ninit = 'svd'", "init: not an option of any method of this sweep (lora)"),
        ("[[sweep]]\nmethod = 'lora'\nr = [4, 8]\nzip = [['r', 'alpha']]", "zip: 'alpha' is not a key of this sweep"),
        ("[[sweep]]\nmethod = 'lora'\nr = [4, 8]\nalpha = [1.0]\nzip = [['r', 'alpha']]",
         "zip: zipped axes need equal lengths (r has 2, alpha has 1)"),
        ("[[sweep]]\nmethod = 'lora'\nexclude = [{method = 'lora'}]", "exclude: drops every combination"),
        ("[[sweep]]\nmethod = 'lora'\nexclude = [{rank = 4}]", "exclude.rank: unknown key"),
        ("[[sweep]]\nmethod = 'lora'\nd_out = 32\nlayers = 2", "layers: a stack of 2 linear layers needs d_in == d_out"),
        ("[[sweep]]\nmethod = 'lora'\nworkload = 'tiny-llama'", "d_in: only applies to the linear workload"),
        ("[[sweeps]]\nmethod = 'lora'", "sweeps: unknown top-level key (did you mean 'sweep'?)"),
        ("", "sweep: no [[sweep]] table"),
        ("[[sweep]]\nr = 4", "[[sweep]] #1: method: missing"),
        ("[[sweep]]\nmethod = 'lora'\n[[sweep]]\nmethod = 'lora'\nbatch = 0", "[[sweep]] #2: batch: 0 is less than 1"),
    ],
)
def test_bad_input_is_one_line_naming_file_and_key(catalog, body, expected):
    assert expected in error(HEAD + body, catalog)


def test_defaults_typo_and_sweep_only_keys(catalog):
    assert "[defaults]: worklaod: unknown key (did you mean 'workload'?)" in error(
        "[defaults]\nworklaod = 'linear'\n[[sweep]]\nmethod='lora'", catalog)
    assert "[defaults]: zip: only allowed in a [[sweep]] table" in error(
        "[defaults]\nzip = []\n[[sweep]]\nmethod='lora'", catalog)
    assert "[suite]: nmae: unknown key (did you mean 'name'?)" in error("[suite]\nnmae = 'x'\n" + HEAD[9:], catalog)


def test_malformed_toml_names_line_and_column(catalog):
    msg = error(HEAD + "[[sweep]]\nmethod = lora\n", catalog)
    assert "malformed TOML" in msg and "line" in msg and "column" in msg


def test_missing_file(tmp_path, catalog):
    with pytest.raises(SuiteError, match="no such suite file"):
        load_suite(tmp_path / "nope.toml", catalog)


@pytest.mark.parametrize("name", ["ci", "layers", "paper", "llama7b", "beyond-sft"])
def test_shipped_suites_parse(name, catalog):
    suite = load_suite(SUITES / f"{name}.toml", catalog)
    assert suite.name == name and suite.cells
    assert len({c.id for c in suite.cells}) == len(suite.cells)
    # LaMDA++ needs real spectra: never on a random-weight workload.
    for cell in suite.cells:
        if cell.method == "lamda++":
            assert catalog.workloads[cell.workload].pretrained, cell


def test_llama7b_suite_covers_the_issue(catalog):
    cells = load_suite(SUITES / "llama7b.toml", catalog).cells
    big = [c for c in cells if c.workload == "llama2-7b"]
    assert {"lora", "pissa", "lamda", "lora-fa", "dora", "vera", "full"} <= {c.method for c in big}
    assert {"all", "attn"} <= {c.targets for c in big}
    assert {c.dtype for c in big if c.precision != "amp-fp16"} == {"bf16"}  # amp-fp16 runs on an fp16 base
    assert {c.precision for c in big} == {"pure", "amp-bf16", "amp-fp16", "fp32"}
    assert min(c.r for c in big if c.method != "full") == 8 and max(c.r for c in big) == 64
    assert len({c.batch for c in big}) > 1 and len({c.seq for c in big}) > 1
    assert any(c.method == "lamda++" for c in cells)
    # issue 25: full fine-tuning and LoRA with the optimizers people train with
    wanted = {"adamw_bnb_8bit", "paged_adamw_8bit", "adafactor", "adamw_torch_fused"}
    for method in ("full", "lora"):
        assert wanted <= {c.optimizer for c in big if c.method == method}
