"""Quantized frozen base (``quant`` cell key): bitsandbytes' real layers on tiny models.

The byte layout is checked three ways: ``quant_bytes``'s hand count against the tensors
bitsandbytes' own ``quantize_4bit`` / ``int8_vectorwise_quant`` return on this CPU; the record's
``memory.weights`` (the live tracker's count of the real or fake storages) against the closed
form, in estimate mode (fake kernels) and measured on this CPU; and the model's structure
(which layers bitsandbytes owns, what PEFT wrapped, what stayed in the model dtype).
"""

import sys

import pytest
import torch
from torch import nn

from lamda_bench.suite.cell import ID_NEUTRAL_DEFAULTS, Cell
from lamda_bench.runner import run_cell

bnb = pytest.importorskip("bitsandbytes")

from lamda_bench.model import quant  # noqa: E402
from lamda_bench.analytic import quant as quant_bytes  # noqa: E402


def ok(record):
    assert record["status"] == "ok", record["error"]
    return record


def tiny_cell(method, q, mode="estimate", **kw):
    cell = dict(workload="tiny-llama", method=method, r=4, batch=2, seq=16, dtype="bf16", device="cpu",
                mode=mode, warmup=1, steps=1, quant=q)
    cell.update(kw)
    return cell


# ---- the key -------------------------------------------------------------------------------


def test_quant_none_leaves_every_id_unchanged_and_a_format_changes_it():
    assert ID_NEUTRAL_DEFAULTS["quant"] == "none"
    plain = Cell(workload="tiny-llama", method="lora", r=8)
    assert Cell(workload="tiny-llama", method="lora", r=8, quant="none").id == plain.id
    ids = {Cell(workload="tiny-llama", method="lora", r=8, quant=q).id for q in quant.FORMATS}
    assert len(ids) == len(quant.FORMATS) and plain.id not in ids


def test_unknown_quant_is_one_line_error():
    rec = run_cell(tiny_cell("lora", "nf3"))
    assert rec["status"] == "error" and "quant" in rec["error"] and "\n" not in rec["error"]


def test_quant_needs_a_transformers_model():
    rec = run_cell(dict(workload="linear", method="lora", d_in=64, d_out=64, r=4, batch=2, seq=8, device="cpu",
                        mode="estimate", warmup=0, steps=0, quant="nf4"))
    assert rec["status"] == "error" and "transformers model" in rec["error"]


def test_missing_bitsandbytes_is_one_line_not_a_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    rec = run_cell(tiny_cell("lora", "nf4"))
    assert rec["status"] == "error" and "needs bitsandbytes" in rec["error"] and "\n" not in rec["error"]


# ---- the hand count against bitsandbytes' own tensors ---------------------------------------


def _state_tensors(qs):
    out = [qs.absmax, qs.code]
    if qs.nested:
        out += [qs.offset, qs.state2.absmax, qs.state2.code]
    return out


@pytest.mark.parametrize("fmt_name", ["nf4", "fp4", "nf4-dq", "fp4-dq"])
@pytest.mark.parametrize("shape", [(64, 176), (176, 64), (30, 100), (4096, 1024)])
def test_4bit_hand_count_equals_bitsandbytes_tensors(fmt_name, shape):
    fmt = quant.FORMATS[fmt_name]
    d_out, d_in = shape
    w = torch.randn(d_out, d_in, dtype=torch.bfloat16)
    packed, qs = bnb.functional.quantize_4bit(w, blocksize=quant.BLOCKSIZE, quant_type=fmt.quant_type,
                                             compress_statistics=fmt.double_quant)
    storages = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in [packed, *_state_tensors(qs)]}
    assert len(storages) == (5 if fmt.double_quant else 2) + 1  # every part its own storage
    parts = quant_bytes.linear_bytes(fmt, d_in, d_out)
    assert sum(storages.values()) == sum(parts.values())
    assert parts["packed"] == packed.numel() == quant_bytes.stored_elements(fmt, d_in, d_out)


def test_int8_hand_count_equals_bitsandbytes_tensors():
    fmt = quant.FORMATS["int8"]
    w = torch.randn(96, 40, dtype=torch.bfloat16)
    cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.to(torch.float16))
    assert quant_bytes.linear_bytes(fmt, 40, 96) == {"packed": cb.untyped_storage().nbytes(),
                                                     "absmax": scb.untyped_storage().nbytes()}


# ---- records: memory.weights equals the closed form -----------------------------------------


