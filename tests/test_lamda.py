"""LaMDA: parameter counts, SVD init, the freezing schedule (split vs mask), saved tensors, training."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lamda_bench.suite.cell import Cell
from lamda_bench.methods.base import AdapterSpec, MethodError
from lamda_bench.methods.lamda.layer import FreezeSchedule, LamdaLinear, LamdaMethod, find_targets
from lamda_bench.model.workloads import build_model, compute_loss, make_inputs, resolve_targets

LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BERT_ALL = ["query", "key", "value", "dense"]


# LAPACK's SVD runs ~10x slower with 2 threads than 1 on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_llama(device="cpu", **cell_kw):
    cell = Cell(workload="tiny-llama", method="lamda", dtype="fp32", device="cpu", batch=2, seq=8, **cell_kw)
    return cell, build_model(cell, device)


def apply(model, r=4, alpha=8.0, targets=LLAMA_ALL, total_steps=10, **options):
    spec = AdapterSpec(r=r, alpha=alpha, targets=list(targets), total_steps=total_steps, options=options)
    return LamdaMethod().apply(model, spec)


# ---- the schedule -----------------------------------------------------------------------------
def test_schedule_falls_linearly_and_ends_at_the_fraction():
    s = FreezeSchedule(r=8, total_steps=10, freeze_fraction=0.3)  # horizon 3 steps exactly
    assert [s.trainable(k) for k in range(6)] == [8, 6, 3, 0, 0, 0]  # ceil(8 (3 - k) / 3)
    assert s.trainable_sum(10) == 8 + 6 + 3
    long = FreezeSchedule(r=16, total_steps=1000, freeze_fraction=0.3)
    counts = [long.trainable(k) for k in range(400)]
    assert counts[0] == 16 and counts[299] == 1 and counts[300] == 0 and max(counts[300:]) == 0
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert sorted(set(counts)) == list(range(17))  # every count from r down to 0 is visited
    assert FreezeSchedule(8, 10, 0.0).trainable(0) == 0  # S alone from the start


# ---- parameter counts -------------------------------------------------------------------------
def test_trainable_params_tiny_llama_match_closed_form():
    r = 4
    for fraction, with_b in ((0.0, False), (0.3, True)):
        _, model = tiny_llama()
        shapes = {n: m.weight.shape for n, m in find_targets(model, LLAMA_ALL).items()}
        applied = apply(model, r=r, freeze_fraction=fraction)
        expected = sum(r * r + (d_out * r if with_b else 0) for d_out, _ in shapes.values())
        assert applied.num_trainable() == expected
        assert len(applied.adapted) == len(shapes) == 14


@pytest.mark.parametrize("r", [8, 16, 32, 64])
def test_trainable_params_llama2_7b_on_meta(r):
    cell = Cell(workload="llama2-7b", method="lamda", r=r, dtype="bf16")
    model = build_model(cell, "meta")
    s_only = apply(model, r=r, alpha=16.0, freeze_fraction=0.0)
    assert s_only.num_trainable() == 224 * r * r
    assert "shape-only" in s_only.info["init"]
    model = build_model(cell, "meta")
    with_b = apply(model, r=r, alpha=16.0)
    assert with_b.num_trainable() == 224 * r * r + 32 * 42_496 * r


# ---- SVD init ---------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"svd_niter": 2}, {"init": "svd-sigma"}, {"init": "svd-sigma", "svd_niter": 2},
                                     {"init": "lora"}, {"freeze_order": "smallest"}])
def test_init_leaves_tiny_llama_output_unchanged(options):
    cell, model = tiny_llama()
    model.eval()
    inputs = make_inputs(cell)
    before = model(input_ids=inputs["input_ids"]).logits
    w_before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    applied = apply(model, **options)  # r 4, alpha 8: s = 2
    after = applied.model(input_ids=inputs["input_ids"]).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    layer = applied.adapted["model.layers.0.self_attn.q_proj"]
    a, s, b = layer.lamda_A.weight, layer.lamda_S.weight, layer.lamda_B.full_weight()
    assert (a.shape, s.shape, b.shape) == ((4, 64), (4, 4), (64, 4))  # q_proj of tiny-llama: 64 -> 64
    init = options.get("init", "svd")
    assert layer.init_used.startswith(init)
    if init == "lora":
        assert torch.equal(layer.base_layer.weight, w_before)  # base untouched, B zero
        assert b.abs().max() == 0
        return
    # A has orthonormal rows and B orthonormal columns: the top-r singular vectors of W
    torch.testing.assert_close(a @ a.T, torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(b.T @ b, torch.eye(4), atol=1e-5, rtol=0)
    sigma = torch.linalg.svdvals(w_before)[:4]
    if options.get("freeze_order") == "smallest":
        sigma = sigma.flip(0)
    if init == "svd":  # the paper's form: S = I; the base gives up s U_r V_r^T
        assert torch.equal(s, torch.eye(4))
        torch.testing.assert_close(layer.base_layer.weight, w_before - 2.0 * b @ a, atol=1e-5, rtol=0)
    else:  # ours: S = Sigma_r / s; the base gives up U_r Sigma_r V_r^T (PiSSA's residual)
        if "svd_niter" in options:  # randomized: approximate singular values, still a diagonal core
            assert torch.equal(s, torch.diag(torch.diagonal(s))) and (torch.diagonal(s) > 0).all()
        else:
            torch.testing.assert_close(s, torch.diag(sigma / 2.0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.base_layer.weight, w_before - 2.0 * b @ s @ a, atol=1e-5, rtol=0)
        assert torch.linalg.svdvals(layer.base_layer.weight)[0] < torch.linalg.svdvals(w_before)[0]


@pytest.fixture(scope="module")
def minilm():
    from lamda_bench.model.pretrained import load_minilm, minilm_available

    return load_minilm() if minilm_available() else None


@pytest.mark.minilm
@pytest.mark.parametrize("init", ["svd", "svd-sigma"])
@pytest.mark.parametrize("svd_niter", [None, 2])
def test_svd_init_leaves_real_minilm_output_unchanged(minilm_required, minilm, svd_niter, init):
    model = copy.deepcopy(minilm)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    before = model(input_ids=ids).last_hidden_state
    applied = apply(model, r=8, alpha=16.0, targets=BERT_ALL, svd_niter=svd_niter, init=init)
    after = applied.model(input_ids=ids).last_hidden_state
    assert len(applied.adapted) == 37  # 6 x (q, k, v, attn out, ffn in, ffn out) + pooler
    torch.testing.assert_close(after, before, rtol=1e-5, atol=2e-5)


# ---- freezing: split vs mask at layer level -----------------------------------------------------
N_BATCH, N_SEQ, D_IN, D_OUT, R = 2, 5, 24, 16, 4


def make_layer(mode, total_steps=4, fraction=1.0, **kw):
    torch.manual_seed(0)
    base = nn.Linear(D_IN, D_OUT, bias=False)
    return LamdaLinear(base, R, 8.0, schedule=FreezeSchedule(R, total_steps, fraction), freeze_mode=mode, **kw)


def layer_step(layer, opt, x):
    loss = layer(x).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def backward_flops(layer, x):
    out = layer(x).pow(2).mean()
    with FlopCounterMode(display=False) as counter:
        out.backward()
    layer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def b_state_numel(opt):
    return sum(v.numel() for st in opt.state.values() for k, v in st.items() if k != "step")


def test_split_freezing_is_real():
    layer = make_layer("split")  # r=4 over 4 steps: trainable 4, 3, 2, 1, 0
    x = torch.randn(N_BATCH, N_SEQ, D_IN, requires_grad=True)
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    n_tokens = N_BATCH * N_SEQ
    flops0 = backward_flops(layer, x)
    for step in range(1, 5):
        layer_step(layer, opt, x)
        frozen_before = None if layer.lamda_B.frozen is None else layer.lamda_B.frozen.detach().clone()
        state_before = opt.state[layer.lamda_B.trainable]["exp_avg"].clone()
        layer.advance(step, opt)
        f = layer.schedule.frozen(step)
        assert f == step and layer.lamda_B.n_frozen == f
        # optimizer: only S and the still-trainable columns, with their state carried over
        held = [p for g in opt.param_groups for p in g["params"]]
        assert all(p.requires_grad for p in held) and all(p is not layer.lamda_B.frozen for p in held)
        assert b_state_numel(opt) == 2 * (R * R + D_OUT * (R - f))
        if layer.lamda_B.trainable is not None:
            torch.testing.assert_close(opt.state[layer.lamda_B.trainable]["exp_avg"], state_before[:, 1:])
        # backward FLOPs drop by exactly the frozen columns' weight gradient
        assert backward_flops(layer, x) == flops0 - 2 * n_tokens * D_OUT * f
        # frozen columns get no gradient and do not move
        layer(x).pow(2).mean().backward()
        assert layer.lamda_B.frozen.grad is None
        layer.zero_grad(set_to_none=True)
        if frozen_before is not None:
            assert torch.equal(layer.lamda_B.frozen[:, : f - 1], frozen_before)
    assert layer.lamda_B.trainable is None
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == R * R
    layer_step(layer, opt, x)  # training goes on with S alone


def test_mask_freezing_saves_nothing():
    layer = make_layer("mask")
    x = torch.randn(N_BATCH, N_SEQ, D_IN, requires_grad=True)
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    flops0 = backward_flops(layer, x)
    trainable0 = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    layer_step(layer, opt, x)
    layer.advance(1, opt)
    b_frozen_col = layer.lamda_B.weight[:, 0].detach().clone()
    for step in range(2, 5):
        layer(x).pow(2).mean().backward()
        grad = layer.lamda_B.weight.grad
        assert grad[:, : layer.lamda_B.n_frozen].abs().max() == 0  # zeroed...
        assert grad[:, layer.lamda_B.n_frozen :].abs().max() > 0
        opt.step()
        opt.zero_grad(set_to_none=True)
        layer.advance(step, opt)
    assert layer.lamda_B.n_frozen == R
    assert backward_flops(layer, x) == flops0  # ...but still computed
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == trainable0
    assert b_state_numel(opt) == 2 * (R * R + D_OUT * R)
    assert not torch.equal(layer.lamda_B.weight[:, 0], b_frozen_col)  # AdamW still moves it


# ---- saved tensors at layer level ----------------------------------------------------------------
def saved_activations(module, x):
    """Unique non-parameter storages saved for backward by ``module(x)``: {data_ptr: (numel, shape)}."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved.setdefault(ptr, (t.untyped_storage().nbytes() // t.element_size(), tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return saved


