"""Estimate mode: a meta-built PEFT LLaMA converted to fake tensors runs a full training
step, and every tracker reports exactly what it reports for the same step on real CPU
tensors."""

import contextlib

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from lamda_bench.model.fake import FakeConversionError, fake_device_supported, to_fake
from lamda_bench.measure import FlopCounter, LiveMemoryTracker, ModuleScope, SavedTensorTracker, StepTrackers


def _tiny_peft_llama(meta: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=50, max_position_embeddings=64, tie_word_embeddings=True,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = LlamaForCausalLM(cfg)
    lora = LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      lora_dropout=0.0)
    return get_peft_model(model, lora)


def _is_adapter(name):
    return "lora_" in name


def _tracked_step(model, mode=None):
    with mode if mode is not None else contextlib.nullcontext():
        ids = torch.randint(0, 50, (2, 12))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        scope = ModuleScope(model)
        with scope, SavedTensorTracker(model, _is_adapter, scope) as saved, \
                FlopCounter(model, _is_adapter, scope) as flops, LiveMemoryTracker(model, opt, scope) as live:
            # Every tracker is told the phase, as the cell runner's StepTrackers does.
            with live.phase("forward"), flops.phase("forward"), saved.phase("forward"):
                loss = model(input_ids=ids, labels=ids).loss
            with live.phase("backward"), flops.phase("backward"), saved.phase("backward"):
                loss.backward()
            with live.phase("optimizer"), flops.phase("optimizer"), saved.phase("optimizer"):
                opt.step()
                opt.zero_grad()
            del loss
    return saved.summary(), flops.summary(), live.summary(), live.timeline


def test_to_fake_keeps_identity_grad_flags_and_ties():
    model = _tiny_peft_llama(meta=True)
    before = {n: p for n, p in model.named_parameters(remove_duplicate=False)}
    flags = {n: p.requires_grad for n, p in before.items()}
    to_fake(model, "cpu")
    after = dict(model.named_parameters(remove_duplicate=False))
    assert all(after[n] is before[n] for n in before)  # same Parameter objects, now fake
    assert all(isinstance(p, FakeTensor) and isinstance(p, nn.Parameter) for p in after.values())
    assert all(p.device.type == "cpu" for p in after.values())
    assert {n: p.requires_grad for n, p in after.items()} == flags
    assert all(isinstance(b, FakeTensor) for b in model.buffers())
    inner = model.base_model.model
    assert inner.lm_head.weight is inner.model.embed_tokens.weight


def test_fake_step_matches_real_step_exactly():
    real = _tracked_step(_tiny_peft_llama(meta=False))
    fake_model = _tiny_peft_llama(meta=True)
    fake = _tracked_step(fake_model, to_fake(fake_model, "cpu"))
    names = ("saved", "flops", "live", "timeline")
    for name, r, f in zip(names, real, fake):
        assert r == f, f"{name} differs between real and fake tensors"
    saved, flops, live, _ = real
    assert saved["adapter_bytes"] > 0 and flops["adapter_backward"] > 0
    assert live["peak"]["live_bytes"] > live["current"]["weights"]


def test_step_trackers_bundle_matches_separate_trackers():
    model = _tiny_peft_llama(meta=True)
    separate = _tracked_step(model, to_fake(model, "cpu"))
    model = _tiny_peft_llama(meta=True)
    with to_fake(model, "cpu"):
        ids = torch.randint(0, 50, (2, 12))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        with StepTrackers(model, _is_adapter, opt) as tr:
            with tr.phase("forward"):
                loss = model(input_ids=ids, labels=ids).loss
            with tr.phase("backward"):
                loss.backward()
            with tr.phase("optimizer"):
                opt.step()
                opt.zero_grad()
            del loss
    got = tr.summary()
    saved = {k: v for k, v in separate[0].items() if k != "tensors"}
    assert (got["saved"], got["flops"], got["live"], tr.live.timeline) == (saved, *separate[1:])


