"""The step-time model: hand-worked per-op costs, the card and efficiency tables' sources, the op
recorder on a tiny real model, and the depth extrapolation of a prediction."""

from __future__ import annotations

import pytest
import torch

from lamda_bench.card import efficiency as eff
from lamda_bench.card.rates import RATES, CardRateError, rates_for
from lamda_bench.card.step_time import NotAffine, extrapolate_time, op_cost, predict_step_time
from lamda_bench.fit.budgets import CARDS

H100 = rates_for("H100-80GB")
LAUNCH = eff.value("launch_s")
GEMM_CAL, MEM_CAL = eff.value("gemm_calibration"), eff.value("memory_calibration")


def _op(name, kind, dtype="bfloat16", flops=0, read=0, written=0, count=1, **extra):
    return {"name": name, "kind": kind, "phase": extra.pop("phase", "forward"), "dtype": dtype, "count": count,
            "flops": flops, "bytes_read": read, "bytes_written": written, "tensors": extra.pop("tensors", 2),
            "elements": extra.pop("elements", 0), "causal": extra.pop("causal", None)}


def test_large_gemm_is_compute_bound_at_the_measured_matmul_fraction():
    n = 8192
    flops = 2 * n ** 3  # 1.1 TFLOP: above Calculon's top bucket (128 GFLOP)
    cost = op_cost(_op("mm", "gemm", flops=flops, read=2 * n * n * 2, written=n * n * 2), H100)
    top = eff.value("gemm_peak_fraction")["H100-80GB"]  # stas00: 80% of 989 on H100 SXM
    assert cost["compute"] == pytest.approx(flops / (989.4e12 * top * GEMM_CAL))
    assert cost["memory"] == pytest.approx(3 * n * n * 2 / (3.35e12 * 0.90 * MEM_CAL))
    assert cost["compute"] > 5 * cost["memory"]
    assert cost["launch"] == LAUNCH


def test_lora_gemm_is_memory_bound():
    """x (4096 tokens x 4096) @ A^T (16 x 4096): arithmetic intensity about r FLOP/byte."""
    tokens, d, r = 4096, 4096, 16
    op = _op("mm", "gemm", flops=2 * tokens * d * r, read=(tokens * d + d * r) * 2, written=tokens * r * 2)
    cost = op_cost(op, H100)
    assert cost["memory"] > cost["compute"]
    out = predict_step_time([op], "H100-80GB")
    assert out["memory_bound_s"] == pytest.approx(cost["memory"]) and out["compute_bound_s"] == 0


def test_fp32_gemm_runs_at_the_fp32_rate_unless_tf32_is_allowed():
    op = _op("mm", "gemm", dtype="float32", flops=2 * 8192 ** 3, read=1, written=1)
    plain, tf32 = op_cost(op, H100)["compute"], op_cost(op, H100, allow_tf32=True)["compute"]
    assert plain / tf32 == pytest.approx(494.7 / 66.9)


def test_elementwise_add_moves_its_bytes_at_the_bucketed_bandwidth():
    size = 64 * 2 ** 20  # 64 MiB each: two inputs, one output, 201 MB moved (>= 100 MB bucket: 0.90)
    cost = op_cost(_op("add", "elementwise", read=2 * size, written=size), H100)
    assert cost["compute"] == 0
    assert cost["memory"] == pytest.approx(3 * size / (3.35e12 * 0.90 * MEM_CAL))
    small = op_cost(_op("add", "elementwise", read=2 * 1000, written=1000), H100)
    assert small["memory"] < LAUNCH  # a tiny op costs its launch, not its bytes


def test_memory_fraction_interpolates_between_calculon_buckets():
    mid = (10e6 * 100e6) ** 0.5  # halfway in log between the 10 MB (0.75) and 100 MB (0.90) buckets
    cost = op_cost(_op("mul", "elementwise", read=mid, written=0), H100)
    assert cost["memory"] == pytest.approx(mid / (3.35e12 * 0.825 * MEM_CAL))


def test_causal_attention_does_half_the_counted_work():
    b, h, s, d = 4, 32, 1024, 128
    flops = 4 * b * h * s * s * d  # the FLOP counter's convention: full s x s
    fwd = op_cost(_op("_scaled_dot_product_flash_attention", "attention", flops=flops, causal=True), H100)
    assert fwd["compute"] == pytest.approx(flops * 0.5 / (989.4e12 * eff.value("attention_forward_fraction")))
    full = op_cost(_op("_scaled_dot_product_flash_attention", "attention", flops=flops, causal=False), H100)
    assert full["compute"] == pytest.approx(2 * fwd["compute"])
    bwd = op_cost(_op("x_backward", "attention", flops=flops, causal=True, phase="backward"), H100)
    assert bwd["compute"] > fwd["compute"]  # backward reaches a smaller fraction


