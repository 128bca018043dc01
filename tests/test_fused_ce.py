"""The fused linear cross-entropy (cell key ``loss``, model/fused_ce.py): Liger's chunked loss as
a plain-torch equivalent; values and gradients equal plain cross-entropy's, measure equals
estimate, the estimate drops the full logits, and a default cell keeps its id."""

from __future__ import annotations

import json

import pytest
import torch

from lamda_bench.methods import AdapterSpec, get_method
from lamda_bench.model import fused_ce, workloads
from lamda_bench.runner import run_cell
from lamda_bench.suite.cell import Cell, CellError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIGHT = dict(rtol=1e-5, atol=1e-6)
ID_BEFORE = "tiny-llama-lora-r8-e1258d0bcfc1"  # Cell(workload="tiny-llama", method="lora").id before the key


def ok(record):
    assert record["status"] == "ok", record["error"]
    return record


def test_chunk_size_is_ligers():
    # Liger's docstring example: BT = 4096 * 4, V = 32000, H = 4096 -> inc_factor 8, chunk 2048
    assert fused_ce.chunk_size(4096 * 4, 4096, 32000) == 2048
    # Llama 3.1 8B at 2 x 4096: inc_factor ceil(128256 / 4096) = 32, 8192 / 32 = 256 rows
    assert fused_ce.chunk_size(8192, 4096, 128256) == 256
    assert fused_ce.chunk_size(37, 16, 300) == 2  # ceil(37 / 19) = 2, a power of two


@pytest.mark.parametrize("weight_trains", [True, False])
def test_loss_and_gradients_equal_plain_cross_entropy(weight_trains):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 16, generator=gen, requires_grad=True)  # 37 rows: chunks of 2, the last short
    w = torch.randn(300, 16, generator=gen, requires_grad=weight_trains)
    t = torch.randint(0, 300, (37,), generator=gen)
    t[[3, 36]] = -100  # ignored rows
    fused = fused_ce.fused_linear_cross_entropy(x, w, t)
    (3 * fused).backward()  # an upstream gradient other than 1: backward scales the kept gradients
    gx, gw = x.grad.clone(), (w.grad.clone() if weight_trains else None)
    x.grad, w.grad = None, None
    plain = torch.nn.functional.cross_entropy(x @ w.t(), t)
    (3 * plain).backward()
    assert torch.allclose(fused, plain, **TIGHT)
    assert torch.allclose(gx, x.grad, **TIGHT)
    assert gx[3].abs().sum() == 0  # an ignored row gets no gradient
    if weight_trains:
        assert torch.allclose(gw, w.grad, **TIGHT)


def _lora_model(cell):
    model = workloads.build_model(cell, "cpu")
    targets = workloads.resolve_targets(cell, model)
    return get_method("lora").apply(model, AdapterSpec(r=4, alpha=8.0, targets=targets, dtype=torch.float32)).model


def test_fused_loss_through_a_peft_model_equals_the_models_own():
    cell = Cell(workload="tiny-llama", method="lora", dtype="fp32", device="cpu", batch=2, seq=16)
    model = _lora_model(cell)
    model.eval()  # no dropout: the two forwards must see the same network
    for p in model.parameters():  # lora_B starts at zero: give the adapters something to pass on
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    inputs = workloads.make_inputs(cell, "cpu")
    grads = {}
    for loss_key in ("model", "fused_linear_ce"):
        loss = workloads.compute_loss(Cell(**{**cell.__dict__, "loss": loss_key}), model, inputs)
        loss.backward()
        grads[loss_key] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        model.zero_grad(set_to_none=True)
    (own, own_grads), (fused, fused_grads) = grads["model"], grads["fused_linear_ce"]
    assert torch.allclose(own, fused, **TIGHT)
    assert own_grads.keys() == fused_grads.keys() and len(own_grads) > 0
    for name in own_grads:
        assert torch.allclose(own_grads[name], fused_grads[name], **TIGHT), name


def test_measure_equals_estimate_to_the_byte():
    cell = dict(workload="tiny-llama", method="lora", r=4, batch=2, seq=16, dtype="bf16", device="cpu",
                mode="measure", warmup=1, steps=1, loss="fused_linear_ce")
    real = ok(run_cell(cell))
    fake = ok(run_cell({**cell, "mode": "estimate"}))
    for key in ("weights", "grads", "optimizer", "saved_activations", "peak_forward", "peak_backward",
                "peak_step", "peak", "at_peak", "peak_steady"):
        assert real["memory"][key] == fake["memory"][key], key
    assert real["flops"] == fake["flops"]
    assert real["info"]["loss"] == fake["info"]["loss"]
    assert fake["info"]["loss"]["chunk_size"] == fused_ce.chunk_size(32, 64, 256) == 8


