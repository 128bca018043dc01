"""Issue 43: published config.json files as users hand them in (tests/published_configs/), on tiny
versions built from their published structure: the same keys, small sizes. Nothing downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamda_bench.runner import run_cell

from test_extrapolation import comparable  # an extrapolated record vs the full trace: every field but timing and info.trace

PUBLISHED = Path(__file__).parent / "published_configs"


def tiny(tmp_path: Path, name: str, **sizes) -> str:
    """The published config with small sizes (every other key as published); its path."""
    config = json.loads((PUBLISHED / f"{name}.json").read_text())
    config.update(sizes)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


def run(workload: str, **keys) -> dict:
    cell = dict(workload=workload, method="lora", r=2, alpha=4.0, dtype="fp32", device="cpu", batch=1, seq=16,
                warmup=0, steps=0, mode="estimate", layers=2)
    cell.update(keys)
    return run_cell(cell)


def ok(workload: str, **keys) -> dict:
    record = run(workload, **keys)
    assert record["status"] == "ok", record["error"]
    return record


def lora(r: int, *shapes: tuple[int, int]) -> int:
    """LoRA's trainable count: r x (d_in + d_out) per adapted linear."""
    return sum(r * (d_in + d_out) for d_in, d_out in shapes)


# ---- tiny versions of the published structure -------------------------------------------------

def tiny_phimoe(tmp_path):
    # 64 longrope factors in the published file: head_dim / 2 of the tiny model (32 / 4 / 2 = 4)
    config = json.loads((PUBLISHED / "phi-3.5-moe.json").read_text())
    rope = dict(config["rope_scaling"], long_factor=[1.0] * 4, short_factor=[1.0] * 4)
    return tiny(tmp_path, "phi-3.5-moe", hidden_size=32, intermediate_size=16, num_attention_heads=4,
                num_key_value_heads=2, num_local_experts=4, vocab_size=128, rope_scaling=rope)


def tiny_deepseek(tmp_path):
    return tiny(tmp_path, "deepseek-v2-lite", hidden_size=32, intermediate_size=48, moe_intermediate_size=8,
                kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, num_attention_heads=4,
                num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2, vocab_size=128)


def tiny_qwen3_next(tmp_path):
    return tiny(tmp_path, "qwen3-next-80b-a3b", hidden_size=32, intermediate_size=48, moe_intermediate_size=8,
                shared_expert_intermediate_size=8, head_dim=8, num_attention_heads=4, num_key_value_heads=2,
                linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
                num_experts=8, num_experts_per_tok=2, vocab_size=128)


# ---- item 5: loading what transformers loads ---------------------------------------------------

def test_a_remote_code_class_name_falls_back_to_the_model_type(tmp_path):
    # Phi-3.5-MoE names PhiMoEForCausalLM (its remote code); transformers' class is PhimoeForCausalLM.
    # Its longrope rotary branches on max(position_ids) in Python: traced from the shape instead.
    rec = ok(tiny_phimoe(tmp_path), targets="attn")
    assert rec["info"]["model"]["class"] == "PhimoeForCausalLM"
    h, q, kv = 32, 32, 2 * 8
    assert rec["params"]["trainable"] == 2 * lora(2, (h, q), (h, kv), (h, kv), (q, h))


# ---- item 6: presets reach no router or gate ---------------------------------------------------

