"""FlopCounter: hand-computed matmul FLOPs (2*m*n*k per product), adapter attribution in
forward and backward, and the CPU flash-attention formulas torch lacks."""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lamda_bench.measure import ATTENTION_COUNTING, FlopCounter
from lamda_bench.measure.flops import attention_backward_flop_count, attention_flop_count


def _count(model, x, is_adapter):
    with FlopCounter(model, is_adapter) as fc:
        with fc.phase("forward"):
            y = model(x).sum()
        with fc.phase("backward"):
            y.backward()
    return fc


def test_linear_stack_forward_backward_and_attribution():
    n = 5
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    fc = _count(model, torch.randn(n, 8), lambda name: name == "0")
    assert fc.forward == 2 * n * 8 * 16 + 2 * n * 16 * 4
    # "2": grad of its input and of its weight; "0": weight grad only (x needs no grad)
    assert fc.backward == 2 * (2 * n * 16 * 4) + 2 * n * 8 * 16
    assert fc.adapter_forward == 2 * n * 8 * 16
    assert fc.adapter_backward == 2 * n * 8 * 16
    assert fc.by_module["backward"] == {"0": 2 * n * 8 * 16, "2": 2 * (2 * n * 16 * 4)}


def test_unmarked_phases_follow_autograd():
    model = nn.Linear(4, 4)
    with FlopCounter(model, lambda n: False) as fc:
        model(torch.randn(3, 4, requires_grad=True)).sum().backward()
    assert fc.forward == 2 * 3 * 4 * 4 and fc.backward == 2 * (2 * 3 * 4 * 4)


def test_peft_lora_layer_adapter_flops():
    from peft import LoraConfig, get_peft_model

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(32, 24)

        def forward(self, x):
            return self.lin(x)

    n, d_in, d_out, r = 6, 32, 24, 4
    model = get_peft_model(One(), LoraConfig(r=r, target_modules=["lin"], lora_dropout=0.0))
    fc = _count(model, torch.randn(n, d_in), lambda name: "lora_" in name)
    assert fc.adapter_forward == 2 * n * d_in * r + 2 * n * r * d_out
    assert fc.forward - fc.adapter_forward == 2 * n * d_in * d_out  # the frozen base
    # backward: lora_B weight + input grads, lora_A weight grad; nothing for the frozen base
    assert fc.adapter_backward == 2 * (2 * n * r * d_out) + 2 * n * d_in * r
    assert fc.backward == fc.adapter_backward


def _tiny_llama(layers=2, hidden=32, heads=4):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, vocab_size=50, max_position_embeddings=64,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def test_cpu_sdpa_counted_with_torch_formula_on_tiny_llama():
    layers, hidden, heads, b, s = 2, 32, 4, 2, 16
    d = hidden // heads
    model = _tiny_llama(layers, hidden, heads)
    ids = torch.randint(0, 50, (b, s))

    with FlopCounter(model, lambda n: False) as fc:
        with fc.phase("forward"):
            loss = model(input_ids=ids, labels=ids).loss
        with fc.phase("backward"):
            loss.backward()
    op = "_scaled_dot_product_flash_attention_for_cpu"
    assert fc.attention_ops == {op: layers, op + "_backward": layers}
    # Q@K^T and P@V: 2 * (2*b*h*s*s*d) forward; 5 such products backward
    assert fc.by_op["forward"][op] == layers * 4 * b * heads * s * s * d
    assert fc.by_op["backward"][op + "_backward"] == layers * 10 * b * heads * s * s * d
    assert "causal masking NOT discounted" in ATTENTION_COUNTING

    # torch's own FlopCounterMode counts 0 for this kernel; everything else agrees
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as ref:
        model(input_ids=ids, labels=ids).loss.backward()
    ref_ops = {k.__name__: v for k, v in ref.get_flop_counts()["Global"].items()}
    assert op not in ref_ops
    attention = fc.by_op["forward"][op] + fc.by_op["backward"][op + "_backward"]
    assert fc.forward + fc.backward - attention == ref.get_total_flops()


def test_summary_is_json_ready():
    import json

    fc = _count(nn.Linear(3, 3), torch.randn(2, 3), lambda n: False)
    s = json.loads(json.dumps(fc.summary()))
    assert s["forward"] == 2 * 2 * 3 * 3 and s["attention_counting"] == ATTENTION_COUNTING


def test_attention_formula_grouped_query_heads():
    q, kv = (2, 8, 16, 4), (2, 2, 16, 4)  # 8 query heads share 2 k/v heads
    assert attention_flop_count(q, kv, kv) == 2 * (2 * 2 * 8 * 16 * 16 * 4)
    assert attention_backward_flop_count(q, q, kv, kv) == 5 * (2 * 2 * 8 * 16 * 16 * 4)
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    # torch 2.13 (the pinned version) supports GQA in its own formula: the numbers must agree
    theirs = (sdpa_flop_count(q, kv, kv), sdpa_backward_flop_count(q, q, kv, kv))
    assert theirs == (attention_flop_count(q, kv, kv), attention_backward_flop_count(q, q, kv, kv))
