"""Mixture-of-experts models: expert FLOPs against a hand count, measure == estimate on tiny real
Mixtral / Qwen3-MoE models, the expert presets (LoRA through PEFT's target_parameters), the
refusals, the router auxiliary loss and the experts kernels."""

from __future__ import annotations

import json

import pytest
import torch

from lamda_bench.model.catalogue_facts import parameter_count
from lamda_bench.model.workloads import CONFIG_DIR, build_model
from lamda_bench.runner import run_cell
from lamda_bench.suite.cell import Cell

PUBLISHED = {"mixtral-8x7b-v0.1": 46_702_792_704, "qwen3-30b-a3b": 30_532_122_624}


def shape(name: str) -> dict:
    c = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    heads = c["num_attention_heads"]
    return dict(h=c["hidden_size"], i=c.get("moe_intermediate_size", c["intermediate_size"]), heads=heads,
                kv=c["num_key_value_heads"], hd=c.get("head_dim") or c["hidden_size"] // heads,
                vocab=c["vocab_size"], e=c.get("num_local_experts") or c["num_experts"],
                k=c["num_experts_per_tok"], layers=c["num_hidden_layers"])


def hand_forward(name: str, layers: int, batch: int, seq: int) -> tuple[int, int]:
    """(forward FLOPs of the base model, of its experts): attention projections, scores (full s x s,
    the counter's convention), router, top_k experts per token (gate, up, down), LM head."""
    s = shape(name)
    t, h = batch * seq, s["h"]
    q, kv = s["heads"] * s["hd"], s["kv"] * s["hd"]
    projections = 2 * t * h * (q + 2 * kv) + 2 * t * q * h
    scores = 4 * batch * s["heads"] * seq * seq * s["hd"]
    router = 2 * t * h * s["e"]
    experts = 2 * t * s["k"] * (h * 2 * s["i"] + s["i"] * h)
    return layers * (projections + scores + router + experts) + 2 * t * h * s["vocab"], layers * experts


def run(**keys) -> dict:
    cell = dict(method="lora", r=4, alpha=8.0, dtype="fp32", device="cpu", batch=2, seq=32, warmup=0, steps=0,
                mode="estimate")
    cell.update(keys)
    record = run_cell(cell)
    assert record["status"] == "ok", record["error"]
    return record


def refused(**keys) -> str:
    cell = dict(method="lora", r=4, dtype="fp32", device="cpu", batch=1, seq=16, warmup=0, steps=0, mode="estimate")
    cell.update(keys)
    record = run_cell(cell)
    assert record["status"] == "error"
    assert "\n" not in record["error"] and "Traceback" not in record["error"]
    return record["error"]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name):
    assert parameter_count(name) == PUBLISHED[name]


@pytest.mark.parametrize("name", ["tiny-mixtral", "tiny-qwen3-moe"])
def test_expert_flops_equal_the_hand_count(name):
    # full fine-tuning: no adapter FLOPs, every weight gradient computed (experts' backward = 2x forward)
    rec = run(workload=name, method="full")
    forward, experts = hand_forward(name, 2, 2, 32)
    assert experts > 0 and rec["flops"]["experts_forward"] == experts
    assert rec["flops"]["forward"] == forward
    assert rec["flops"]["experts_backward"] == 2 * experts
    assert "tokens x top_k" in rec["flops"]["grouped_counting"]
    # LoRA on attention: the frozen experts need their input gradient only
    lora = run(workload=name, targets="attn")
    assert lora["flops"]["experts_forward"] == lora["flops"]["experts_backward"] == experts


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_catalogue_moe_flops_equal_the_hand_count(name):
    rec = run(workload=name, method="full", layers=1, batch=1, seq=16, dtype="bf16")
    forward, experts = hand_forward(name, 1, 1, 16)
    assert rec["flops"]["forward"] == forward and rec["flops"]["experts_forward"] == experts


def _figures(rec: dict) -> dict:
    memory = {k: v for k, v in rec["memory"].items() if not k.startswith(("cuda_", "nvml", "host_"))}
    return {"memory": memory, "flops": rec["flops"], "params": rec["params"]}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("targets", ["attn", "attn+experts"])
def test_cpu_measure_and_estimate_agree_on_every_figure(dtype, targets):
    keys = dict(workload="tiny-mixtral", dtype=dtype, targets=targets)
    measured, estimated = run(mode="measure", **keys), run(mode="estimate", **keys)
    assert measured["cell"]["mode"] == "measure" and estimated["cell"]["mode"] == "estimate"
    assert _figures(measured) == _figures(estimated)


