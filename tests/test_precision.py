"""Precision policies (``precision`` cell key): pure (default), amp-bf16, amp-fp16, fp32.

Real PEFT / LaMDA layers and real autograd on tiny models, measured on this CPU and estimated
on fake tensors; the expected bytes are hand arithmetic (parameter counts x itemsizes), and
the closed forms of ``analytic.state_bytes`` must equal the records in both modes.
"""

import hashlib
import json

import pytest
import torch

from lamda_bench.suite.cell import ID_NEUTRAL_DEFAULTS, Cell
from lamda_bench.runner import run_cell
from lamda_bench.suite.parse import SuiteError, parse_suite

TINY_LLAMA_PARAMS = None  # filled lazily: parameters of the 2-layer tiny LLaMA


def ok(record):
    assert record["status"] == "ok", record["error"]
    return record


def tiny_cell(method, precision="pure", mode="measure", **kw):
    cell = dict(workload="tiny-llama", method=method, r=4, batch=2, seq=16, dtype="bf16", device="cpu",
                mode=mode, warmup=1, steps=1, precision=precision)
    cell.update(kw)
    return cell


def linear_cell(method, precision, d=32, r=4, layers=2, mode="measure", **kw):
    cell = dict(workload="linear", method=method, d_in=d, d_out=d, layers=layers, r=r, batch=2, seq=8,
                dtype="fp32", device="cpu", mode=mode, warmup=1, steps=1, precision=precision)
    cell.update(kw)
    return cell


def model_params(record):
    return record["params"]["total"]


# ---- the key and the id ----------------------------------------------------------------


def test_default_precision_leaves_the_id_as_it_was_before_the_key():
    cell = Cell(workload="tiny-llama", method="lora", r=8)
    # the id as computed before the key existed: every field but timeout_s, hashed (the other
    # keys added since, the parallel ones, are left out at their defaults too)
    d = cell.to_dict()
    d.pop("timeout_s")
    d.pop("trace")  # how an estimate is traced: never part of the id
    for key in ID_NEUTRAL_DEFAULTS:
        d.pop(key)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
    assert cell.id == f"tiny-llama-lora-r8-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    assert cell.to_dict()["precision"] == "pure"  # recorded in the cell all the same
    others = {Cell(workload="tiny-llama", method="lora", r=8, precision=p).id for p in ("amp-bf16", "amp-fp16", "fp32")}
    assert len(others) == 3 and cell.id not in others


def test_suite_precision_axis_and_bad_value():
    text = '[defaults]\nworkload = "tiny-llama"\n[[sweep]]\nmethod = "lora"\nprecision = ["pure", "amp-bf16"]\n'
    cells = parse_suite(text).cells
    assert [c.precision for c in cells] == ["pure", "amp-bf16"]
    with pytest.raises(SuiteError, match=r"precision: 'amp-bf18' is not one of .*did you mean 'amp-bf16'"):
        parse_suite(text.replace('["pure", "amp-bf16"]', '"amp-bf18"'))


def test_unknown_precision_in_a_cell_is_one_line():
    rec = run_cell(tiny_cell("lora", precision="amp"))
    assert rec["status"] == "error"
    assert rec["error"].startswith("cell precision 'amp' is not one of") and "\n" not in rec["error"]


# ---- done-when: full fine-tuning under amp-bf16 ----------------------------------------


@pytest.mark.parametrize("mode", ["measure", "estimate"])
def test_full_finetuning_amp_bf16_has_fp32_weights_and_8_bytes_of_adamw_state(mode):
    rec = ok(run_cell(tiny_cell("full", precision="amp-bf16", mode=mode)))
    p = rec["params"]["total"]
    assert rec["params"]["trainable"] == p
    tensors = 2 * 9 + 3  # 9 parameter tensors per layer (7 linears, 2 norms), embeddings, final norm, lm_head
    buffers = 2 * 16 // 2 * 4  # rotary inv_freq and original_inv_freq: head_dim / 2 fp32 values each
    assert rec["memory"]["weights"] == 4 * p + buffers  # fp32 master weights (model dtype is bf16)
    assert rec["memory"]["grads"] == 4 * p
    assert rec["memory"]["optimizer"] == 8 * p + 4 * tensors  # exp_avg + exp_avg_sq in fp32, fp32 step scalars
    assert rec["info"]["precision"]["master_weights"] == "float32"
    assert rec["info"]["precision"]["autocast_dtype"] == "bfloat16"
    pred = rec["predicted"]["memory"]
    assert (pred["weights"], pred["grads"], pred["optimizer"]) == (
        rec["memory"]["weights"], rec["memory"]["grads"], rec["memory"]["optimizer"])


