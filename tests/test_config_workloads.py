"""Workloads named by a config.json path (file or folder) or a cached hub id, and the suite
conventions for targets, dtype aliases and key aliases."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from lamda_bench import cli
from lamda_bench.suite.cell import Cell
from lamda_bench.suite.parse import SuiteError, load_suite, parse_suite
from lamda_bench.model.workloads import WorkloadError, get_workload, resolve_reference

# A small Qwen2 (q/k/v bias, GQA 4 heads / 2 kv heads, untied embeddings), as a config.json would say.
TINY_QWEN = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 32, "intermediate_size": 48,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100,
    "max_position_embeddings": 128, "tie_word_embeddings": False, "rms_norm_eps": 1e-6,
}
H, I, HEADS, KV, HD, V, L = 32, 48, 4, 2, 8, 100, 2
LINEARS = [(H, HEADS * HD), (H, KV * HD), (H, KV * HD), (HEADS * HD, H), (H, I), (H, I), (I, H)]  # per block


def base_params(layers: int = L) -> int:
    block = sum(a * b for a, b in LINEARS) + (HEADS + 2 * KV) * HD + 2 * H  # linears, q/k/v bias, 2 norms
    return 2 * V * H + layers * block + H


def write_config(folder: Path, config: dict | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return path


SUITE = """
[suite]
name = "by-path"
[defaults]
method = ["lora", "lamda"]
r = 4
dtype = "fp32"
device = "cpu"
mode = "estimate"
batch = 1
seq = 8
warmup = 0
steps = 1
[[sweep]]
workload = "models/tiny-qwen"
[[sweep]]
workload = "models/tiny-qwen/config.json"
"""


def test_a_config_path_cell_id_follows_the_config_content_not_its_location(tmp_path):
    """Baselines and merged runs key on ids: the same config.json in another checkout or folder
    must give the same id; an edited config (another shape) a new one."""
    def ids(folder: Path) -> list[str]:
        write_config(folder / "models" / "tiny-qwen", TINY_QWEN)
        (folder / "suite.toml").write_text(SUITE)
        return [c.id for c in load_suite(folder / "suite.toml").cells]

    here, there = ids(tmp_path / "checkout-a"), ids(tmp_path / "elsewhere" / "checkout-b")
    assert here == there and len(set(here)) == 2
    edited = dict(TINY_QWEN, intermediate_size=64)
    write_config(tmp_path / "checkout-c" / "models" / "tiny-qwen", edited)
    (tmp_path / "checkout-c" / "suite.toml").write_text(SUITE)
    changed = [c.id for c in load_suite(tmp_path / "checkout-c" / "suite.toml").cells]
    assert not set(changed) & set(here)


def test_a_suite_naming_a_config_path_runs_lora_and_lamda_with_formula_counts(tmp_path, capsys):
    config_path = write_config(tmp_path / "models" / "tiny-qwen", TINY_QWEN)
    suite_file = tmp_path / "suite.toml"
    suite_file.write_text(SUITE)
    suite = load_suite(suite_file)
    # Folder and file name the same config: one absolute path, so the sweeps dedupe to 2 cells.
    assert [c.workload for c in suite.cells] == [str(config_path.resolve())] * 2
    assert all(c.id.startswith("tiny-qwen-") for c in suite.cells)

    out = tmp_path / "out"
    assert cli.main(["run", str(suite_file), "--out", str(out), "--jobs", "1"]) == 0
    records = {r["cell"]["method"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    lora, lamda = records["lora"], records["lamda"]
    r = 4
    lora_trainable = L * sum(r * (a + b) for a, b in LINEARS)
    lamda_trainable = L * sum(r * r + r * b for _, b in LINEARS)
    lamda_adapter = L * sum(r * a + r * r + r * b for a, b in LINEARS)
    buffers = 2 * (HD // 2) * 4  # rotary inv_freq and original_inv_freq, fp32
    assert lora["status"] == lamda["status"] == "ok"
    assert lora["params"]["trainable"] == lora_trainable
    assert lamda["params"]["trainable"] == lamda_trainable
    assert lora["params"]["total"] == base_params() + lora_trainable
    assert lora["memory"]["weights"] == 4 * (base_params() + lora_trainable) + buffers
    assert lamda["memory"]["weights"] == 4 * (base_params() + lamda_adapter) + buffers
    facts = lora["info"]["model"]
    assert facts["source"] == "file" and facts["class"] == "Qwen2ForCausalLM" and facts["task"] == "causal-lm"
    assert (facts["hidden_size"], facts["heads"], facts["kv_heads"], facts["head_dim"], facts["vocab_size"]) == (
        H, HEADS, KV, HD, V)
    assert facts["config_sha256"] == lamda["info"]["model"]["config_sha256"]


def test_layers_override_the_depth_of_a_config_workload(tmp_path):
    path = write_config(tmp_path / "q", TINY_QWEN)
    workload = get_workload(resolve_reference(str(path)))
    assert workload.default_layers == L and workload.task == "causal-lm"
    from lamda_bench.model.workloads import build_model

    model = build_model(Cell(workload=str(path.resolve()), method="lora", layers=3), "meta")
    assert len(model.model.layers) == 3
    assert sum(p.numel() for p in model.parameters()) == base_params(3)


@pytest.mark.parametrize("content, needle", [
    (None, "no config.json"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON list, not a config object"),
    (json.dumps({"hidden_size": 8}), "no \"model_type\""),
    (json.dumps({"model_type": "not-a-model", "auto_map": {"AutoConfig": "x.Y"}}), "runs no remote code"),
    (json.dumps({**TINY_QWEN, "architectures": ["Qwen2ForTokenClassification"]}), "is not a causal LM"),
    (json.dumps({**TINY_QWEN, "num_attention_heads": "four"}), "transformers refuses this config"),
])
def test_bad_config_workloads_fail_at_parse_time_in_one_line(tmp_path, capsys, content, needle):
    folder = tmp_path / "m"
    if content is None:
        folder.mkdir()
    else:
        write_config(folder, content)
    suite_file = tmp_path / "s.toml"
    suite_file.write_text('[defaults]\nmethod = "lora"\n[[sweep]]\nworkload = "m"\n')
    with pytest.raises(SuiteError) as e:
        load_suite(suite_file)
    msg = str(e.value)
    assert "\n" not in msg and "workload" in msg and needle in msg, msg
    out = tmp_path / "out"
    assert cli.main(["run", str(suite_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and not out.exists()


def test_hub_ids_resolve_from_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--acme--tiny-qwen-cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    write_config(repo / "snapshots" / "0123abc", TINY_QWEN)
    assert resolve_reference("acme/tiny-qwen-cached") == "acme/tiny-qwen-cached"
    workload = get_workload("acme/tiny-qwen-cached")
    assert workload.source.kind == "hub" and workload.class_name == "Qwen2ForCausalLM"
    assert Cell(workload="acme/tiny-qwen-cached", method="lora").id.startswith("tiny-qwen-cached-lora-r8-")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WorkloadError) as e:
        resolve_reference("acme/not-cached")
    msg = str(e.value)
    assert "not in the local Hugging Face cache" in msg and "HF_HUB_OFFLINE is set" in msg
    assert "`hf download acme/not-cached config.json`" in msg and "\n" not in msg


def test_unknown_workload_name_still_hints():
    with pytest.raises(SuiteError, match="did you mean 'mistral-7b-v0.3'"):
        parse_suite('[defaults]\nmethod = "lora"\n[[sweep]]\nworkload = "mistral-7b"\n')


# ---- suite conventions ------------------------------------------------------------------

def parse(body: str):
    return parse_suite(textwrap.dedent('[defaults]\nworkload = "tiny-llama"\nmethod = "lora"\n' + body), source="s.toml")


def test_a_list_of_module_names_is_one_setting_like_peft_target_modules():
    for body in ('targets = ["q_proj", "v_proj"]\n[[sweep]]\n', '[[sweep]]\ntargets = ["q_proj", "v_proj"]\n'):
        cells = parse(body).cells
        assert [c.targets for c in cells] == [("q_proj", "v_proj")]


def test_an_axis_of_targets_is_a_list_of_presets_or_of_lists():
    assert [c.targets for c in parse('[[sweep]]\ntargets = ["all", "attn"]\n').cells] == ["all", "attn"]
    cells = parse('[[sweep]]\ntargets = [["q_proj", "v_proj"], "mlp", ["o_proj"]]\n').cells
    assert [c.targets for c in cells] == [("q_proj", "v_proj"), "mlp", ("o_proj",)]
    assert [c.targets for c in parse('[[sweep]]\ntargets = "q_proj"\n').cells] == ["q_proj"]


@pytest.mark.parametrize("value, needle", [
    ('["all", "q_proj"]', "mixes presets (all) and module names (q_proj)"),
    ('[["q_proj"], "v_proj"]', "a module name alone is written as a list"),
    ('[["all", "q_proj"]]', "puts a preset inside a list"),
])
def test_ambiguous_targets_are_refused_in_one_line(value, needle):
    with pytest.raises(SuiteError) as e:
        parse(f"[[sweep]]\ntargets = {value}\n")
    assert needle in str(e.value) and "targets" in str(e.value) and "\n" not in str(e.value)


def test_torch_dtype_names_are_aliases_and_ids_stay_canonical():
    canonical = parse('[[sweep]]\ndtype = ["bf16", "fp16", "fp32"]\n').cells
    aliased = parse('[[sweep]]\ndtype = ["bfloat16", "float16", "float32"]\n').cells
    assert [c.dtype for c in aliased] == ["bf16", "fp16", "fp32"]
    assert [c.id for c in aliased] == [c.id for c in canonical]


@pytest.mark.parametrize("key, meant", [("rank", "r"), ("lora_alpha", "alpha"), ("target_modules", "targets"),
                                        ("batch_size", "batch"), ("torch_dtype", "dtype")])
def test_unknown_key_hints_know_common_aliases(key, meant):
    with pytest.raises(SuiteError, match=f"unknown key \\(did you mean '{meant}'\\?\\)"):
        parse(f"[[sweep]]\n{key} = 1\n")
