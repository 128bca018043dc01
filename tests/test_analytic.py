"""Closed forms checked against hand arithmetic (and, in test_execute, against measurements)."""

import pytest

from lamda_bench import analytic as A
from lamda_bench.analytic import AdaptedLinear


def llama7b_layers(layers=32):
    """LLaMA2-7B's seven projections per block: hidden 4096, intermediate 11008."""
    h, i = 4096, 11008
    out = []
    for n in range(layers):
        first = n == 0
        out += [AdaptedLinear(h, h, input_requires_grad=not first, input_group=f"{n}.attn") for _ in "qkv"]
        out.append(AdaptedLinear(h, h, input_group=f"{n}.o"))
        out += [AdaptedLinear(h, i, input_group=f"{n}.mlp") for _ in "gu"]
        out.append(AdaptedLinear(i, h, input_group=f"{n}.down"))
    return out


def test_llama7b_lora_trainable_is_2498560_r():
    layers = llama7b_layers()
    for r in (1, 8, 16):
        assert A.trainable("lora", layers, r) == 2_498_560 * r
        assert A.trainable("pissa", layers, r) == 2_498_560 * r


def test_llama7b_lamda_trainable_s_plus_b_then_s_only():
    layers = llama7b_layers()
    r = 16
    assert A.trainable("lamda", layers, r) == 224 * r * r + 32 * 42_496 * r
    frozen = lambda rl, step: 0  # noqa: E731
    assert A.trainable("lamda", layers, r, b_schedule=frozen) == 224 * r * r


def test_other_methods_trainable():
    layer = AdaptedLinear(10, 6)
    assert A.layer_trainable("lora-fa", layer, 4) == 24
    assert A.layer_trainable("dora", layer, 4) == 64 + 6
    assert A.layer_trainable("vera", layer, 4) == 6 + 4
    assert A.trainable("full", [layer], 4, total_params=1234) == 1234
    with pytest.raises(A.AnalyticError, match="total_params"):
        A.trainable("full", [layer], 4)
    with pytest.raises(A.AnalyticError, match="no closed form for method 'nope'"):
        A.trainable("nope", [layer], 4)


def test_lamda_pp_per_layer_ranks():
    layers = [AdaptedLinear(8, 8, r=2), AdaptedLinear(8, 8, r=6)]
    assert A.trainable("lamda++", layers, 4) == (4 + 16) + (36 + 48)


def test_updates_sum_over_steps_with_freezing():
    layer = AdaptedLinear(10, 6)
    sched = lambda rl, step: max(rl - step, 0)  # noqa: E731  one column per step
    # r=3: steps 0..4 -> k = 3,2,1,0,0
    expect = sum(9 + 6 * k for k in (3, 2, 1, 0, 0))
    assert A.updates("lamda", [layer], 3, 5, b_schedule=sched) == expect
    assert A.updates("lora", [layer], 3, 5) == 5 * 48


def test_saved_bytes_single_linear_hand_arithmetic():
    n, d_in, d_out, r = 12, 10, 6, 4
    layer = [AdaptedLinear(d_in, d_out, input_requires_grad=False)]
    # fp32 everywhere: x (n*d_in) + A x (n*r), 4 bytes each
    assert A.adapter_saved_bytes("lora", layer, r, n, adapter_itemsize=4, input_itemsize=4) == (120 + 48) * 4
    # bf16 model, fp32 adapters: the cast copy is fp32
    assert A.adapter_saved_bytes("lora", layer, r, n, adapter_itemsize=4, input_itemsize=2) == (120 + 48) * 4
    # bf16 adapters on bf16 input
    assert A.adapter_saved_bytes("lora", layer, r, n, adapter_itemsize=2, input_itemsize=2) == (120 + 48) * 2
    assert A.adapter_saved_bytes("lora-fa", layer, r, n, adapter_itemsize=4, input_itemsize=4) == 48 * 4
    assert A.adapter_saved_bytes("lamda", layer, r, n, adapter_itemsize=4, input_itemsize=4) == 2 * 48 * 4
    frozen_b = lambda rl: 0  # noqa: E731
    assert (
        A.adapter_saved_bytes("lamda", layer, r, n, adapter_itemsize=4, input_itemsize=4, b_trainable=frozen_b)
        == 48 * 4
    )
    # full: the target linear saves its own input (no cast: the weight is in the model dtype)
    assert A.adapter_saved_bytes("full", layer, r, n, adapter_itemsize=4, input_itemsize=2) == 120 * 2
    assert A.adapter_saved_bytes("dora", layer, r, n, adapter_itemsize=4, input_itemsize=4) is None
    # dropout: own dropout output + bool mask per layer
    assert (
        A.adapter_saved_bytes("lora", layer, r, n, adapter_itemsize=4, input_itemsize=4, dropout=0.1)
        == 120 * 5 + 48 * 4
    )


