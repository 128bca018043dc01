"""The PEFT peers and full fine-tuning: exact parameter counts, PiSSA's exact init, training, errors."""

from __future__ import annotations

import pytest
import torch

from lamda_bench.methods import REGISTRY, AdapterSpec, MethodError
from lamda_bench.methods import full as _full  # noqa: F401  (registers "full")
from lamda_bench.methods import peft_methods as _peft  # noqa: F401  (registers the PEFT peers)
from lamda_bench.model.workloads import (
    WorkloadError,
    build_model,
    compute_loss,
    make_inputs,
    resolve_targets,
    target_linears,
)

METHODS = ["lora", "pissa", "lora-fa", "dora", "vera", "full"]


def apply(cell, model, method=None, **options):
    spec = AdapterSpec(r=cell.r, alpha=cell.alpha, targets=resolve_targets(cell, model), options=options)
    return REGISTRY[method or cell.method].apply(model, spec)


def closed_form_trainable(method: str, shapes: list[tuple[int, int]], r: int, total: int) -> int:
    """Trainable parameters from the (d_in, d_out) of each adapted linear."""
    if method in ("lora", "pissa"):
        return sum((i + o) * r for i, o in shapes)
    if method == "lora-fa":
        return sum(o * r for i, o in shapes)
    if method == "dora":
        return sum((i + o) * r + o for i, o in shapes)
    if method == "vera":  # PEFT's VeRA trains lambda_d (r) and lambda_b (d_out) per layer
        return sum(r + o for i, o in shapes)
    if method == "full":
        return total
    raise AssertionError(method)


def linear_shapes(cell, model) -> list[tuple[int, int]]:
    linears = target_linears(model, resolve_targets(cell, model))
    return [(m.in_features, m.out_features) for m in linears.values()]


# ---- exact counts -------------------------------------------------------------------------


@pytest.mark.parametrize("workload", ["tiny-llama", "tiny-deberta", "tiny-bart", "linear"])
@pytest.mark.parametrize("method", METHODS)
def test_trainable_counts_match_closed_forms_on_tiny_models(make_cell, workload, method):
    shape = dict(layers=2, d_in=32) if workload == "linear" else {}
    cell = make_cell(workload=workload, method=method, r=4, **shape)
    model = build_model(cell)
    shapes, total = linear_shapes(cell, model), sum(p.numel() for p in model.parameters())
    applied = apply(cell, model)
    assert applied.num_trainable() == closed_form_trainable(method, shapes, 4, total)
    if method != "full":
        assert len(applied.adapted) == len(shapes)
    if workload == "linear":  # the adapted stack still trains end to end
        compute_loss(cell, applied.model, make_inputs(cell)).backward()
        assert all(p.grad is not None for p in applied.trainable_parameters())


@pytest.mark.parametrize("workload", ["llama2-7b", "deberta-v3-base", "bart-large"])
@pytest.mark.parametrize("method", METHODS)
def test_full_size_apply_on_meta_device(make_cell, workload, method):
    cell = make_cell(workload=workload, method=method, r=16, dtype="bf16")
    model = build_model(cell, "meta")
    shapes, total = linear_shapes(cell, model), sum(p.numel() for p in model.parameters())
    applied = apply(cell, model)
    assert applied.num_trainable() == closed_form_trainable(method, shapes, 16, total)
    if (workload, method) == ("llama2-7b", "lora"):
        assert applied.num_trainable() == 2_498_560 * 16
    tensors = list(applied.model.parameters()) + list(applied.model.buffers())
    assert all(t.device.type == "meta" for t in tensors)  # nothing was allocated
    applied.make_optimizer(1e-4)  # optimizers can be built over meta parameters


@pytest.mark.parametrize("r", [8, 64])  # r=16 is covered by the meta-device test above
def test_llama2_7b_lora_all_projections_trains_2498560_r(make_cell, r):
    cell = make_cell(workload="llama2-7b", r=r, dtype="bf16")
    applied = apply(cell, build_model(cell, "meta"))
    hidden, inter, layers = 4096, 11008, 32
    per_layer = 4 * (hidden + hidden) * r + 3 * (hidden + inter) * r  # q,k,v,o + gate,up,down
    assert per_layer == 78_080 * r
    assert applied.num_trainable() == layers * per_layer == 2_498_560 * r
    assert applied.info["r"] == r and applied.info["adapted_layers"] == 7 * layers


