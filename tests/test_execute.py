"""run_cell end to end on CPU: real PEFT layers, real autograd, tiny real models, fake tensors
only for estimates. Expected bytes and FLOPs are hand arithmetic, not read back from the code."""

import json

import pytest
import torch

from lamda_bench.model import workloads
from lamda_bench.suite.cell import Cell
from lamda_bench.runner import run_cell

N = 2 * 8  # batch x seq of the linear cells


def linear_cell(method, d=32, r=4, dtype="fp32", **kw):
    cell = dict(workload="linear", method=method, d_in=d, d_out=d, layers=1, r=r, batch=2, seq=8,
                dtype=dtype, device="cpu", mode="measure", warmup=1, steps=1)
    cell.update(kw)
    return cell


def ok(record):
    assert record["status"] == "ok", record["error"]
    return record


# ---- hand arithmetic on one adapted linear (d_in = d_out = 32, r = 4, N = 16) --------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_lora_linear_saved_bytes_and_flops_by_hand(dtype):
    rec = ok(run_cell(linear_cell("lora", dtype=dtype)))
    # fp32 adapters (PEFT's autocast default): x, or its fp32 copy on bf16, plus A x; 4 bytes each
    assert rec["memory"]["saved_activations_adapter"] == N * 32 * 4 + N * 4 * 4
    assert rec["flops"]["adapter_forward"] == 2 * N * (32 * 4 + 4 * 32)
    # dA, dB, grad into A x, grad into x (the linear workload's input needs a grad)
    assert rec["flops"]["adapter_backward"] == 2 * N * (32 * 4 + 4 * 32 + 4 * 32 + 32 * 4)
    assert rec["params"]["trainable"] == (32 + 32) * 4
    assert rec["predicted"]["memory"]["saved_activations_adapter"] == rec["memory"]["saved_activations_adapter"]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_lamda_linear_saved_bytes_and_flops_by_hand(dtype):
    # warmup 0: the instrumented step is step 1, B still fully trainable
    rec = ok(run_cell(linear_cell("lamda", dtype=dtype, warmup=0, options={"init": "lora"})))
    assert rec["memory"]["saved_activations_adapter"] == 2 * N * 4 * 4  # A x and S A x, fp32
    assert rec["flops"]["adapter_forward"] == 2 * N * (32 * 4 + 4 * 4 + 4 * 32)
    # dB (4 columns), grad into S A x, dS, grad into A x, grad into x (no dA: A frozen)
    assert rec["flops"]["adapter_backward"] == 2 * N * (32 * 4 + 32 * 4 + 4 * 4 + 4 * 4 + 4 * 32)
    assert rec["params"]["trainable"] == 4 * 4 + 32 * 4


def test_lamda_inits_change_values_not_bytes_or_flops():
    records = [ok(run_cell(linear_cell("lamda", warmup=1, steps=0, options={"init": init})))
               for init in ("svd", "svd-sigma", "lora")]
    assert [r["info"]["method"]["init"].split(" ")[0] for r in records] == ["svd", "svd-sigma", "lora"]
    for rec in records[1:]:
        assert {k: v for k, v in rec["memory"].items() if k != "host_rss_peak"} == \
            {k: v for k, v in records[0]["memory"].items() if k != "host_rss_peak"}
        assert rec["flops"] == records[0]["flops"] and rec["series"] == records[0]["series"]


def test_lamda_saves_only_ax_once_b_is_frozen():
    # warmup 1, horizon 3 steps, freeze_fraction 0.3: B is frozen from the second step on
    rec = ok(run_cell(linear_cell("lamda", warmup=1, steps=1, options={"init": "lora"})))
    assert rec["info"]["steps"]["instrumented_step"] == 2
    assert rec["memory"]["saved_activations_adapter"] == N * 4 * 4
    assert rec["series"]["trainable"] == [4 * 4 + 32 * 4, 4 * 4, 4 * 4]


def test_lora_saved_grows_with_d_lamda_does_not():
    lora, lamda = [], []
    for d in (16, 32, 64):
        lora.append(ok(run_cell(linear_cell("lora", d=d)))["memory"]["saved_activations_adapter"])
        lamda.append(ok(run_cell(linear_cell("lamda", d=d, warmup=0, options={"init": "lora"})))
                     ["memory"]["saved_activations_adapter"])
    assert lora[0] < lora[1] < lora[2]
    assert lamda == [2 * N * 4 * 4] * 3


# ---- tiny LLaMA: measured equals predicted ---------------------------------------------