def test_lamda_layer_saves_only_r_wide_tensors():
    n = N_BATCH * N_SEQ
    x = torch.randn(N_BATCH, N_SEQ, D_IN, requires_grad=True)
    for mode in ("split", "mask"):
        layer = make_layer(mode)
        saved = saved_activations(layer, x)
        assert sorted(numel for numel, _ in saved.values()) == [n * R, n * R]  # A x and S A x
        assert all(shape[-1] <= R for _, shape in saved.values())
    layer = make_layer("split")
    layer.advance(2)  # half frozen: S A x is still saved (its trainable columns are a view of it)
    assert sorted(numel for numel, _ in saved_activations(layer, x).values()) == [n * R, n * R]
    layer.advance(4)  # B fully frozen: only A x
    assert [numel for numel, _ in saved_activations(layer, x).values()] == [n * R]


def test_peft_lora_layer_saves_the_d_wide_input():
    from peft import LoraConfig, get_peft_model

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(D_IN, D_OUT, bias=False)

        def forward(self, x):
            return self.proj(x)

    model = get_peft_model(Block(), LoraConfig(r=R, lora_alpha=8, target_modules=["proj"]))
    x = torch.randn(N_BATCH, N_SEQ, D_IN, requires_grad=True)
    saved = saved_activations(model, x)
    n = N_BATCH * N_SEQ
    assert x.untyped_storage().data_ptr() in saved  # the d_in-wide input itself
    assert sorted(numel for numel, _ in saved.values()) == [n * R, n * D_IN]