def test_shared_input_counted_once_only_without_cast():
    n, r = 5, 2
    qkv = [AdaptedLinear(8, 8, input_group="attn") for _ in range(3)]
    shared = A.adapter_saved_bytes("lora", qkv, r, n, adapter_itemsize=2, input_itemsize=2)
    assert shared == (n * 8 + 3 * n * r) * 2
    copied = A.adapter_saved_bytes("lora", qkv, r, n, adapter_itemsize=4, input_itemsize=2)
    assert copied == 3 * (n * 8 + n * r) * 4


def test_lora_saved_grows_with_d_lamda_does_not():
    n, r = 64, 8
    lora = [A.adapter_saved_bytes("lora", [AdaptedLinear(d, d)], r, n, adapter_itemsize=4, input_itemsize=4)
            for d in (64, 128, 256)]
    lamda = [A.adapter_saved_bytes("lamda", [AdaptedLinear(d, d)], r, n, adapter_itemsize=4, input_itemsize=4)
             for d in (64, 128, 256)]
    assert lora[0] < lora[1] < lora[2]
    assert lamda[0] == lamda[1] == lamda[2] == 2 * n * r * 4


def test_flops_hand_arithmetic():
    n, d_in, d_out, r = 7, 10, 6, 4
    leaf = AdaptedLinear(d_in, d_out, input_requires_grad=False)
    inner = AdaptedLinear(d_in, d_out, input_requires_grad=True)
    # LoRA forward: A x then B (A x)
    assert A.adapter_flops("lora", [leaf], r, n) == (
        2 * n * r * (d_in + d_out),
        2 * n * (d_in * r + r * d_out + r * d_out),  # dA, dB, grad into A x
    )
    assert A.adapter_flops("lora", [inner], r, n)[1] == 2 * n * (2 * d_in * r + 2 * r * d_out)
    # LaMDA: A x, S (A x), B (S A x); A frozen
    fwd, bwd = A.adapter_flops("lamda", [leaf], r, n)
    assert fwd == 2 * n * (d_in * r + r * r + r * d_out)
    assert bwd == 2 * n * (r * r + d_out * r + d_out * r)  # dS, dB, grad into S A x
    _, bwd_frozen = A.adapter_flops("lamda", [leaf], r, n, b_trainable=lambda rl: 0)
    assert bwd_frozen == 2 * n * (r * r + d_out * r)
    _, bwd_inner = A.adapter_flops("lamda", [inner], r, n)
    assert bwd_inner == bwd + 2 * n * (r * r + d_in * r)
    # LoRA-FA leaf: only dB (A x needs no grad)
    assert A.adapter_flops("lora-fa", [leaf], r, n) == (2 * n * r * (d_in + d_out), 2 * n * r * d_out)
    assert A.adapter_flops("full", [leaf], r, n) == (2 * n * d_in * d_out, 2 * n * d_in * d_out)
    assert A.adapter_flops("full", [inner], r, n) == (2 * n * d_in * d_out, 4 * n * d_in * d_out)
    assert A.adapter_flops("dora", [leaf], r, n) is None
    # VeRA: frozen shared A, B; lambda_d (trainable) scales A x, so B's input needs a grad
    assert A.adapter_flops("vera", [leaf], r, n) == (2 * n * r * (d_in + d_out), 2 * n * r * d_out)
    assert A.adapter_flops("vera", [inner], r, n)[1] == 2 * n * r * (d_out + d_in)


def test_predict_block_shape():
    layers = llama7b_layers(2)
    p = A.predict("lamda", layers, 8, 32, steps=4, accounted_step=1, adapter_itemsize=4, input_itemsize=2,
                  b_schedule=lambda rl, s: rl if s == 0 else 0)
    assert p["params"]["trainable"] == 14 * 64 + 2 * 42_496 * 8
    assert p["params"]["updates"] == p["params"]["trainable"] + 3 * 14 * 64
    assert p["memory"]["saved_activations_adapter"] == 14 * 32 * 8 * 4  # B frozen at step 1
    gc = A.predict("lora", layers, 8, 32, steps=1, accounted_step=0, adapter_itemsize=4, input_itemsize=2,
                   gradient_checkpointing=True)
    assert gc["memory"]["saved_activations_adapter"] is None
