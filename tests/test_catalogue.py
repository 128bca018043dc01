"""The config.json catalogue: each model's parameter count and LoRA / LaMDA trainable counts and
weight bytes, from a real estimate-mode step, equal formulas written from the published shape.

The formulas are spelled out here from the architecture (not read back from the model): GQA
(k/v projections of kv_heads x head_dim), Qwen2.5's q/k/v bias, Gemma-2's tied embeddings and
four norms per block, Phi-3's fused qkv_proj and gate_up_proj.
"""

from __future__ import annotations

import json

import pytest

from lamda_bench.suite.cell import Cell
from lamda_bench.runner import run_cell
from lamda_bench.model.catalogue_facts import parameter_count
from lamda_bench.model.workloads import CONFIG_DIR, build_model, get_workload

# Published parameter counts of the real checkpoints (model cards / safetensors index).
PUBLISHED = {
    "llama3.1-8b": 8_030_261_248,
    "llama3.1-70b": 70_553_706_496,
    "mistral-7b-v0.3": 7_248_023_552,
    "qwen2.5-7b": 7_615_616_512,
    "gemma2-9b": 9_241_705_984,
    "phi3-mini": 3_821_079_552,
}
QKV_BIAS = {"qwen2.5-7b"}
TIED = {"gemma2-9b"}
NORMS_PER_BLOCK = {"gemma2-9b": 4}  # input, post-attention, pre- and post-feedforward
FUSED = {"phi3-mini"}  # qkv_proj (h -> (H + 2 KV) hd) and gate_up_proj (h -> 2 I)


def shape(name: str) -> dict:
    c = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    heads = c["num_attention_heads"]
    return dict(h=c["hidden_size"], i=c["intermediate_size"], layers=c["num_hidden_layers"], heads=heads,
                kv=c.get("num_key_value_heads", heads), hd=c.get("head_dim") or c["hidden_size"] // heads,
                vocab=c["vocab_size"])


def block_linears(name: str) -> list[tuple[int, int]]:
    """(d_in, d_out) of every linear of one block, from the shape."""
    s = shape(name)
    h, i, q, kv = s["h"], s["i"], s["heads"] * s["hd"], s["kv"] * s["hd"]
    if name in FUSED:
        return [(h, q + 2 * kv), (q, h), (h, 2 * i), (i, h)]
    return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]


def param_formula(name: str, layers: int | None = None) -> int:
    s = shape(name)
    layers = s["layers"] if layers is None else layers
    h = s["h"]
    block = sum(a * b for a, b in block_linears(name)) + NORMS_PER_BLOCK.get(name, 2) * h
    if name in QKV_BIAS:
        block += (s["heads"] + 2 * s["kv"]) * s["hd"]
    embeddings = s["vocab"] * h * (1 if name in TIED else 2)  # input embedding (+ untied LM head)
    return embeddings + layers * block + h  # + final norm


def lora_trainable(name: str, r: int, layers: int) -> int:
    return layers * sum(r * (a + b) for a, b in block_linears(name))


def lamda_trainable(name: str, r: int, layers: int) -> int:
    return layers * sum(r * r + r * b for _, b in block_linears(name))  # S (r x r) and B (d_out x r); A frozen


def lamda_adapter_params(name: str, r: int, layers: int) -> int:
    return layers * sum(r * a + r * r + r * b for a, b in block_linears(name))  # A, S, B


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_catalogue_parameter_counts_match_the_shape_formula_and_the_published_count(name):
    assert param_formula(name) == PUBLISHED[name]
    assert parameter_count(name) == PUBLISHED[name]
    model = build_model(Cell(workload=name, method="lora", layers=2, dtype="bf16"), "meta")
    assert sum(p.numel() for p in model.parameters()) == param_formula(name, 2)


def test_the_architecture_details_are_built():
    qwen = build_model(Cell(workload="qwen2.5-7b", method="lora", layers=1), "meta").model.layers[0]
    assert qwen.self_attn.q_proj.bias is not None and qwen.self_attn.o_proj.bias is None
    assert qwen.self_attn.k_proj.out_features == 4 * 128  # GQA: 4 kv heads
    gemma = build_model(Cell(workload="gemma2-9b", method="lora", layers=1), "meta")
    assert gemma.lm_head.weight is gemma.model.embed_tokens.weight
    phi = build_model(Cell(workload="phi3-mini", method="lora", layers=1), "meta").model.layers[0]
    assert phi.self_attn.qkv_proj.out_features == 3 * 3072 and phi.mlp.gate_up_proj.out_features == 2 * 8192
    assert get_workload("llama3.1-8b").config["rope_scaling"]["rope_type"] == "llama3"