def test_full_finetuning_pure_bf16_is_unchanged_at_about_8_bytes_per_parameter():
    rec = ok(run_cell(tiny_cell("full")))
    p = rec["params"]["total"]
    assert rec["memory"]["grads"] == 2 * p
    assert rec["memory"]["optimizer"] == 4 * p + 4 * (2 * 9 + 3)
    assert "autocast_weight_copies" not in rec["memory"]
    assert rec["info"]["precision"]["policy"] == "pure"


# ---- closed forms against records, every policy, both modes -----------------------------


# Every policy and method is measured in the quick set, and estimated there under pure and amp-bf16;
# the estimates under amp-fp16 and fp32 are slow. Quick estimates under those policies:
# test_amp_fp16_grad_scaler_runs_in_measure_and_estimate, test_quant.py's test_quant_under_a_precision_policy[fp32].
METHOD_OPTIONS = [("lora", {}), ("lamda", {"init": "lora"}), ("lamda", {"init": "lora", "autocast_adapter_dtype": False}),
                  ("full", {})]
CLOSED_FORM_CASES = [
    pytest.param(precision, method, options, mode,
                 id="-".join([mode, method, *map(str, options.values()), precision]),
                 marks=pytest.mark.slow if mode == "estimate" and precision in ("amp-fp16", "fp32") else ())
    for mode in ("measure", "estimate") for method, options in METHOD_OPTIONS
    for precision in ("pure", "amp-bf16", "amp-fp16", "fp32")
]


@pytest.mark.parametrize("precision, method, options, mode", CLOSED_FORM_CASES)
def test_state_bytes_closed_forms_match_records(precision, method, options, mode):
    # warmup 1, steps 2: LaMDA's B is partly frozen at the instrumented step (horizon 4, 0.3)
    rec = ok(run_cell(tiny_cell(method, precision=precision, mode=mode, steps=2, options=options)))
    pred = rec["predicted"]["memory"]
    for key in ("weights", "grads", "optimizer"):
        assert pred[key] == rec["memory"][key], key


def test_fp32_policy_builds_fp32_whatever_the_dtype():
    bf16 = ok(run_cell(tiny_cell("lora", precision="fp32")))
    fp32 = ok(run_cell(tiny_cell("lora", dtype="fp32")))
    assert bf16["cell"]["dtype"] == "bf16" and bf16["cell"]["precision"] == "fp32"  # as asked
    for key in ("weights", "grads", "optimizer", "saved_activations"):
        assert bf16["memory"][key] == fp32["memory"][key], key


def test_amp_lora_on_bf16_base_trains_fp32_adapters_with_8_bytes_of_state():
    rec = ok(run_cell(tiny_cell("lora", precision="amp-bf16", options={"autocast_adapter_dtype": False})))
    t = rec["params"]["trainable"]
    tensors = 2 * 2 * 7  # A and B of 7 linears in 2 layers
    assert rec["memory"]["grads"] == 4 * t
    assert rec["memory"]["optimizer"] == 8 * t + 4 * tensors


# ---- autocast's weight copies: temporaries, said apart ---------------------------------