def tiny_cell(method, **kw):
    cell = dict(workload="tiny-llama", method=method, r=4, batch=2, seq=16, dtype="bf16", device="cpu",
                mode="measure", warmup=1, steps=1)
    cell.update(kw)
    return cell


# tiny-llama by hand: 2 layers of q, o 64->64; k, v 64->32 (2 kv heads of 16); gate, up 64->176;
# down 176->64. Per layer: 7 projections, sum d_in = 560, sum d_out = 608. r 4, N = 2 x 16 = 32
# tokens, bf16 model, fp32 adapters. Layer 0's q, k, v read the first norm's output, which needs
# no gradient (embeddings and norms frozen): 3 of the 14 calls have no input gradient, whose
# d_in sum is 3 x 64; the other 11 sum to 2 x 560 - 192 = 928.
TINY_CALLS, TINY_GRAD_CALLS, TINY_D_IN, TINY_D_OUT, TINY_D_IN_GRAD, TINY_N = 14, 11, 2 * 560, 2 * 608, 928, 32
TINY_HAND = {
    # LoRA: (d_in + d_out) r trained; saves the fp32 copy of x (d_in) and A x (r) per call;
    # forward x A, then B; backward dB and the grad into A x (d_out r each), dA (d_in r), and
    # the grad into x where x needs one
    "lora": {"params.trainable": 4 * (TINY_D_IN + TINY_D_OUT),
             "params.updates": 3 * 4 * (TINY_D_IN + TINY_D_OUT),
             "memory.saved_activations_adapter": TINY_N * 4 * (TINY_D_IN + TINY_CALLS * 4),
             "flops.adapter_forward": 2 * TINY_N * 4 * (TINY_D_IN + TINY_D_OUT),
             "flops.adapter_backward": 2 * TINY_N * 4 * (2 * TINY_D_OUT + TINY_D_IN + TINY_D_IN_GRAD)},
    # LaMDA (horizon 3 steps, B frozen after the first: 0.3 x 3 = 0.9 steps): S (r^2) and B
    # (d_out r) train in step 1, S alone from step 2, the instrumented step; that step saves
    # only A x (r, fp32) per call; forward A, S, B; backward the grad into S A x (through B,
    # d_out r), dS (r^2), and where x needs a gradient (so A x does: A is frozen) the grad into
    # A x (r^2) and into x (d_in r)
    "lamda": {"params.trainable": TINY_CALLS * 16 + 4 * TINY_D_OUT,
              "params.updates": 3 * TINY_CALLS * 16 + 4 * TINY_D_OUT,
              "memory.saved_activations_adapter": TINY_CALLS * TINY_N * 4 * 4,
              "flops.adapter_forward": 2 * TINY_N * (4 * TINY_D_IN + TINY_CALLS * 16 + 4 * TINY_D_OUT),
              "flops.adapter_backward": 2 * TINY_N * (4 * TINY_D_OUT + (TINY_CALLS + TINY_GRAD_CALLS) * 16
                                                        + 4 * TINY_D_IN_GRAD)},
}


def dotted(record, path):
    node = record
    for part in path.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("method", ["lora", "lamda"])
def test_tiny_llama_measured_matches_closed_forms(method, tmp_path):
    rec = ok(run_cell(tiny_cell(method), str(tmp_path)))
    for path, expected in TINY_HAND[method].items():  # by hand, not from the run
        assert dotted(rec, path) == expected, path
        assert dotted(rec["predicted"], path) == expected, f"predicted {path}"
    assert rec["info"]["attn_implementation"] == "sdpa"
    assert rec["info"]["attention_kernels"]  # the attention kernel that ran is named
    assert rec["time"]["steps_timed"] == 1 and rec["time"]["step_median_s"] > 0
    assert rec["memory"]["host_rss_peak"] > 0
    if method == "lora":
        per_layer = (128 + 96 + 96 + 128 + 240 + 240 + 240) * 4
        assert rec["params"]["trainable"] == 2 * per_layer == 9344
    # the artifacts: a step timeline and per-module detail, named by the record
    timeline = json.loads((tmp_path / rec["artifacts"]["timeline"]).read_text())
    detail = json.loads((tmp_path / rec["artifacts"]["detail"]).read_text())
    assert {"forward", "backward", "optimizer"} <= {e["phase"] for e in timeline["events"]}
    assert sum(detail["saved_by_module"].values()) == rec["memory"]["saved_activations"]
    json.dumps(rec)  # the record is JSON-serializable