@pytest.mark.parametrize("method,q", [("lora", "nf4"), ("lamda", "nf4"), ("pissa", "nf4"), ("lora", "fp4"),
                                      ("lora", "nf4-dq"), ("lamda", "nf4-dq"), ("lora", "int8"), ("lamda", "int8")])
def test_estimate_weights_equal_the_hand_count(method, q, one_torch_thread, shared_record):
    rec = ok(shared_record(tiny_cell(method, q)))
    assert rec["cell"]["mode"] == "estimate" and rec["cell"]["quant"] == q
    assert rec["info"]["quant"]["format"] == q
    assert rec["memory"]["weights"] == rec["predicted"]["memory"]["weights"]
    plain = ok(shared_record(tiny_cell(method, "none")))
    assert rec["info"]["quant"]["quantized_linears"] == 14  # 7 per block, lm_head kept
    assert rec["memory"]["weights"] < plain["memory"]["weights"]
    assert plain["info"]["quant"] is None


def test_tiny_llama_nf4_weights_by_hand(one_torch_thread, shared_record):
    """The 2-block tiny LLaMA (hidden 64, kv 32, mlp 176, vocab 256), nf4, LoRA r=4, written out."""
    rec = ok(shared_record(tiny_cell("lora", "nf4")))
    linears = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 176), (64, 176), (176, 64)] * 2
    n = sum(a * b for a, b in linears)
    quantized = n // 2 + 4 * n // 64 + 64 * len(linears)  # packed + fp32 absmax per 64 + code map
    rest_bf16 = 2 * (256 * 64 * 2 + 64 * 5)  # embeddings, lm_head, 5 norms
    lora_fp32 = 4 * sum(4 * (a + b) for a, b in linears)
    rotary = rec["memory"]["weights"] - quantized - rest_bf16 - lora_fp32
    assert rotary == 64  # inv_freq and original_inv_freq: 2 x 8 fp32 buffers
    assert rec["memory"]["weights"] == rec["predicted"]["memory"]["weights"]


@pytest.mark.parametrize("method,q", [("lora", "nf4"), ("lamda", "nf4-dq"), ("pissa", "fp4"), ("lora", "int8")])
def test_measured_on_cpu_weights_equal_the_hand_count_and_the_estimate(method, q, one_torch_thread,
                                                                        shared_record):
    measured = ok(run_cell(tiny_cell(method, q, mode="measure")))
    assert measured["cell"]["mode"] == "measure" and measured["time"]["steps_timed"] == 1
    assert measured["memory"]["weights"] == measured["predicted"]["memory"]["weights"]
    estimated = ok(shared_record(tiny_cell(method, q)))
    assert estimated["memory"]["weights"] == measured["memory"]["weights"]


# ---- structure -----------------------------------------------------------------------------


def _tiny_model(q):
    from lamda_bench.model import workloads

    model = workloads.build_model(Cell(workload="tiny-llama", method="lora", dtype="bf16", seed=0), "cpu")
    reference = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    fmt = quant.quantize_base(model, q)
    return model, fmt, reference


def test_every_linear_but_lm_head_is_bitsandbytes_and_counts_as_weights():
    from lamda_bench.measure import LiveMemoryTracker

    model, _, _ = _tiny_model("nf4")
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.bfloat16
    linears = quant.quantized_linears(model)
    assert len(linears) == 14 and all(isinstance(m, bnb.nn.Linear4bit) for m in linears.values())
    assert all(m.weight.dtype == torch.uint8 and not m.weight.requires_grad for m in linears.values())
    tracker = LiveMemoryTracker(model, timeline=False)
    with tracker:
        pass
    expected = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()]}
    assert tracker.current["weights"] == sum(expected.values())
    state = quant_bytes.quantized_base(model).state_storages
    assert len(state) == 2 * 14  # absmax and code map per linear, each a weights storage