@pytest.mark.parametrize("dtype,precision", [("fp16", "pure"), ("fp32", "amp-bf16"), ("fp32", "amp-fp16")])
def test_other_precisions_estimate_and_agree_with_the_cpu(dtype, precision):
    keys = dict(workload="tiny-mixtral", dtype=dtype, precision=precision, targets="attn+experts", seq=16, batch=1)
    assert _figures(run(mode="measure", **keys)) == _figures(run(mode="estimate", **keys))


def test_expert_presets_train_exactly_the_hand_count():
    s, r, layers = shape("tiny-qwen3-moe"), 4, 2
    experts = layers * s["e"] * r * ((s["h"] + 2 * s["i"]) + (s["i"] + s["h"]))  # A and B per expert, per parameter
    q, kv = s["heads"] * s["hd"], s["kv"] * s["hd"]
    attn = layers * r * ((s["h"] + q) + 2 * (s["h"] + kv) + (q + s["h"]))
    only = run(workload="tiny-qwen3-moe", targets="experts")
    assert only["params"]["trainable"] == experts
    both = run(workload="tiny-qwen3-moe", targets="attn+experts")
    assert both["params"]["trainable"] == experts + attn
    assert both["info"]["method"]["experts_adapted"] is True and both["info"]["method"]["router_adapted"] is False
    assert both["info"]["method"]["expert_targets"] == ["experts.gate_up_proj", "experts.down_proj"]
    # the fold W + s B A runs on the adapter side; the experts' grouped matmuls now need weight gradients
    assert both["flops"]["adapter_forward"] > run(workload="tiny-qwen3-moe", targets="attn")["flops"]["adapter_forward"]
    assert both["flops"]["experts_backward"] == 2 * both["flops"]["experts_forward"]
    assert "error" in both["predicted"]  # closed forms do not cover ParamWrapper: said, not guessed


def test_linear_presets_on_a_moe_model_say_the_experts_were_not_adapted():
    rec = run(workload="tiny-mixtral", targets="all")
    assert rec["info"]["method"]["experts_adapted"] is False
    assert "experts not adapted" in rec["info"]["method"]["not_adapted"]
    from lamda_bench.one_cell.output import describe

    assert "NOTE: experts not adapted" in describe(rec, False, "x")
    dense = run(workload="tiny-llama", targets="all")
    assert "experts_adapted" not in dense["info"]["method"] and "moe" not in dense["info"]["model"]


def test_refusals_are_one_line():
    assert "cannot adapt the experts" in refused(workload="tiny-mixtral", method="lamda", targets="experts")
    assert "LoRA only" in refused(workload="tiny-mixtral", method="dora", targets="all+experts")
    assert "has none" in refused(workload="tiny-llama", targets="experts")
    assert "mixture-of-experts models only" in refused(workload="tiny-llama", experts_implementation="grouped_mm")
    assert "mixture-of-experts models only" in refused(workload="tiny-llama", output_router_logits=True)
    assert "depend on the data" in refused(workload="tiny-mixtral", experts_implementation="eager")
    assert "dropout" in refused(workload="tiny-mixtral", targets="experts", options={"dropout": 0.1})


def test_router_aux_loss_is_a_recorded_choice_that_costs_memory():
    off = run(workload="tiny-mixtral", mode="measure")
    on = run(workload="tiny-mixtral", mode="measure", output_router_logits=True)
    assert off["info"]["model"]["moe"]["output_router_logits"] is False
    assert on["info"]["model"]["moe"]["output_router_logits"] is True
    assert on["memory"]["saved_activations"] > off["memory"]["saved_activations"]
    assert _figures(run(workload="tiny-mixtral", output_router_logits=True)) == _figures(on)


def test_grouped_mm_figures_do_not_depend_on_the_routing():
    # two seeds: other router weights and tokens, so another routing; same bytes and FLOPs
    a = run(workload="tiny-mixtral", mode="measure", seed=0)
    b = run(workload="tiny-mixtral", mode="measure", seed=1)
    assert a["info"]["model"]["experts_implementation"] == "grouped_mm"
    assert _figures(a) == _figures(b)


def test_batched_mm_same_flops_more_memory_and_eager_measures():
    grouped = run(workload="tiny-mixtral")
    batched = run(workload="tiny-mixtral", experts_implementation="batched_mm")
    assert batched["info"]["model"]["experts_implementation"] == "batched_mm"
    assert batched["flops"]["forward"] == grouped["flops"]["forward"]
    assert batched["memory"]["saved_activations"] > grouped["memory"]["saved_activations"]
    eager = run(workload="tiny-mixtral", mode="measure", experts_implementation="eager")
    assert eager["flops"]["experts_forward"] == grouped["flops"]["experts_forward"]