def test_bart_estimate_differs_from_measure_only_by_mask_sized_bytes():
    """transformers takes its tracing path for fake tensors (``is_tracing`` checks
    ``is_fake_tensor``) and then materialises BART's causal mask, which a real run does not
    keep: the estimate counts at most a few b x s x s masks more, never less."""
    cell = tiny_cell("lamda", workload="tiny-bart", options={"init": "lora"})
    real = ok(run_cell(cell))
    fake = ok(run_cell({**cell, "mode": "estimate"}))
    extra = fake["memory"]["saved_activations"] - real["memory"]["saved_activations"]
    assert 0 <= extra <= 4 * cell["batch"] * cell["seq"] ** 2 * 4
    assert real["memory"]["saved_activations_adapter"] == fake["memory"]["saved_activations_adapter"]
    assert real["flops"] == fake["flops"]


@pytest.mark.parametrize("workload", ["tiny-llama", "tiny-deberta"])
def test_measure_and_estimate_give_the_same_category_bytes(workload):
    cell = tiny_cell("lamda", workload=workload, options={"init": "lora"})
    real = ok(run_cell(cell))
    fake = ok(run_cell({**cell, "mode": "estimate"}))
    assert fake["cell"]["mode"] == "estimate" and real["cell"]["mode"] == "measure"
    for key in ("weights", "trainable_weights", "grads", "optimizer", "saved_activations",
                "saved_activations_adapter", "peak_forward", "peak_backward", "peak_step", "peak", "at_peak",
                "peak_steady"):
        assert real["memory"][key] == fake["memory"][key], key
    for key in ("forward", "backward", "adapter_forward", "adapter_backward"):
        assert real["flops"][key] == fake["flops"][key], key
    assert real["series"]["trainable"] == fake["series"]["trainable"]
    assert real["params"] == fake["params"]
    assert fake["time"]["step_median_s"] is None and fake["memory"]["host_rss_peak"] is None
    # step 1 (B fully trainable) can hold the run's peak: the estimate runs it too
    assert fake["series"]["ran"] == [True, True, False]
    assert real["series"]["peak"] == fake["series"]["peak"] and real["series"]["peak"][0] is not None
    assert real["series"]["optimizer"] == fake["series"]["optimizer"]


def test_lamda_freezing_shows_in_series_and_updates():
    rec = ok(run_cell(linear_cell("lamda", d=16, warmup=0, steps=9, options={"init": "lora", "freeze_fraction": 0.3})))
    t = rec["series"]["trainable"]
    assert rec["info"]["steps"]["total_steps"] == 10 and len(t) == 10
    # horizon 3 steps: B's 4 columns train 4, ceil(4*2/3)=3, ceil(4/3)=2, then 0
    assert t == [16 + 16 * k for k in (4, 3, 2)] + [16] * 7
    assert rec["params"]["updates"] == sum(t) == rec["predicted"]["params"]["updates"]
    opt = rec["series"]["optimizer"]
    assert opt[0] > opt[-1]  # frozen columns' Adam state is released


# ---- peak over the run -----------------------------------------------------------------


def test_optimizer_state_is_read_while_live_before_the_freeze():
    # one step; horizon 1, so B (32 x 4) freezes right after it. Adam's state as the step left
    # it: exp_avg and exp_avg_sq of B and S (fp32) and a 4-byte step scalar for each
    rec = ok(run_cell(linear_cell("lamda", warmup=0, steps=0, options={"init": "lora"})))
    assert rec["memory"]["optimizer"] == 2 * (32 * 4 + 4 * 4) * 4 + 2 * 4
    assert rec["series"]["optimizer"] == [rec["memory"]["optimizer"]]


def test_lamda_peak_is_the_worst_step_of_the_run():
    # horizon 3 steps, B frozen after step 1: step 1 trains B and S, step 2 (instrumented) S alone
    rec = ok(run_cell(linear_cell("lamda", warmup=1, steps=1, options={"init": "lora"})))
    step_peaks = rec["series"]["peak"]
    assert step_peaks[2] is None  # a timed step is never tracked
    assert rec["memory"]["peak"] == step_peaks[0] > step_peaks[1] == rec["memory"]["peak_steady"]
    assert sum(rec["memory"]["at_peak"].values()) == rec["memory"]["peak"]
    info = rec["info"]["peak_steps"]
    assert info["tracked"] == [1, 2] and info["worst"] == 1 and info["instrumented"] == 2 and info["untracked"] == []
    # Both peaks fall in backward. Step 1 has no optimizer state yet, but B trains, so S A x
    # (N x r, fp32) is saved too; step 2 holds S's Adam state (2 x 4 x 4 fp32 + a step scalar).
    assert rec["memory"]["at_peak"]["optimizer"] == 0
    assert rec["memory"]["peak"] - rec["memory"]["peak_steady"] == N * 4 * 4 - (2 * 16 * 4 + 4)