@pytest.mark.parametrize("q", ["nf4", "int8"])
def test_qpissa_residual_is_requantized_and_reproduces_the_weight(q, one_torch_thread):
    """PiSSA on a quantized base: SVD of the dequantized W, residual re-quantized in the same
    format, so dequant(Q(W_res)) + s B A stays close to the dequantized W the run started from."""
    from lamda_bench.methods import AdapterSpec, get_method

    model, fmt, _ = _tiny_model(q)
    target = "model.layers.0.mlp.gate_proj"
    before = quant.dequantized_weight(model.get_submodule(target), torch.float32)
    method = get_method("pissa")
    spec = AdapterSpec(r=4, alpha=8.0, targets=("gate_proj",), dtype=torch.bfloat16, options={}, total_steps=3, seed=0)
    with quant.float_base_for_init(model, fmt, method, ("gate_proj",)):
        applied = method.apply(model, spec)
    assert applied.info["init"] == "pissa"
    wrapper = applied.adapted["base_model.model." + target]
    from peft.tuners.lora import bnb as peft_bnb

    assert type(wrapper) is (peft_bnb.Linear4bit if q == "nf4" else peft_bnb.Linear8bitLt)
    base = wrapper.get_base_layer()
    assert base.weight.dtype == (torch.uint8 if q == "nf4" else torch.int8)
    residual = quant.dequantized_weight(base, torch.float32)
    principal = wrapper.scaling["default"] * (wrapper.lora_B["default"].weight.float() @ wrapper.lora_A["default"].weight.float())
    assert principal.norm() > 0.1 * before.norm()  # the SVD ran: the adapter holds the top components
    err = (residual + principal - before).norm() / before.norm()
    assert err < 0.2  # re-quantization error of the residual only (nf4 on random weights: ~0.1)


def test_lamda_wraps_the_quantized_layer_after_its_svd(one_torch_thread):
    rec = ok(run_cell(tiny_cell("lamda", "nf4", mode="measure")))
    assert rec["info"]["method"]["init"].startswith("svd (full")
    assert rec["memory"]["weights"] == rec["predicted"]["memory"]["weights"]


# ---- combinations --------------------------------------------------------------------------


@pytest.mark.parametrize("extra,needle", [
    (dict(method="full"), "full fine-tuning trains the base weights"),
    (dict(method="dora"), "use mode = 'measure'"),  # estimate: PEFT's DoRA needs the bnb class
    (dict(parallel="fsdp2", world_size=2), "parallel = 'none'"),
])
def test_combinations_that_cannot_run_say_so_in_one_line(extra, needle):
    rec = run_cell({**tiny_cell("lora", "nf4"), **extra})
    assert rec["status"] == "error" and needle in rec["error"] and "\n" not in rec["error"]


@pytest.mark.parametrize("q", ["nf4", "int8"])
def test_dora_measured_on_a_quantized_base(q, one_torch_thread):
    rec = ok(run_cell(tiny_cell("dora", q, mode="measure")))
    assert rec["memory"]["weights"] == rec["predicted"]["memory"]["weights"]


@pytest.mark.parametrize("precision", ["amp-bf16", "fp32"])
def test_quant_under_a_precision_policy(precision, one_torch_thread):
    rec = ok(run_cell(tiny_cell("lora", "nf4", precision=precision)))
    assert rec["memory"]["weights"] == rec["predicted"]["memory"]["weights"]


def test_suite_quant_axis_and_a_bad_value():
    from lamda_bench.suite.parse import SuiteError, parse_suite

    text = ('[suite]\nname = "q"\n[[sweep]]\nworkload = "tiny-llama"\nmethod = "lora"\n'
            'quant = ["none", "nf4", "nf4-dq"]\n')
    assert [c.quant for c in parse_suite(text).cells] == ["none", "nf4", "nf4-dq"]
    with pytest.raises(SuiteError, match="quant"):
        parse_suite(text.replace('["none", "nf4", "nf4-dq"]', '"nf5"'))


@pytest.mark.parametrize("q", ["nf4", "int8"])
@pytest.mark.parametrize("method", ["lora", "lamda"])
def test_a_quantized_base_counts_the_same_matmul_flops(method, q, one_torch_thread, shared_record):
    """A quantized base does the same matmuls as a bf16 one, split the same way between adapter
    and base: bitsandbytes' gemm_4bit (nf4's forward) has no formula in torch's counter and would
    count 0 without ours, and int8's ``MatMul8bitFp`` node, which no torch function creates, is
    tagged at its own module's exit (before, the adapter that ran the next torch function got
    its backward: 53 TFLOP of LLaMA2-7B's base matmuls read as adapter FLOPs)."""
    plain = ok(shared_record(tiny_cell(method, "none")))
    quantized = ok(shared_record(tiny_cell(method, q)))
    for key in ("forward", "backward", "adapter_forward", "adapter_backward"):
        assert quantized["flops"][key] == plain["flops"][key] > 0, key
    for key in ("adapter_forward", "adapter_backward"):  # the closed form
        assert quantized["flops"][key] == quantized["predicted"]["flops"][key], key