def test_many_tiny_ops_are_host_bound():
    ops = [_op("add", "elementwise", read=8, written=4, count=10000), _op("view", "none", count=20000)]
    out = predict_step_time(ops, "H100-80GB")
    host = 10000 * eff.value("host_op_s") + 20000 * eff.value("host_view_s")
    assert out["host_s"] == pytest.approx(host)
    assert out["bound"] == "host" and out["step_s"] == pytest.approx(host) and host > out["device_s"]
    assert out["kernels"] == 10000 and out["ops"] == 30000


def test_foreach_optimizer_launches_per_tensor_group_and_chunk():
    tensors = 448  # LLaMA-7B LoRA on all projections: 32 x 7 x 2 adapter matrices
    op = _op("_foreach_mul_", "optimizer", read=10, written=10, tensors=tensors, elements=10)
    cost = op_cost(op, H100)
    assert cost["launch"] == pytest.approx(-(-tensors // eff.value("foreach_tensors_per_launch")) * LAUNCH)
    assert cost["host"] == pytest.approx(eff.value("host_op_s") + tensors * eff.value("host_foreach_tensor_s"))


def test_every_card_has_a_sourced_rate_entry_named_as_fit_cards():
    assert {c.name for c in CARDS.values()} == set(RATES)
    for rates in RATES.values():
        assert rates.source.strip() and rates.bandwidth > 0
        assert rates.bf16 > 0 and rates.fp32 > 0 and rates.tf32 >= rates.fp32 or rates.name == "T4-16GB"
    assert rates_for("rtx4090-24gb").bf16 == pytest.approx(165.2e12)  # fp32 accumulation, not 330


def test_unknown_card_is_one_line():
    with pytest.raises(CardRateError) as e:
        predict_step_time([], "GTX-1080")
    assert "\n" not in str(e.value) and "GTX-1080" in str(e.value)


def test_every_efficiency_constant_names_its_source():
    for name, constant in eff.TABLE.items():
        assert constant.source.strip(), name


def _block(depth):
    ops = [_op("mm", "gemm", flops=2 * 4096 ** 3, read=3 * 2 ** 25, written=2 ** 25, count=7 * depth),
           _op("add", "elementwise", read=2 ** 26, written=2 ** 25, count=12 * depth),
           _op("view", "none", count=30 * depth), _op("nll_loss_forward", "reduction", read=2 ** 29, written=4)]
    return ops


def test_extrapolated_time_equals_the_full_prediction():
    per_depth = {d: predict_step_time(_block(d), "A100-80GB") for d in (3, 4, 5)}
    got, want = extrapolate_time(per_depth, 32), predict_step_time(_block(32), "A100-80GB")
    for key in ("step_s", "device_s", "host_s", "launch_s", "compute_bound_s", "memory_bound_s"):
        assert got[key] == pytest.approx(want[key], rel=1e-9)
    assert got["by_kind_s"]["gemm"] == pytest.approx(want["by_kind_s"]["gemm"])


def test_extrapolation_refuses_unlike_depths():
    per_depth = {d: predict_step_time(_block(d), "A100-80GB") for d in (3, 4)}
    per_depth[5] = predict_step_time(_block(7), "A100-80GB")
    with pytest.raises(NotAffine):
        extrapolate_time(per_depth, 32)


def test_op_recorder_on_a_tiny_real_model(make_cell):
    """Real autograd on tiny-llama: the recorder's FLOPs equal the FLOP counter's, views move
    nothing, identical ops are one entry with a count."""
    from lamda_bench.measure import FlopCounter, ModuleScope
    from lamda_bench.measure.ops import OpRecorder
    from lamda_bench.model import workloads

    cell = make_cell()
    model = workloads.build_model(cell, "cpu")
    inputs = workloads.make_inputs(cell, "cpu")
    scope = ModuleScope(model)
    rec = OpRecorder(scope)
    flops = FlopCounter(model, lambda n: False, scope)
    with rec, flops:
        workloads.compute_loss(cell, model, inputs).backward()
    ops = rec.ops()
    assert sum(o["flops"] * o["count"] for o in ops) == flops.forward + flops.backward > 0
    assert all(o["bytes_read"] == o["bytes_written"] == 0 for o in ops if o["kind"] == "none")
    assert any(o["name"] == "view" and o["kind"] == "none" for o in ops)
    assert any(o["count"] > 1 for o in ops if o["kind"] == "gemm")  # the two blocks' matmuls share entries
    assert len(ops) < sum(o["count"] for o in ops)
    mm = next(o for o in ops if o["name"] == "mm" and o["phase"] == "forward")
    assert mm["bytes_read"] > 0 and mm["bytes_written"] > 0 and mm["dtype"] == "float32"
    out = predict_step_time(ops, "RTX4090-24GB")
    assert out["step_s"] >= max(out["device_s"], out["host_s"]) > 0


def test_op_recorder_prices_an_optimizer_step_as_a_steady_one():
    """In-place foreach ops write the lists they mutate; the first step's lazy AdamW state init
    (zeros_like per parameter, inside optimizer.step()) is marked first_step_only, and the
    prediction leaves it out; an embedding reads the rows it gathers, not its whole table."""
    from lamda_bench.measure import ModuleScope
    from lamda_bench.measure.ops import OpRecorder

    model = torch.nn.Sequential(torch.nn.Embedding(1000, 16), torch.nn.Linear(16, 16))
    opt = torch.optim.AdamW(model.parameters(), foreach=True)
    rec = OpRecorder(ModuleScope(model))
    with rec:
        model(torch.arange(8).view(2, 4)).sum().backward()
        opt.step()
    ops = rec.ops()
    lerp = next(o for o in ops if o["name"] == "_foreach_lerp_")
    params = sum(p.numel() * 4 for p in model.parameters())
    assert lerp["phase"] == "optimizer" and lerp["bytes_written"] == params and lerp["bytes_read"] == 2 * params
    init = [o for o in ops if o["first_step_only"]]
    assert init and all(o["name"] == "zeros_like" and o["phase"] == "optimizer" and o["bytes_read"] == 0 for o in init)
    assert sum(o["count"] for o in init) == 2 * len(list(model.parameters()))  # exp_avg and exp_avg_sq
    emb = next(o for o in ops if o["name"] == "embedding")
    assert emb["bytes_read"] == 8 * 16 * 4 + 8 * 8  # 8 rows of 16 fp32, and 8 int64 indices
    without = predict_step_time([o for o in ops if not o["first_step_only"]], "H100-80GB")
    assert predict_step_time(ops, "H100-80GB")["device_s"] == pytest.approx(without["device_s"])
    with rec:  # a second step: the state exists, nothing is first-step-only
        opt.step()
    assert sum(o["count"] for o in rec.ops() if o["first_step_only"]) == sum(o["count"] for o in init)


def test_cpu_dropout_is_priced_as_cudas_fused_kernel():
    """bernoulli_ + div_ + mul (CPU's dropout) -> native_dropout; the backward grad * noise ->
    native_dropout_backward reading a bool mask; other muls and a trace without dropout unchanged."""
    from lamda_bench.card.cuda_dropout import cuda_dropout

    b = 4 * 1000  # 1000 fp32 elements
    ops = [_op("bernoulli_", "elementwise", "float32", read=0, written=b, count=3),
           _op("div_", "elementwise", "float32", read=b, written=b, count=3),
           _op("mul", "elementwise", "float32", read=2 * b, written=b, count=5),
           _op("mul", "elementwise", "float32", read=2 * b, written=b, count=4, phase="backward"),
           _op("add", "elementwise", "float32", read=2 * b, written=b, count=2)]
    out = {(o["name"], o["phase"]): o for o in cuda_dropout(ops)}
    assert ("bernoulli_", "forward") not in out and ("div_", "forward") not in out
    assert out[("mul", "forward")]["count"] == 2 and out[("mul", "backward")]["count"] == 1
    drop, back = out[("native_dropout", "forward")], out[("native_dropout_backward", "backward")]
    assert (drop["count"], drop["bytes_read"], drop["bytes_written"]) == (3, b, b + 1000)
    assert (back["count"], back["bytes_read"], back["bytes_written"]) == (3, b + 1000, b)
    assert out[("add", "forward")]["count"] == 2
    plain = [_op("mul", "elementwise", "float32", read=2 * b, written=b)]
    assert cuda_dropout(plain) == plain


def test_a100_attention_runs_at_its_own_published_fraction():
    from lamda_bench.card.step_time import attention_fraction

    assert attention_fraction("A100-80GB", backward=False) == 0.50
    assert attention_fraction("A100-80GB", backward=True) == 0.40
    assert attention_fraction("H100-80GB", backward=False) == eff.value("attention_forward_fraction")