# ---- model level: apply, train, HF callback, errors -----------------------------------------------
def train_losses(applied, cell, steps, lr=1e-2):
    inputs = make_inputs(cell)
    opt = applied.make_optimizer(lr)
    losses = []
    for step in range(1, steps + 1):
        loss = compute_loss(cell, applied.model, inputs)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        applied.on_step(step, opt)
        losses.append(loss.item())
    return losses, opt


@pytest.mark.parametrize("mode", ["split", "mask"])
def test_a_few_steps_reduce_the_loss(mode):
    cell, model = tiny_llama()
    applied = apply(model, r=4, alpha=8.0, total_steps=6, freeze_fraction=0.5, freeze_mode=mode)
    losses, opt = train_losses(applied, cell, steps=6)
    assert losses[-1] < losses[0]
    frozen_layers = [layer.lamda_B.n_frozen == layer.r for layer in applied.adapted.values()]
    assert all(frozen_layers)
    if mode == "split":
        assert applied.num_trainable() == 14 * 16
        assert b_state_numel(opt) == 2 * 14 * 16


def test_hf_trainer_callback_advances_the_schedule(tmp_path):
    from transformers import Trainer, TrainingArguments

    from lamda_bench.methods.lamda.layer import LamdaFreezeCallback

    cell, model = tiny_llama()
    applied = apply(model, r=4, total_steps=4, freeze_fraction=0.5)
    ids = make_inputs(cell)["input_ids"]
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    trainer = Trainer(model=applied.model, args=args, train_dataset=data, callbacks=[LamdaFreezeCallback(applied)])
    trainer.train()
    assert all(layer.lamda_B.trainable is None for layer in applied.adapted.values())
    inner = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    held = sum(p.numel() for g in inner.param_groups for p in g["params"])
    assert held == applied.num_trainable() == 14 * 16