def _estimate(name: str, method: str, r: int = 16, layers: int = 1) -> dict:
    cell = Cell(workload=name, method=method, r=r, layers=layers, dtype="bf16", device="cpu", mode="estimate",
                batch=1, seq=16, warmup=0, steps=1)
    record = run_cell(cell.to_dict())
    assert record["status"] == "ok", record["error"]
    return record


def _buffer_bytes(name: str, layers: int) -> int:
    model = build_model(Cell(workload=name, method="lora", layers=layers, dtype="bf16"), "meta")
    return sum(b.numel() * b.element_size() for b in model.buffers())


# A matrix: llama3.1-8b stays quick; the lamda estimates below run the other shapes' quirks (Qwen's
# bias, Phi-3's fused projections, Gemma-2's tied embeddings) and the count test builds all six.
@pytest.mark.parametrize("name", [n if n == "llama3.1-8b" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(PUBLISHED)])
def test_catalogue_lora_estimate_matches_the_shape(name):
    r, layers = 16, 1
    rec = _estimate(name, "lora", r, layers)
    trainable = lora_trainable(name, r, layers)
    assert rec["params"]["trainable"] == trainable
    assert rec["params"]["total"] == param_formula(name, layers) + trainable
    # bf16 base weights, fp32 adapters (PEFT's autocast_adapter_dtype), plus the model's buffers.
    assert rec["memory"]["weights"] == 2 * param_formula(name, layers) + 4 * trainable + _buffer_bytes(name, layers)
    assert rec["memory"]["trainable_weights"] == 4 * trainable
    facts = rec["info"]["model"]
    s = shape(name)
    assert (facts["hidden_size"], facts["intermediate_size"], facts["heads"], facts["kv_heads"], facts["head_dim"],
            facts["vocab_size"], facts["layers"]) == (s["h"], s["i"], s["heads"], s["kv"], s["hd"], s["vocab"], layers)
    assert facts["tie_word_embeddings"] is (name in TIED) and facts["source"] == "catalogue"
    assert facts["config_sha256"] == get_workload(name).config_sha256


@pytest.mark.parametrize("name", ["qwen2.5-7b", "phi3-mini", "gemma2-9b"])
def test_catalogue_lamda_estimate_matches_the_shape(name):
    r, layers = 16, 1
    rec = _estimate(name, "lamda", r, layers)
    assert rec["params"]["trainable"] == lamda_trainable(name, r, layers)
    adapter = lamda_adapter_params(name, r, layers)
    assert rec["memory"]["weights"] == 2 * param_formula(name, layers) + 4 * adapter + _buffer_bytes(name, layers)


def test_presets_are_derived_from_module_names():
    from lamda_bench.model.targets import preset_suffixes

    phi = build_model(Cell(workload="phi3-mini", method="lora", layers=2), "meta")
    assert set(preset_suffixes(phi, "all")) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert set(preset_suffixes(phi, "attn")) == {"qkv_proj", "o_proj"}
    assert preset_suffixes(phi, "mlp") == ["gate_up_proj", "down_proj"]
    assert preset_suffixes(phi, "peft", "phi3") is None  # PEFT has no default for phi3
    gemma = build_model(Cell(workload="gemma2-9b", method="lora", layers=2), "meta")
    assert preset_suffixes(gemma, "peft", "gemma2") == ["q_proj", "v_proj"]
    bert = build_model(Cell(workload="minilm-l6", method="lora", layers=2), "meta")
    # BERT's block output.dense shares its suffix with attention.output.dense: qualified names then.
    assert preset_suffixes(bert, "mlp") == ["intermediate.dense", "encoder.layer.0.output.dense",
                                            "encoder.layer.1.output.dense"]
    assert preset_suffixes(bert, "attn") == ["query", "key", "value", "attention.output.dense"]
    assert set(preset_suffixes(bert, "all")) == {"query", "key", "value", "output.dense", "intermediate.dense"}
    bart = build_model(Cell(workload="tiny-bart", method="lora"), "meta")
    from lamda_bench.model.targets import preset_modules

    assert len(preset_modules(bart, "attn")) == 2 * 4 + 2 * 8  # encoder self-attn; decoder self + cross
    assert all(n.rsplit(".", 1)[-1] in ("fc1", "fc2") for n in preset_modules(bart, "mlp"))


def test_every_catalogue_config_is_plain_shape_facts():
    for path in sorted(CONFIG_DIR.glob("*.json")):
        config = json.loads(path.read_text())
        assert isinstance(config.get("architectures"), list) and config.get("model_type"), path
        assert "auto_map" not in config and "quantization_config" not in config, path
        assert path.stat().st_size < 4096, path