def test_estimate_drops_the_full_logits_on_a_large_vocab(tmp_path):
    config = dict(workloads.get_workload("tiny-llama").config)
    config["vocab_size"] = 16384  # logits: 2 x 64 rows x 16384 >> everything else of a 64-wide model
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    cell = dict(workload=str(path), method="lora", r=4, batch=2, seq=64, dtype="bf16", device="cpu",
                mode="estimate", warmup=1, steps=1)
    default = ok(run_cell(cell))
    fused = ok(run_cell({**cell, "loss": "fused_linear_ce"}))
    logits_fp32 = 2 * 64 * 16384 * 4
    assert fused["info"]["loss"]["full_logits_fp32_bytes"] == logits_fp32
    assert default["memory"]["peak"] - fused["memory"]["peak"] >= logits_fp32
    assert "loss" not in default["info"]
    assert "Triton" in fused["info"]["loss"]["modelled_on"]


def test_default_cell_id_is_unchanged():
    cell = Cell(workload="tiny-llama", method="lora")
    assert Cell(workload="tiny-llama", method="lora", loss="model").id == cell.id
    assert Cell(workload="tiny-llama", method="lora", loss="fused_linear_ce").id != cell.id
    # the id recorded before the key existed (this cell's hash at the parent commit)
    assert cell.id == ID_BEFORE


@pytest.mark.parametrize("workload, words", [("linear", "causal-LM workloads only"),
                                             ("tiny-deberta", "causal-LM workloads only"),
                                             ("gemma2-9b", "final_logit_softcapping")])
def test_workloads_it_does_not_apply_to_are_refused_in_one_line(workload, words):
    cell = Cell(workload=workload, method="lora", loss="fused_linear_ce")
    found = workloads.loss_problem(cell)
    assert found is not None and words in found and "\n" not in found
    assert workloads.loss_problem(Cell(workload=workload, method="lora")) is None


def test_an_adapted_lm_head_is_refused():
    cell = Cell(workload="tiny-llama", method="lora", dtype="fp32", device="cpu", targets=("q_proj", "lm_head"),
                loss="fused_linear_ce", mode="measure", batch=1, seq=8, warmup=0, steps=0)
    rec = run_cell(cell.to_dict())
    assert rec["status"] != "ok" and "lm_head" in rec["error"]


def test_bad_loss_value_is_one_line():
    assert Cell(workload="tiny-llama", method="lora", loss="liger").problem()[0] == "loss"
    with pytest.raises(CellError):
        Cell(workload="tiny-llama", method="lora", loss="liger").validate()


# ---- trainer configs ------------------------------------------------------------------------


def _fate(t, key):
    return next(f for f in t.fates if f.key == key)


def test_trainer_configs_map_their_liger_switches_to_the_key():
    from lamda_bench.trainer_config import translate
    from lamda_bench.trainer_config.fate import MAPPED, NO_EFFECT, NOT_MODELLED

    axo = {"base_model": "tiny-llama", "adapter": "lora", "lora_r": 4}
    t = translate({**axo, "liger_fused_linear_cross_entropy": True, "cut_cross_entropy": True}, "x.yml")
    assert _fate(t, "liger_fused_linear_cross_entropy").fate == MAPPED and t.cell["loss"] == "fused_linear_ce"
    assert _fate(t, "cut_cross_entropy").fate == NOT_MODELLED and "keeping less" in _fate(t, "cut_cross_entropy").note
    t = translate({**axo, "liger_fused_linear_cross_entropy": False}, "x.yml")
    assert _fate(t, "liger_fused_linear_cross_entropy").fate == NO_EFFECT and "loss" not in t.cell
    # HF Trainer: Liger's defaults turn on RoPE, RMSNorm and SwiGLU too: the loss is set, the key stays flagged
    hf = {"per_device_train_batch_size": 2, "use_liger_kernel": True}
    t = translate(hf, "x.json")
    fate = _fate(t, "use_liger_kernel")
    assert fate.fate == NOT_MODELLED and t.cell["loss"] == "fused_linear_ce" and "loss = fused_linear_ce" in fate.line()
    t = translate({**hf, "liger_kernel_config": {"fused_linear_cross_entropy": False}}, "x.json")
    assert "loss" not in t.cell
    t = translate({**hf, "use_liger_kernel": False}, "x.json")
    assert _fate(t, "use_liger_kernel").fate == NO_EFFECT and "loss" not in t.cell
    # LLaMA-Factory: on for sft and pt; a stage that needs the logits turns the fused loss off
    lf = {"model_name_or_path": "tiny-llama", "finetuning_type": "lora", "enable_liger_kernel": True}
    for stage, fused in ((None, True), ("sft", True), ("pt", True), ("dpo", False)):
        doc = lf if stage is None else {**lf, "stage": stage}
        t = translate(doc, "x.yaml", fmt="llama-factory")
        assert (t.cell.get("loss") == "fused_linear_ce") is fused, stage
        assert _fate(t, "enable_liger_kernel").fate == NOT_MODELLED


@pytest.mark.slow
def test_llama31_8b_lora_drops_the_logits_and_their_gradient():
    cell = dict(workload="llama3.1-8b", method="lora", r=16, batch=2, seq=4096, dtype="bf16", mode="estimate",
                warmup=1, steps=1)
    default = ok(run_cell(cell))
    fused = ok(run_cell({**cell, "loss": "fused_linear_ce"}))
    logits_fp32 = 2 * 4096 * 128256 * 4
    assert fused["info"]["loss"]["chunk_size"] == 256
    assert default["memory"]["peak"] - fused["memory"]["peak"] >= 2 * logits_fp32  # the logits and their gradient