def test_is_adapter_module_names():
    _, model = tiny_llama()
    applied = apply(model)
    names = dict(applied.model.named_modules())
    q = "model.layers.0.self_attn.q_proj"
    assert isinstance(names[q], LamdaLinear)
    for name in (q, f"{q}.lamda_A", f"{q}.lamda_S", f"{q}.lamda_B", f"{q}.lamda_dropout"):
        assert name in names and applied.is_adapter_module(name)
    for name in (f"{q}.base_layer", "model.layers.0.self_attn", "model.layers.0.mlp", "lm_head", ""):
        assert not applied.is_adapter_module(name)


def test_autocast_adapter_dtype_policy():
    cell = Cell(workload="tiny-llama", method="lamda", dtype="bf16", device="cpu", batch=2, seq=8)
    for autocast, adapter_dtype in ((True, torch.float32), (False, torch.bfloat16)):
        model = build_model(cell, "cpu")
        applied = apply(model, autocast_adapter_dtype=autocast)
        layer = applied.adapted["model.layers.0.mlp.down_proj"]
        assert layer.lamda_S.weight.dtype == adapter_dtype and layer.base_layer.weight.dtype == torch.bfloat16
        logits = applied.model(input_ids=make_inputs(cell)["input_ids"]).logits
        assert logits.dtype == torch.bfloat16


def test_workload_target_preset_resolves():
    cell, model = tiny_llama()
    applied = apply(model, targets=resolve_targets(cell, model))
    assert len(applied.adapted) == 14


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(r=0), "r must be an integer >= 1, got 0"),
        (dict(r=65), "r=65 exceeds min(d_in, d_out)=64 of model.layers.0.self_attn.q_proj (Linear 64 -> 64)"),
        (dict(targets=[]), "no target modules"),
        (dict(targets=["qq_proj"]), "target 'qq_proj' matches no module"),
        (dict(targets=["self_attn"]), "not an nn.Linear"),
        (dict(freeze_mode="zero"), "freeze_mode"),
        (dict(bogus=1), "has no option 'bogus'"),
        (dict(freeze_fraction=1.5), "freeze_fraction must be in [0, 1]"),
    ],
)
def test_bad_input_is_one_clear_line(kwargs, message):
    _, model = tiny_llama()
    with pytest.raises(MethodError) as err:
        apply(model, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_registered_with_documented_options():
    from lamda_bench.methods import REGISTRY

    method = REGISTRY["lamda"]
    assert set(method.options) == {
        "init", "svd_niter", "freeze_fraction", "freeze_order", "freeze_mode", "autocast_adapter_dtype", "dropout"
    }
    assert method.resolve_options({})["freeze_fraction"] == 0.3
    assert math.isclose(FreezeSchedule(1, 10, 0.3).horizon, 3)


@pytest.mark.parametrize("workload", ["tiny-deberta", "tiny-bart"])
def test_other_paper_architectures(workload):
    cell = Cell(workload=workload, method="lamda", dtype="fp32", device="cpu", batch=2, seq=8)
    model = build_model(cell, "cpu").eval()  # eval: BART's dropout would make outputs differ
    inputs = make_inputs(cell)
    before = compute_loss(cell, model, inputs)
    applied = apply(model, targets=resolve_targets(cell, model))
    loss = compute_loss(cell, applied.model, inputs)
    torch.testing.assert_close(loss, before, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert all(layer.lamda_S.weight.grad is not None for layer in applied.adapted.values())