def test_step_trackers_tell_the_saved_tracker_that_forward_ended():
    """A graph dropped after forward (here: no backward at all) was kept through forward, so it
    is saved, not discarded; the saved-tensor tracker knows forward ended only from a phase."""
    model = _tiny_peft_llama(meta=False)
    ids = torch.randint(0, 50, (2, 12))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with StepTrackers(model, _is_adapter, opt, timeline=False) as tr:
        with tr.phase("forward"):
            loss = model(input_ids=ids, labels=ids).loss
        with tr.phase("backward"):
            del loss  # the graph and its saved tensors die outside any backward
    assert tr.saved.total_bytes > 0
    assert tr.saved.discarded == {"adapter": 0, "base": 0}


def test_the_cell_runner_steps_through_step_trackers(monkeypatch):
    """runner/step.py builds its trackers with StepTrackers (the bundle tested above is the one
    that runs): one bundle per step that runs, the instrumented one with every tracker on."""
    from lamda_bench.runner import run_cell, step

    made = []

    class Spy(StepTrackers):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(tuple(t is not None for t in (self.saved, self.flops, self.live)))

    monkeypatch.setattr(step, "StepTrackers", Spy)
    rec = run_cell(dict(workload="linear", method="lora", d_in=16, d_out=16, device="cpu", mode="measure",
                        warmup=2, steps=1))
    assert rec["status"] == "ok", rec["error"]
    assert made == [(False, True, False), (False, True, False), (True, True, True)]


def test_to_fake_rejects_real_weights():
    with pytest.raises(FakeConversionError, match="not meta: build the model on the meta device"):
        to_fake(nn.Linear(2, 2), "cpu")


@pytest.mark.skipif(torch.backends.cuda.is_built(), reason="this torch has CUDA: fake CUDA tensors work")
def test_fake_cuda_refused_on_cpu_only_torch():
    # autograd aborts the process (C++ abort) on fake CUDA tensors without CUDA support
    assert not fake_device_supported("cuda")
    with torch.device("meta"):
        lin = nn.Linear(2, 2)
    with pytest.raises(FakeConversionError, match="fake cuda tensors cannot run a training step"):
        to_fake(lin, "cuda")


@pytest.mark.slow
def test_llama2_7b_lora_estimate_step_by_hand():
    """Full 32-layer LLaMA2-7B, bf16, batch 4 x seq 1024, PEFT LoRA r=16 on all seven
    projections (fp32 adapters, PEFT's default): a whole training step on fake tensors."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    L, d, ff, heads, vocab, r, b, s = 32, 4096, 11008, 32, 32000, 16, 4, 1024
    cfg = LlamaConfig(hidden_size=d, intermediate_size=ff, num_hidden_layers=L, num_attention_heads=heads,
                      num_key_value_heads=heads, vocab_size=vocab, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0))
    mode = to_fake(model, "cpu")
    with mode:
        ids = torch.randint(0, vocab, (b, s))
        scope = ModuleScope(model)
        with scope, SavedTensorTracker(model, _is_adapter, scope, keep_tensors=False) as saved, \
                FlopCounter(model, _is_adapter, scope) as flops:
            model(input_ids=ids, labels=ids).loss.backward()
    T = b * s
    linear = 4 * d * d + 3 * d * ff  # per layer
    lora = r * (4 * (d + d) + 3 * (d + ff))  # per layer: A and B of every projection
    attention = 4 * b * heads * s * s * (d // heads)  # per layer, full s x s
    assert flops.adapter_forward == 2 * T * lora * L
    by_hand = 2 * T * (linear * L + d * vocab) + attention * L + 2 * T * lora * L
    # some transformers versions compute the rotary angles as a (1, d_head/2, 1) @ (1, 1, s)
    # matmul (counted once), others as a broadcast product (not a matmul)
    rotary = 2 * (d // heads // 2) * s
    assert flops.forward in (by_hand, by_hand + rotary)
    # adapter saved: PEFT casts each adapted input to fp32 (q, k, v, o, gate, up at width d;
    # down at ff) and lora_B saves A x (fp32, width r) for each of the seven
    assert saved.adapter_bytes == L * 4 * (6 * T * d + T * ff + 7 * T * r)