def test_a_fixed_trainable_set_tracks_only_the_steady_step():
    rec = ok(run_cell(linear_cell("lora", warmup=1, steps=1)))
    assert rec["info"]["peak_steps"]["tracked"] == [2]
    assert rec["series"]["peak"] == [None, rec["memory"]["peak"], None]
    assert rec["memory"]["peak"] == rec["memory"]["peak_steady"]
    # warmup 0: step 2, the steady state, is timed, so it is named as untracked
    rec = ok(run_cell(linear_cell("lora", warmup=0, steps=1)))
    assert rec["info"]["peak_steps"]["untracked"] == [2]


@pytest.mark.parametrize("method", ["lamda", "lora"])
def test_no_step_exceeds_the_candidate_steps(monkeypatch, method):
    """peaks.py's argument, checked: track every warmup step and the worst is a candidate."""
    from lamda_bench.runner import peaks

    candidates = peaks.candidate_steps(method == "lamda", 10)
    monkeypatch.setattr(peaks, "candidate_steps", lambda shrinks, total: list(range(1, total + 1)))
    monkeypatch.setattr(peaks, "_same_as_instrumented", lambda *args: False)
    options = {"init": "lora"} if method == "lamda" else {}
    rec = ok(run_cell(linear_cell(method, d=64, r=8, layers=2, warmup=8, steps=1, options=options)))
    step_peaks = rec["series"]["peak"][:9]  # 8 warmup steps and the instrumented one, all tracked
    assert None not in step_peaks
    assert max(step_peaks) == max(step_peaks[s - 1] for s in candidates) == rec["memory"]["peak"]
    if method == "lora":  # from step 2 on every step is the same; step 1 is not above them
        assert len(set(step_peaks[1:])) == 1 and step_peaks[0] <= step_peaks[1]
    else:  # B's columns freeze over steps 1-3 (horizon 0.3 x 10): the peaks fall, then stay
        assert step_peaks[1] > step_peaks[2] > step_peaks[3] == step_peaks[8]


def test_estimate_tracks_the_same_steps_as_a_measurement():
    """The claims suite's shape: warmup 4, so the instrumented step 5 has B frozen; steps 1 and
    2 run too (on fake tensors) and give the real run's peaks."""
    cell = linear_cell("lamda", d=64, r=8, warmup=4, steps=5, options={"init": "lora"})
    real = ok(run_cell(cell))
    fake = ok(run_cell({**cell, "mode": "estimate"}))
    assert fake["series"]["ran"] == [True, True, False, False, True] + [False] * 5
    assert real["series"]["peak"] == fake["series"]["peak"]
    assert [p is not None for p in real["series"]["peak"]] == [True, True, False, False, True] + [False] * 5
    assert real["series"]["optimizer"] == fake["series"]["optimizer"]
    for key in ("peak", "at_peak", "peak_steady", "optimizer", "grads"):
        assert real["memory"][key] == fake["memory"][key], key
    assert real["info"]["peak_steps"] == fake["info"]["peak_steps"]
    assert real["memory"]["peak"] > real["memory"]["peak_steady"]


# ---- modes and devices -----------------------------------------------------------------


def test_auto_mode_measures_a_small_cell_on_cpu():
    rec = ok(run_cell(linear_cell("lora", mode="auto", device="auto")))
    assert rec["cell"]["mode"] == "auto" and rec["cell"]["device"] == "auto"  # the cell as asked
    assert rec["info"]["resolved"] == {"mode": "measure", "device": "cpu"}
    assert rec["id"] == Cell.from_dict(linear_cell("lora", mode="auto", device="auto")).id


def test_auto_mode_estimates_a_cell_too_big_for_this_machine():
    cell = linear_cell("lora", d=8192, batch=64, seq=1024, mode="auto", device="auto", dtype="bf16")
    rec = ok(run_cell(cell))
    assert rec["info"]["resolved"]["mode"] == "estimate"
    assert rec["time"]["step_median_s"] is None
    assert rec["info"]["estimate_device"] in ("cpu", "cuda")
    # 65,536 tokens x 8192 wide, cast to fp32, plus A x
    assert rec["memory"]["saved_activations_adapter"] == 65536 * 8192 * 4 + 65536 * 4 * 4