# ---- PiSSA keeps the output at init -------------------------------------------------------


def _pissa_roundtrip(model, forward, cell, niter):
    before = {n: m.weight.detach().clone() for n, m in target_linears(model, resolve_targets(cell, model)).items()}
    with torch.no_grad():
        reference = forward(model)
    applied = apply(cell, model, niter=niter)
    with torch.no_grad():
        adapted = forward(applied.model)
    # The SVD really ran: the base weights became residuals and B is not LoRA's zero init.
    wrapper = next(iter(applied.adapted.values()))
    assert wrapper.lora_B["default"].weight.abs().max() > 0
    name = next(iter(before))
    residual = applied.model.get_submodule("base_model.model." + name).base_layer.weight
    assert not torch.allclose(residual, before[name])
    return reference, adapted, applied


@pytest.mark.parametrize("niter", [None, 4])
def test_pissa_leaves_tiny_llama_output_unchanged(make_cell, niter):
    cell = make_cell(method="pissa", r=8)
    model = build_model(cell).eval()
    ids = make_inputs(cell)["input_ids"]
    ref, out, applied = _pissa_roundtrip(model, lambda m: m(input_ids=ids).logits, cell, niter)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert applied.info["init"] == ("pissa" if niter is None else f"pissa_niter_{niter}")


@pytest.mark.minilm
@pytest.mark.parametrize("niter", [None, 4])
def test_pissa_leaves_real_minilm_output_unchanged(make_cell, minilm_required, niter):
    # Full SVD is slow on a small CPU: for it, the attention projections of the first 3 real layers.
    few = dict(layers=3, targets="attn") if niter is None else {}
    cell = make_cell(workload="minilm-l6", method="pissa", r=16, **few)
    model = build_model(cell).eval()
    ids = make_inputs(cell)["input_ids"]
    ref, out, _ = _pissa_roundtrip(model, lambda m: m(input_ids=ids).last_hidden_state, cell, niter)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_pissa_on_meta_says_the_svd_was_skipped(make_cell):
    cell = make_cell(workload="llama2-7b", method="pissa", r=8)
    applied = apply(cell, build_model(cell, "meta"), niter=2)
    assert applied.info["init"] == "shape-only (meta device): pissa SVD skipped"
    assert applied.info["init_requested"] == "pissa_niter_2"


# ---- training ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_a_few_steps_reduce_the_training_loss(make_cell, method):
    cell = make_cell(method=method, r=4)
    applied = apply(cell, build_model(cell))
    optimizer = applied.make_optimizer(1e-2)
    inputs = make_inputs(cell)
    losses = []
    for step in range(1, 6):
        optimizer.zero_grad()
        loss = compute_loss(cell, applied.model, inputs)
        loss.backward()
        optimizer.step()
        applied.on_step(step, optimizer)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses


def test_lora_fa_freezes_a_and_trains_b_with_peft_optimizer(make_cell):
    from peft.optimizers.lorafa import LoraFAOptimizer

    cell = make_cell(method="lora-fa")
    applied = apply(cell, build_model(cell))
    wrapper = next(iter(applied.adapted.values()))
    a0, b0 = (wrapper.lora_A["default"].weight.detach().clone(), wrapper.lora_B["default"].weight.detach().clone())
    optimizer = applied.make_optimizer(1e-2)
    assert isinstance(optimizer, LoraFAOptimizer)
    loss = compute_loss(cell, applied.model, make_inputs(cell))
    loss.backward()
    optimizer.step()
    assert not wrapper.lora_A["default"].weight.requires_grad
    assert torch.equal(wrapper.lora_A["default"].weight, a0)
    assert not torch.equal(wrapper.lora_B["default"].weight, b0)


@pytest.mark.parametrize("autocast", [True, False])
def test_autocast_adapter_dtype_is_explicit_and_recorded(make_cell, autocast):
    cell = make_cell(dtype="bf16")
    applied = apply(cell, build_model(cell), autocast_adapter_dtype=autocast)
    wrapper = next(iter(applied.adapted.values()))
    expected = torch.float32 if autocast else torch.bfloat16
    assert wrapper.lora_A["default"].weight.dtype == expected
    assert applied.info["autocast_adapter_dtype"] is autocast
    assert applied.info["adapter_dtype"] == str(expected).replace("torch.", "")