def test_all_leaves_the_phimoe_router_alone(tmp_path):
    # the router is a PhimoeTopKRouter, an nn.Linear subclass beside the experts: never a preset target
    rec = ok(tiny_phimoe(tmp_path), targets="all")
    assert rec["info"]["method"]["targets"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert rec["info"]["method"]["adapted_layers"] == 2 * 4


def test_all_leaves_the_qwen3_next_shared_expert_gate_alone(tmp_path):
    # 4 layers: three linear-attention layers and one full-attention layer (full_attention_interval 4)
    rec = ok(tiny_qwen3_next(tmp_path), targets="all", layers=4)
    h, i = 32, 8
    kd, vd = 2 * 8, 4 * 8  # linear attention: key heads x key dim, value heads x value dim
    linear_attn = [(h, 2 * kd + 2 * vd), (h, 2 * 4), (vd, h)]  # in_proj_qkvz, in_proj_ba, out_proj
    full_attn = [(h, 2 * 4 * 8), (h, 2 * 8), (h, 2 * 8), (4 * 8, h)]  # q_proj carries the output gate
    shared = [(h, i), (h, i), (i, h)]
    assert rec["params"]["trainable"] == lora(2, *(3 * (linear_attn + shared)), *(full_attn + shared))


@pytest.mark.parametrize("method", ["lora", "lamda"])
def test_an_explicit_target_too_narrow_for_the_rank_names_the_targets_that_can_take_it(tmp_path, method):
    # the shared-expert gate is 32 -> 1: r 2 cannot go there, every other named target can
    record = run(tiny_qwen3_next(tmp_path), method=method, layers=4,
                 targets=["q_proj", "o_proj", "shared_expert_gate", "down_proj"])
    assert record["status"] == "error"
    assert "r=2 exceeds min(d_in, d_out)=1 of model.layers.0.mlp.shared_expert_gate (Linear 32 -> 1)" in record["error"]
    assert record["error"].endswith("targets that can take it: down_proj, o_proj, q_proj")


def test_deepseek_v2_all_adapts_every_block_linear_at_any_depth(tmp_path):
    # MLA attention (no q_lora_rank: q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj), a dense first layer,
    # then routed + shared experts. PEFT's transformers-4 rewrite would turn gate_proj / up_proj /
    # down_proj into the fused experts' target_parameters; the cell's exact linears are adapted instead.
    path = tiny_deepseek(tmp_path)
    h, heads = 32, 4
    attn = [(h, heads * 12), (h, 16 + 4), (16, heads * (8 + 8)), (heads * 8, h)]
    dense = [(h, 48), (h, 48), (48, h)]
    shared = [(h, 2 * 8), (h, 2 * 8), (2 * 8, h)]  # 2 shared experts of 8: one MLP of 16
    for layers in (2, 3):
        rec = ok(path, targets="all", layers=layers)
        expected = lora(2, *attn, *dense, *((layers - 1) * (attn + shared)))
        assert rec["params"]["trainable"] == expected, layers


# ---- item 9: refusal timing ----------------------------------------------------------------------

def test_an_image_text_family_without_a_token_rule_is_refused_when_the_suite_is_parsed(tmp_path):
    from lamda_bench.suite.parse import SuiteError, parse_suite

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl"}))
    with pytest.raises(SuiteError, match="qwen3_vl.*no rule here for how many tokens an image becomes") as e:
        parse_suite(f'[[sweep]]\nworkload = "{path}"\nmethod = "lora"\nmode = "estimate"\n')
    assert "\n" not in str(e.value)


# ---- items 2 and 3: a checkpoint's quantization, reference code for a missing kernel -----------------

def tiny_gpt_oss(tmp_path):
    return tiny(tmp_path, "gpt-oss-20b", hidden_size=32, intermediate_size=16, head_dim=8, num_attention_heads=4,
                num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=128, pad_token_id=0,
                eos_token_id=1)


def test_the_checkpoints_own_quantization_is_said(tmp_path):
    from lamda_bench.one_cell.output import describe

    rec = ok(tiny_gpt_oss(tmp_path), targets="attn", dtype="bf16")
    stored = rec["info"]["model"]["checkpoint_quantization"]
    assert stored["quant_method"] == "mxfp4" and stored["modelled"] is True and "bf16" in stored["note"]
    assert f"NOTE: {stored['note']}" in describe(rec, False, "x")
    gptq = json.loads(Path(tiny_gpt_oss(tmp_path)).read_text())
    gptq["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (tmp_path / "gptq.json").write_text(json.dumps(gptq))
    stored = ok(str(tmp_path / "gptq.json"), targets="attn")["info"]["model"]["checkpoint_quantization"]
    assert stored["modelled"] is False and "not modelled" in stored["note"]


def test_reference_code_for_a_missing_kernel_is_named(tmp_path):
    from lamda_bench.one_cell.output import describe

    import importlib.util

    missing = {p for p in ("fla", "causal_conv1d") if importlib.util.find_spec(p) is None}
    if not missing:
        pytest.skip("flash-linear-attention and causal-conv1d are installed: no fallback to name")
    rec = ok(tiny_qwen3_next(tmp_path), targets="attn", layers=4)
    named = {f["function"]: f["package"] for f in rec["info"]["model"]["reference_kernels"]}
    assert {named.get("chunk_gated_delta_rule"), named.get("causal_conv1d_fn")} & missing == missing
    assert "NOTE: reference PyTorch code estimated, not the kernel" in describe(rec, False, "x")
    assert "reference_kernels" not in ok("tiny-llama", targets="attn")["info"]["model"]


# ---- item 8: depth extrapolation of a MoE cell ---------------------------------------------------

@pytest.mark.parametrize("method", ["lora", "lamda"])  # LaMDA's info.method has no 'method' key (was a KeyError)
def test_an_extrapolated_moe_record_equals_the_full_trace(monkeypatch, method):
    # linear targets on a MoE model: info.method.not_adapted (a text naming counts that grow with
    # depth) is carried, info.model keeps its experts; the record equals the full trace
    from lamda_bench.runner import depth

    monkeypatch.setattr(depth, "MIN_DEPTH", 6)
    cell = dict(workload="tiny-mixtral", method=method, r=2, alpha=4.0, dtype="fp32", device="cpu", batch=1,
                seq=16, warmup=0, steps=0, mode="estimate", layers=7, targets="attn")
    auto, full = run_cell(dict(cell)), run_cell(dict(cell, trace="full"))
    assert auto["status"] == full["status"] == "ok", (auto["error"], full["error"])
    assert auto["info"]["trace"]["mode"] == "extrapolated", auto["info"]["trace"]
    assert auto["info"]["model"]["moe"]["moe_blocks"] == 7 and "not_adapted" in auto["info"]["method"]

    assert comparable(auto) == comparable(full)


# ---- the nine published models at full size: parameter counts against a hand count --------------

def _dense(V, h, q, kv, I, L, tied, norms=2, qkv_bias=0, extra=0):
    attn = 2 * h * q + 2 * h * kv + qkv_bias
    return (1 if tied else 2) * V * h + L * (attn + 3 * h * I + norms * h + extra) + h


def hand_total(name: str) -> int:
    """Every weight of the model, counted from the published config by hand (docs/workloads.md)."""
    if name == "mistral-nemo-12b":
        return _dense(131072, 5120, 4096, 1024, 14336, 40, tied=False)
    if name == "granite-3.3-8b":
        return _dense(49159, 4096, 4096, 1024, 12800, 40, tied=True)
    if name == "smollm3-3b":
        return _dense(128256, 2048, 2048, 512, 11008, 36, tied=True)
    if name == "phi-4-mini":  # fused qkv_proj and gate_up_proj: the same weights
        return _dense(200064, 3072, 3072, 1024, 8192, 32, tied=True)
    if name == "gemma2-9b":  # four norms per layer
        return _dense(256000, 3584, 4096, 2048, 14336, 42, tied=True, norms=4)
    if name == "gpt-oss-20b":
        h, q, kv, I, E, V, L = 2880, 4096, 512, 2880, 32, 201088, 24
        attn = 2 * h * q + 2 * h * kv + (q + 2 * kv + h) + 64  # biases, 64 attention sinks
        moe = h * E + E + E * (h * 2 * I + 2 * I) + E * (I * h + h)  # router with bias; experts with biases
        return 2 * V * h + L * (attn + moe + 2 * h) + h
    if name == "phi-3.5-moe":
        h, q, kv, I, E, V, L = 4096, 4096, 1024, 6400, 16, 32064, 32
        attn = 2 * h * q + 2 * h * kv + (q + 2 * kv + h)
        moe = h * E + E * 3 * h * I
        return V * h + (V * h + V) + L * (attn + moe + 4 * h) + 2 * h  # LayerNorms (weight, bias); LM head bias
    if name == "deepseek-v2-lite":
        h, heads, V, L = 2048, 16, 102400, 27
        attn = h * heads * 192 + h * (512 + 64) + 512 + 512 * heads * 256 + heads * 128 * h
        dense = 3 * h * 10944
        moe = 64 * h + 64 * 3 * h * 1408 + 3 * h * 2 * 1408  # router, 64 routed experts, 2 shared (one MLP)
        return 2 * V * h + L * (attn + 2 * h) + dense + (L - 1) * moe + h
    if name == "qwen3-next-80b-a3b":
        h, V, L = 2048, 151936, 48
        full = h * 2 * 16 * 256 + 2 * h * 2 * 256 + 16 * 256 * h + 2 * 256  # q (with gate), k, v, o, q/k norms
        kd, vd = 16 * 128, 32 * 128
        linear = h * (2 * kd + 2 * vd) + h * 2 * 32 + (2 * kd + vd) * 4 + 32 + 32 + 128 + vd * h
        moe = 512 * h + 512 * 3 * h * 512 + 3 * h * 512 + h  # router, experts, shared expert and its gate
        return 2 * V * h + (L // 4) * full + (L - L // 4) * linear + L * (moe + 2 * h) + h
    raise KeyError(name)


NINE = ["gpt-oss-20b", "mistral-nemo-12b", "gemma2-9b", "phi-4-mini", "smollm3-3b", "granite-3.3-8b",
        "phi-3.5-moe", "qwen3-next-80b-a3b", "deepseek-v2-lite"]


@pytest.mark.parametrize("name", NINE)
def test_full_size_parameter_counts_equal_the_hand_count(name):
    from lamda_bench.model.workloads import build_model, get_workload
    from lamda_bench.suite.cell import Cell

    workload = name if name == "gemma2-9b" else str(PUBLISHED / f"{name}.json")
    model = build_model(Cell(workload=workload, method="lora", dtype="bf16"), "meta")
    assert get_workload(workload).default_layers == json.loads(
        (PUBLISHED / f"{name}.json").read_text() if name != "gemma2-9b" else "{}").get("num_hidden_layers", 42)
    assert sum(p.numel() for p in model.parameters()) == hand_total(name)