# ---- bad input and out of memory -------------------------------------------------------


@pytest.mark.parametrize(
    "change, words",
    [
        ({"workload": "llama-9000"}, "unknown workload"),
        ({"r": 64}, "exceeds"),
        ({"method": "lorra"}, "unknown method"),
        ({"bogus_key": 1}, "unknown cell keys"),
        ({"dtype": "int3"}, "unknown dtype"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_cells_give_an_error_record_with_one_line(change, words):
    rec = run_cell({**linear_cell("lamda"), **change})
    assert rec["status"] == "error"
    assert words in rec["error"] and "\n" not in rec["error"]
    assert rec["env"]["torch"]  # the environment is recorded for failed cells too
    json.dumps(rec)


def test_out_of_memory_gives_status_oom(monkeypatch):
    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(workloads, "compute_loss", boom)
    rec = run_cell(linear_cell("lora"))
    assert rec["status"] == "oom" and "out of memory" in rec["error"]


def test_cpu_allocation_failure_gives_status_oom(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1099511627776 bytes.")

    monkeypatch.setattr(workloads, "make_inputs", boom)
    assert run_cell(linear_cell("lora"))["status"] == "oom"


def test_gradient_checkpointing_saves_boundaries_and_recomputes_the_adapter_tensors():
    plain = ok(run_cell(tiny_cell("lora", steps=0)))
    gc = ok(run_cell(tiny_cell("lora", steps=0, gradient_checkpointing=True)))
    assert gc["memory"]["saved_activations"] < plain["memory"]["saved_activations"]
    # what the adapters save is saved again, during recomputation in backward
    assert gc["memory"]["saved_recomputed_adapter"] == plain["memory"]["saved_activations_adapter"]
    assert gc["predicted"]["memory"]["saved_activations_adapter"] is None  # not modelled: no false prediction
    assert gc["flops"]["backward"] > plain["flops"]["backward"]  # the recomputed forward


def test_gradient_checkpointing_on_a_bare_linear_is_an_error():
    rec = run_cell(linear_cell("lora", gradient_checkpointing=True))
    assert rec["status"] == "error" and "gradient_checkpointing" in rec["error"]


TINY_FORWARD = 2 * TINY_N * 4 * (TINY_D_IN + TINY_D_OUT)  # x A then B on every call (fp32 cells here)
OTHER_HAND = {
    # 2 layers of query, key, value, attention.output.dense (64 -> 64), intermediate (64 -> 160),
    # output (160 -> 64): (d_in + d_out) r each
    ("tiny-deberta", "lora"): {"params.trainable": 2 * 4 * (4 * 128 + 2 * 224)},
    # VeRA trains its two scaling vectors: lambda_b (d_out) and lambda_d (r) per projection
    ("tiny-llama", "vera"): {"params.trainable": TINY_D_OUT + TINY_CALLS * 4, "flops.adapter_forward": TINY_FORWARD},
    # LoRA-FA: A frozen, B (d_out r) trains; only A x (r, fp32) is saved
    ("tiny-llama", "lora-fa"): {"params.trainable": 4 * TINY_D_OUT, "flops.adapter_forward": TINY_FORWARD,
                                "memory.saved_activations_adapter": TINY_CALLS * TINY_N * 4 * 4},
    ("tiny-llama", "pissa"): {"params.trainable": 4 * (TINY_D_IN + TINY_D_OUT), "flops.adapter_forward": TINY_FORWARD},
}


@pytest.mark.parametrize(
    "workload, method",
    [
        ("tiny-deberta", "lora"),  # query/key projections also run on the relative position embeddings
        pytest.param("tiny-bart", "lamda", marks=pytest.mark.slow),  # encoder, decoder, cross attention
        ("tiny-llama", "vera"),
        pytest.param("tiny-llama", "lora-fa", marks=pytest.mark.slow),
        pytest.param("tiny-llama", "full", marks=pytest.mark.slow),
        pytest.param("tiny-llama", "pissa", marks=pytest.mark.slow),
    ],
)
def test_other_models_and_methods_match_their_closed_forms(workload, method):
    rec = ok(run_cell(tiny_cell(method, workload=workload, dtype="fp32", steps=0)))
    for path, expected in OTHER_HAND.get((workload, method), {}).items():  # by hand, not from the run
        assert dotted(rec, path) == expected, path
    p = rec["predicted"]
    assert rec["params"]["trainable"] == p["params"]["trainable"]
    assert rec["flops"]["adapter_forward"] == p["flops"]["adapter_forward"]
    assert rec["flops"]["adapter_backward"] == p["flops"]["adapter_backward"]
    if p["memory"]["saved_activations_adapter"] is not None:  # VeRA has no closed form for bytes
        assert rec["memory"]["saved_activations_adapter"] == p["memory"]["saved_activations_adapter"]


def test_the_linear_inputs_gradient_does_not_outlive_a_step(monkeypatch):
    """x requires grad (an activation deep in a network); keeping x.grad between steps is a
    buffer no network keeps, and one the trackers (started at the instrumented step) miss."""
    made = []
    real_make_inputs = workloads.make_inputs

    def spy(*args, **kwargs):
        made.append(real_make_inputs(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(workloads, "make_inputs", spy)
    grads_seen = []
    real_step = torch.optim.AdamW.step

    def step_and_look(self, *args, **kwargs):  # x.grad exists right after backward...
        grads_seen.append(made[-1]["x"].grad is not None)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_and_look)
    rec = ok(run_cell(linear_cell("lora", d=16, warmup=1, steps=1)))
    assert rec["series"]["ran"] == [True, True, True]
    x = made[-1]["x"]
    assert x.requires_grad and grads_seen == [True, True, True]
    assert x.grad is None  # ...and run_cell dropped it after the last step


@pytest.mark.parametrize("cls", [torch.optim.AdamW, torch.optim.Adam])
@pytest.mark.parametrize("kwargs", [{}, {"amsgrad": True}, {"foreach": True}, {"fused": True}])
def test_primed_adam_state_is_the_state_a_first_zero_grad_step_leaves(cls, kwargs):
    """Estimates write Adam's state directly instead of stepping on fake tensors: it must be
    exactly what torch's own first step creates (keys, shapes, dtypes, devices, values)."""
    from types import SimpleNamespace

    from lamda_bench.runner.build import prime_optimizer as _prime_optimizer

    def model():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
        m[0].bias.requires_grad_(False)
        return m

    stepped, primed = model(), model()
    real = cls(stepped.parameters(), lr=1e-3, **kwargs)
    for p in stepped.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    real.step()
    direct = cls(primed.parameters(), lr=1e-3, **kwargs)
    _prime_optimizer(SimpleNamespace(trainable_parameters=lambda: [p for p in primed.parameters() if p.requires_grad]),
                     direct)
    expected = [real.state[p] for p in stepped.parameters() if p.requires_grad]
    got = [direct.state[p] for p in primed.parameters() if p.requires_grad]
    assert len(direct.state) == len(real.state) == 3
    for want, have in zip(expected, got):
        assert want.keys() == have.keys()
        for key in want:
            a, b = want[key], have[key]
            assert (a.shape, a.dtype, a.device, a.stride()) == (b.shape, b.dtype, b.device, b.stride()), key
            assert torch.equal(a, b), key
    assert all(p.grad is None for p in primed.parameters())


@pytest.mark.parametrize("mode", ["measure", "estimate"])
def test_dora_weight_norm_graph_is_discarded_not_counted_as_saved(mode):
    """PEFT's DoRA builds lora_B(lora_A(eye(d_in))) every forward and uses it detached: that
    graph saves the d_in x d_in eye and the d_in x r product, then dies before backward. They
    are reported as discarded, and what stays saved never exceeds the step's peak."""
    rec = ok(run_cell(tiny_cell("dora", mode=mode)))
    calls = rec["info"]["tracked_adapted_calls"]
    model = workloads.build_model(Cell.from_dict(tiny_cell("dora")), "meta")
    shapes = [(m.in_features, m.out_features) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] != "lm_head"]
    assert len(shapes) == calls == 14
    fp32 = 4  # PEFT keeps the adapter (and so the eye) in fp32
    r = 4
    assert rec["memory"]["saved_discarded"] == rec["memory"]["saved_discarded_adapter"] \
        == sum((d_in * d_in + d_in * r) * fp32 for d_in, _ in shapes)
    assert rec["memory"]["saved_activations"] < rec["memory"]["peak"]


def test_importing_the_runner_leaves_the_public_run_function_alone():
    """The runner package must not be named ``run``: importing ``lamda_bench.run`` as a
    subpackage would replace the API function ``lamda_bench.run(...)`` on the package."""
    import lamda_bench
    import lamda_bench.runner  # noqa: F401

    assert callable(lamda_bench.run) and lamda_bench.run.__module__ == "lamda_bench.api"