# ---- attribution ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "dora", "vera"])
def test_is_adapter_module_separates_adapter_path_from_base(make_cell, method):
    cell = make_cell(method=method)
    applied = apply(cell, build_model(cell), dropout=0.1)
    names = dict(applied.model.named_modules())
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    assert q in applied.adapted and applied.is_adapter_module(q)
    assert not applied.is_adapter_module(q + ".base_layer")
    assert not applied.is_adapter_module("base_model.model.model.layers.0.self_attn")
    assert not applied.is_adapter_module("base_model.model.model.layers.0.input_layernorm")
    prefix = "lora" if method != "vera" else "vera"
    adapter_children = [n for n in names if n.startswith(q + ".") and not n.startswith(q + ".base_layer")]
    assert adapter_children and all(applied.is_adapter_module(n) for n in adapter_children)
    assert any(f".{prefix}_dropout." in n for n in adapter_children)
    if method == "dora":
        assert applied.is_adapter_module(q + ".lora_magnitude_vector")


def test_full_trains_everything_and_marks_target_linears(make_cell):
    cell = make_cell(method="full")
    model = build_model(cell)
    for p in model.parameters():
        p.requires_grad_(False)
    applied = apply(cell, model)
    assert applied.num_trainable() == applied.num_total()
    assert applied.is_adapter_module("model.layers.0.mlp.down_proj")
    assert not applied.is_adapter_module("model.layers.0.mlp")


# ---- bad input -----------------------------------------------------------------------------


def test_bad_input_errors_are_one_clear_line(make_cell):
    cell = make_cell()
    model = build_model(cell)
    lora = REGISTRY["lora"]
    cases = [
        (AdapterSpec(r=0, alpha=8, targets=["q_proj"]), "r must be an integer >= 1, got 0"),
        # tiny-llama: 2 kv heads of 16 -> k_proj is Linear 64 -> 32
        (AdapterSpec(r=40, alpha=8, targets=["k_proj"]), "r=40 exceeds min(d_in, d_out)=32 of model.layers.0.self_attn.k_proj (Linear 64 -> 32)"),
        (AdapterSpec(r=4, alpha=8, targets=["nope_proj"]), "no nn.Linear matches targets ['nope_proj']"),
        (AdapterSpec(r=4, alpha=8, targets=["q_proj"], options={"rank": 3}), "has no option 'rank'"),
        (AdapterSpec(r=4, alpha=8, targets=["q_proj"], options={"dropout": 1.5}), "'dropout' must be in [0, 1)"),
    ]
    for spec, message in cases:
        with pytest.raises(MethodError) as err:
            lora.apply(model, spec)
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MethodError, match="'niter' must be None or an integer >= 0"):
        REGISTRY["pissa"].apply(model, AdapterSpec(r=4, alpha=8, targets=["q_proj"], options={"niter": -1}))
    with pytest.raises(WorkloadError, match="unknown target module.*'qproj'.*did you mean 'q_proj'"):
        resolve_targets(make_cell(targets=("qproj",)), model)


def test_methods_declare_their_options():
    for name in ["lora", "pissa", "lora-fa", "dora", "vera"]:
        options = REGISTRY[name].options
        assert options["autocast_adapter_dtype"].default is True and options["dropout"].default == 0.0
    assert REGISTRY["pissa"].options["niter"].default is None
    assert {"d_initial", "projection_prng_key"} <= set(REGISTRY["vera"].options)


@pytest.mark.parametrize("method", ["lora", "dora", "lora-fa"])
def test_adapters_in_model_dtype_without_autocast_also_under_meta_device(method):
    """PEFT skips moving new adapters to the base dtype when they are built under
    torch.device("meta") (how estimates build): the method must do it, or an estimate counts
    fp32 adapter copies a real run never makes."""
    import torch

    from lamda_bench.suite.cell import Cell
    from lamda_bench.methods import AdapterSpec, get_method
    from lamda_bench.model.workloads import build_model

    for device in ("meta", "cpu"):
        model = build_model(Cell(workload="tiny-llama", method=method, dtype="bf16"), device)
        spec = AdapterSpec(r=4, alpha=16, targets=["q_proj", "v_proj"], dtype=torch.bfloat16,
                           options={"autocast_adapter_dtype": False})
        with torch.device(device):
            applied = get_method(method).apply(model, spec)
        dtypes = {p.dtype for n, p in applied.model.named_parameters() if p.requires_grad}
        assert dtypes == {torch.bfloat16}, (device, dtypes)