def test_grouped_mm_formulas_cover_every_layout():
    from lamda_bench.measure.flops import flop_formulas

    formula = flop_formulas()[torch.ops.aten._grouped_mm]
    a, w = torch.randn(16, 8), torch.randn(4, 8, 12)  # 16-byte aligned strides, as the CPU kernel wants
    offs = torch.tensor([4, 4, 12, 16], dtype=torch.int32)  # uneven groups, one empty
    out = torch._grouped_mm(a, w, offs=offs)
    assert formula(a, w, offs, out_val=out) == 2 * 16 * 8 * 12
    grad = torch.randn(16, 12)
    wgrad = torch._grouped_mm(a.t(), grad, offs=offs)  # the weight gradient: (4, 8, 12)
    assert tuple(wgrad.shape) == (4, 8, 12)
    assert formula(a.t(), grad, offs, out_val=wgrad) == 2 * 8 * 16 * 12
    bmm = torch._grouped_mm(torch.randn(4, 16, 8), w)  # 3-D x 3-D: a batched matmul
    assert formula(torch.randn(4, 16, 8), w, out_val=bmm) == 2 * 4 * 16 * 8 * 12


def test_moe_module_detection():
    from lamda_bench.model import moe

    model = build_model(Cell(workload="tiny-mixtral", method="lora"), "meta")
    assert list(moe.experts_modules(model)) == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    assert moe.expert_parameter_suffixes(model) == ["experts.gate_up_proj", "experts.down_proj"]
    assert moe.facts(model)["experts"] == 4 and moe.facts(model)["top_k"] == 2
    assert moe.facts(build_model(Cell(workload="tiny-llama", method="lora"), "meta")) is None


def test_a_quantized_base_says_the_experts_stay_unquantized():
    rec = run(workload="tiny-mixtral", quant="nf4", dtype="bf16", targets="attn")
    assert rec["info"]["quant"]["quantized_linears"] == 8  # attention projections only
    assert "kept in the model dtype" in rec["info"]["quant"]["experts_unquantized"]


def test_shared_experts_count_beside_the_routed_ones(tmp_path):
    # Qwen2-MoE: a dense shared expert (nn.Linear, gated by a 1-output linear) runs on every token
    config = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 64,
              "intermediate_size": 128, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 96,
              "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "num_experts": 8,
              "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": False,
              "vocab_size": 256, "tie_word_embeddings": False, "max_position_embeddings": 512}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    rec = run(workload=str(path), method="full")
    t, h, layers = 2 * 32, 64, 2
    projections = 2 * t * h * (64 + 2 * 32) + 2 * t * 64 * h
    scores = 4 * 2 * 4 * 32 * 32 * 16
    router = 2 * t * h * 8
    experts = 2 * t * 2 * (h * 2 * 32 + 32 * h)
    shared = 3 * 2 * t * h * 96 + 2 * t * h * 1  # gate, up, down; the shared expert's gate
    head = 2 * t * h * 256
    assert rec["flops"]["experts_forward"] == layers * experts
    assert rec["flops"]["forward"] == layers * (projections + scores + router + experts + shared) + head
    lora = run(workload=str(path), targets="all")  # the 64 -> 1 shared-expert gate is a gate: no preset adapts it
    assert lora["info"]["method"]["experts_adapted"] is False  # the shared expert's linears are, the routed are not
    assert lora["info"]["method"]["adapted_layers"] == layers * (4 + 3)


@pytest.mark.slow  # lamda_bench.estimate runs its cell in a fresh process
def test_a_peft_config_with_expert_target_parameters_maps_to_the_expert_presets(tmp_path):
    import warnings

    from peft import LoraConfig

    import lamda_bench
    from lamda_bench.trainer_config import peft_adapter

    experts = ["experts.gate_up_proj", "experts.down_proj"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left unmodelled: no EstimateWarning
        rec = lamda_bench.estimate("tiny-mixtral", peft_config=LoraConfig(r=4, target_parameters=experts),
                                   seq=16, out=tmp_path, device="cpu", dtype="fp32")
    assert rec["cell"]["targets"] == "experts" and rec["info"]["method"]["experts_adapted"] is True
    both = peft_adapter.translate({"r": 4, "target_modules": "all-linear", "target_parameters": experts}, "x", tmp_path,
                                  with_model=False)
    assert both.cell["targets"] == "all+experts" and both.headline() is None
    partial = peft_adapter.translate({"r": 4, "target_parameters": experts[:1]}, "x", tmp_path, with_model=False)
    assert "target_parameters" in partial.headline()  # only some expert weights: said, not guessed
