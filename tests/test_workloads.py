"""Workloads: shapes match the published models, builds are cheap on meta, inputs/loss/targets behave."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from lamda_bench.model.workloads import (
    WORKLOADS,
    WorkloadError,
    attention_implementation,
    build_model,
    compute_loss,
    get_workload,
    make_inputs,
    resolve_targets,
    target_linears,
    torch_dtype,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Published parameter counts of the real checkpoints (the shapes must reproduce them).
PUBLISHED = {
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama2-70b": 68_976_648_192,
    "bart-large": 406_291_456,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_full_size_shapes_match_published_counts_on_meta(make_cell, name):
    model = build_model(make_cell(workload=name, dtype="bf16"), "meta")
    assert n_params(model) == PUBLISHED[name]
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_llama2_7b_meta_build_allocates_nothing_and_has_the_paper_shape(make_cell):
    # What keeps the meta build cheap is that no tensor gets storage: every parameter and
    # buffer lives on meta. (Its wall time is a benchmark's business, not a unit test's.)
    model = build_model(make_cell(workload="llama2-7b"), "meta")
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and all(t.device.type == "meta" for t in tensors)
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (4096, 11008, 32)
    assert (cfg.num_attention_heads, cfg.vocab_size) == (32, 32000)
    seventy = build_model(make_cell(workload="llama2-70b"), "meta").config
    assert (seventy.num_key_value_heads, seventy.intermediate_size, seventy.num_hidden_layers) == (8, 28672, 80)


def test_deberta_v3_base_shape(make_cell):
    model = build_model(make_cell(workload="deberta-v3-base"), "meta")
    linears = target_linears(model, resolve_targets(make_cell(workload="deberta-v3-base"), model))
    assert len(linears) == 12 * 6
    assert model.config.hidden_size == 768 and model.config.relative_attention


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_workload_builds_on_meta_and_all_preset_resolves(make_cell, name):
    depth = 4 if name == "llama3.2-11b-vision" else 2  # its first cross-attention layer is layer 3
    kw = {"layers": depth} if name != "linear" else {"layers": 2, "d_in": 32}
    cell = make_cell(workload=name, **kw)
    model = build_model(cell, "meta")
    targets = resolve_targets(cell, model)
    linears = target_linears(model, targets)
    assert linears and all(isinstance(m, nn.Linear) for m in linears.values())
    blocks = 2 * 2 if get_workload(name).family == "bart" else depth  # bart: 2 encoder + 2 decoder layers
    assert len(linears) % blocks == 0  # every block adapts the same linears
    inputs = make_inputs(cell, "meta")
    assert all(t.device.type == "meta" for t in inputs.values())


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-deberta", "tiny-bart", "linear"])
def test_tiny_workloads_train_on_cpu(make_cell, name):
    cell = make_cell(workload=name, **({"d_in": 16} if name == "linear" else {}))
    model = build_model(cell)
    assert model.training
    assert n_params(model) < 2_000_000  # "a few MB"
    loss = compute_loss(cell, model, make_inputs(cell))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() == 2 and p.shape[0] > 2)


def test_tiny_bart_inputs_carry_decoder_ids_shifted_from_labels(make_cell):
    inputs = make_inputs(make_cell(workload="tiny-bart"))
    assert set(inputs) == {"input_ids", "decoder_input_ids", "labels"}
    assert torch.equal(inputs["decoder_input_ids"][:, 1:], inputs["labels"][:, :-1])


def test_layers_override_dtype_and_seed(make_cell):
    model = build_model(make_cell(layers=3, dtype="bf16"))
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert model.dtype == torch.bfloat16
    bart = build_model(make_cell(workload="tiny-bart", layers=1), "meta")
    assert len(bart.model.encoder.layers) == 1 and len(bart.model.decoder.layers) == 1
    a, b, c = (build_model(make_cell(seed=s)) for s in (0, 0, 1))
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    i1, i2 = make_inputs(make_cell()), make_inputs(make_cell())
    assert torch.equal(i1["input_ids"], i2["input_ids"])


def test_attention_implementation_is_chosen_and_readable(make_cell):
    assert attention_implementation(build_model(make_cell(), "meta")) == "sdpa"
    assert attention_implementation(build_model(make_cell(attn_implementation="eager"), "meta")) == "eager"
    assert attention_implementation(build_model(make_cell(workload="tiny-deberta"), "meta")) == "eager"
    assert attention_implementation(build_model(make_cell(workload="linear", d_in=8), "meta")) == "none"
    with pytest.raises(WorkloadError, match="no sdpa attention"):
        build_model(make_cell(workload="tiny-deberta", attn_implementation="sdpa"), "meta")


def test_linear_workload(make_cell):
    cell = make_cell(workload="linear", layers=3, d_in=24, batch=2, seq=5)
    model = build_model(cell)
    assert [n for n in target_linears(model, resolve_targets(cell, model))] == [
        "blocks.0.proj", "blocks.1.proj", "blocks.2.proj"]
    x = make_inputs(cell)["x"]
    assert x.shape == (2, 5, 24) and x.requires_grad
    one = build_model(make_cell(workload="linear", d_in=24, d_out=40))
    assert one.blocks[0].proj.weight.shape == (40, 24) and one.blocks[0].proj.bias is None
    with pytest.raises(WorkloadError, match="needs d_in == d_out"):
        build_model(make_cell(workload="linear", layers=2, d_in=24, d_out=40))


def test_resolve_targets_presets_lists_and_errors(make_cell):
    cell = make_cell()
    model = build_model(cell, "meta")
    assert resolve_targets(cell, model) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert resolve_targets(make_cell(targets="attn"), model) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve_targets(make_cell(targets=("q_proj", "v_proj")), model) == ["q_proj", "v_proj"]
    assert resolve_targets(make_cell(targets="down_proj"), model) == ["down_proj"]
    with pytest.raises(WorkloadError) as err:
        resolve_targets(make_cell(targets=("q_proj", "qproj")), model)
    msg = str(err.value)
    assert "'qproj'" in msg and "did you mean 'q_proj'" in msg and "o_proj" in msg and "\n" not in msg


def test_bad_workload_inputs(make_cell):
    with pytest.raises(WorkloadError, match="did you mean 'llama2-7b'"):
        get_workload("llama-7b")
    with pytest.raises(WorkloadError, match="unknown dtype"):
        torch_dtype("fp8")
    with pytest.raises(WorkloadError, match="layers must be"):
        build_model(make_cell(layers=0), "meta")
    with pytest.raises(WorkloadError, match="linear workload only"):
        build_model(make_cell(d_in=8), "meta")
    assert torch_dtype("bf16") is torch.bfloat16


@pytest.mark.minilm
def test_minilm_loads_the_real_weights(make_cell, minilm_required):
    from lamda_bench.model.pretrained import load_minilm

    model = build_model(make_cell(workload="minilm-l6"))
    reference = load_minilm()
    name = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(dict(model.named_parameters())[name], dict(reference.named_parameters())[name])
    assert attention_implementation(model) == "sdpa" and model.training
    short = build_model(make_cell(workload="minilm-l6", layers=2))
    assert len(short.encoder.layer) == 2
    with pytest.raises(WorkloadError, match="6 pretrained layers"):
        build_model(make_cell(workload="minilm-l6", layers=7))
    meta = build_model(make_cell(workload="minilm-l6"), "meta")
    assert n_params(meta) == n_params(reference)