@pytest.mark.parametrize("mode", ["measure", "estimate"])
def test_autocast_weight_copies_are_temporaries_not_weights_or_activations(mode):
    # an fp32 model under amp-bf16 (the HF Trainer's bf16=True on an fp32 load): every frozen
    # base linear is cast to bf16 per call and, its input needing a grad, the copy is saved
    d, r, layers = 32, 4, 2
    rec = ok(run_cell(linear_cell("lora", "amp-bf16", d=d, r=r, layers=layers, mode=mode)))
    mem = rec["memory"]
    base_copy = d * d * 2
    adapter_copies = (d * r + r * d) * 2  # lora_A, lora_B master weights cast to bf16 (cached)
    assert mem["saved_autocast_weight_copies"] == layers * (base_copy + adapter_copies)
    assert mem["autocast_weight_copies"] >= layers * (base_copy + adapter_copies)
    # weights stay the fp32 parameters only: the copies are not weights
    trainable = layers * 2 * d * r
    assert mem["weights"] == layers * d * d * 4 + trainable * 4
    assert mem["at_peak"]["weights"] == mem["weights"]
    assert mem["at_peak"]["temporaries"] >= mem["autocast_weight_copies_at_peak"] > 0
    # the copies are not in the saved activations: per layer lora_A's bf16 cast of x and A x (bf16),
    # then the loss's fp32 copy of the output; nothing of W (N = 2 x 8 tokens)
    n = 2 * 8
    assert mem["saved_activations"] == layers * (n * d * 2 + n * r * 2) + n * d * 4


def test_amp_on_a_bf16_base_makes_no_copy_of_the_frozen_base():
    rec = ok(run_cell(tiny_cell("lora", precision="amp-bf16")))
    t = rec["params"]["trainable"]
    # only the fp32 adapters are cast (once per step, cached): the bf16 base needs no cast
    assert rec["memory"]["saved_autocast_weight_copies"] <= 2 * t


def test_amp_fp16_grad_scaler_runs_in_measure_and_estimate():
    for mode in ("measure", "estimate"):
        rec = ok(run_cell(tiny_cell("lora", precision="amp-fp16", mode=mode)))
        assert rec["info"]["precision"]["grad_scaler"] is True
        assert rec["info"]["precision"]["autocast_dtype"] == "float16"


def test_amp_measure_trains():
    """The autocast step really updates the fp32 master weights (not a no-op policy)."""
    from lamda_bench.model import precision
    from lamda_bench.model import workloads
    from lamda_bench.runner.build import make_optimizer, prepare
    from lamda_bench.runner.resolve import resolve
    from lamda_bench.runner.result import StepResult
    from lamda_bench.runner.step import Loop, train_step

    c = Cell.from_dict(tiny_cell("full", precision="amp-bf16"))
    applied, _ = prepare(resolve(c, timeline=False), "cpu")
    before = [p.detach().clone() for p in applied.model.parameters()]
    assert all(p.dtype == torch.float32 for p in applied.model.parameters())
    res = StepResult(precision=precision.start("amp-bf16", "cpu", fake=False))
    opt = make_optimizer(c, applied, for_cuda=False)
    inputs = workloads.make_inputs(c, "cpu")
    train_step(Loop(c, applied, inputs, opt, res), 1)
    assert any(not torch.equal(a, b) for a, b in zip(before, applied.model.parameters()))


def test_state_bytes_closed_form_by_hand_for_lamda_under_amp():
    from lamda_bench import analytic

    layer = analytic.AdaptedLinear(32, 32)
    schedule = {0: 4, 1: 2, 2: 0}  # B's trainable columns after each step

    got = analytic.state_bytes(
        "lamda", [layer], 4, total_params=1000 + 272, total_tensors=0, buffer_bytes=64, base_itemsize=2,
        adapter_itemsize=2, trainable_itemsize=4, optimizer="adamw", step=1,
        b_schedule=lambda r, step: schedule[min(step, 2)])
    # during step 1: S (16) + 2 B columns (64) train; 2 B columns froze during the run (fp32 masters),
    # A (128) is frozen from the start in the adapter dtype; base 1000 bf16
    assert got["weights"] == 1000 * 2 + 128 * 2 + (16 + 64 + 64) * 4 + 64
    assert got["grads"] == (16 + 64) * 4
    # after step 2 only S trains: its two fp32 moments and one step scalar
    assert got["optimizer"] == 2 * 16 * 4 + 4


def test_a_device_without_autocast_is_refused_in_one_line():
    from lamda_bench.model import precision

    assert not torch.amp.is_autocast_available("meta")
    with pytest.raises(precision.PrecisionError, match=r"^precision 'amp-bf16': torch .* has no autocast for device 'meta'$"):
        precision.start("amp-bf16", "meta", fake=True)
    precision.start("pure", "meta", fake=True)  # no autocast asked: nothing to refuse
