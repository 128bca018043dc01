"""Building what a run trains: the model with the method applied, and its optimizer (including
the optimizer state an estimate writes instead of running a first step)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..model import fused_ce
from ..model import objective
from ..model import kbit
from ..model import precision
from ..model import quant
from ..model import workloads
from ..suite.cell import CellError
from .resolve import Plan


def prepare(plan: Plan, build_device: str):
    """Build the model, apply the method; (applied, spec)."""
    from ..methods import AdapterSpec, get_method, peft_experts

    c = plan.cell
    method = get_method(c.method)
    found = workloads.loss_problem(c) or objective.method_problem(c, method.name)
    if found:
        raise CellError(found)
    model = workloads.build_model(c, build_device)
    qformat = quant.quantize_base(model, c.quant, c.parallel)  # the quantized frozen base, before the adapter
    prepared = kbit.prepare(model, c)  # PEFT's prepare_model_for_kbit_training (kbit_prepare key)
    targets, expert_params = peft_experts.split_targets(c, model)  # linears; MoE expert parameters
    peft_experts.check_method(method, expert_params)
    if c.gradient_checkpointing and prepared is None:  # a prepared model: PEFT enabled it, non-reentrant
        enable_checkpointing(model, c.workload)
    spec = AdapterSpec(r=c.r, alpha=c.alpha, targets=targets, dtype=plan.dtype,
                       options=dict(plan.options), total_steps=plan.horizon, seed=c.seed,
                       target_parameters=expert_params)
    # On meta, modules the method creates (PEFT's lora_A / lora_B) must be created on meta
    # too: PEFT builds them on cpu first otherwise, which costs seconds at full size.
    ctx = torch.device("meta") if build_device == "meta" else contextlib.nullcontext()
    with ctx, quant.float_base_for_init(model, qformat, method, targets):  # QPiSSA-style residual
        applied = method.apply(model, spec)
    if c.loss == "fused_linear_ce":  # an adapted lm_head: refused before anything runs
        fused_ce.lm_head_weight(applied.model, c.workload)
    objective.attach_reference(applied.model, c)  # full fine-tuning + a reference: TRL's frozen ref_model
    precision.cast_trainable(applied.model, precision.get_policy(c.precision))  # before the optimizer exists
    applied.info.update(peft_experts.coverage(applied.model, method.name, expert_params))  # MoE: experts adapted?
    return applied, spec


def enable_checkpointing(model: nn.Module, workload: str) -> None:
    """transformers' activation checkpointing, non-reentrant (what a fine-tuner would use).

    transformers 5.x renamed ``gradient_checkpointing_enable`` (now a deprecated alias) to
    ``activation_checkpointing_enable``; both do the same, the newer name is used where it exists.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise CellError(f"gradient_checkpointing needs a transformers model; workload {workload!r} has none")


def make_optimizer(c, applied, for_cuda: bool) -> torch.optim.Optimizer:
    """The method's optimizer. For a CUDA target it runs the multi-tensor (foreach) path:
    torch picks it by default for CUDA tensors but not for fake ones, and its temporaries are
    large for full fine-tuning (an estimate was 0.75 GiB under the H100 measurement without it)."""
    from ..methods import get_method
    from ..optimizers import build as optimizers

    optimizers.check(c.optimizer, get_method(c.method).family, c.parallel)
    if c.optimizer == "adamw":
        optimizer = applied.make_optimizer(c.lr)
    else:  # as the HF Trainer builds it (optimizers/build.py); paged state tagged where a GPU run pages it
        optimizer = optimizers.build(c.optimizer, list(applied.trainable_parameters()), c.lr,
                                     model=applied.model, paged_target=for_cuda)
    if for_cuda:
        for group in optimizer.param_groups:
            if "foreach" in group and not group.get("fused") and "ns_steps" not in group:  # fused, Muon: no foreach
                group["foreach"] = True
    return optimizer


def prime_optimizer(applied, optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer state a first step leaves behind, without a forward or backward.

    torch's Adam and AdamW get their state written directly, as their ``_init_group``
    creates it and their first step leaves it (``step`` = 1, zero moments): on a fake
    full-size model a real step costs about a second of fake kernels for state that is
    all zeros anyway. Any other optimizer (LoRA-FA's, SGD) takes one step on zero gradients.
    """
    if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW):
        prime_adam(optimizer)
        return
    for p in applied.trainable_parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def prime_adam(optimizer: torch.optim.Optimizer) -> None:
    """Adam/AdamW state after one step on zero gradients (tests compare it with a real step)."""
    default_scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    for group in optimizer.param_groups:
        on_device = group["capturable"] or group["fused"]
        for p in group["params"]:
            if not p.requires_grad or optimizer.state[p]:
                continue
            state = optimizer.state[p]
            # step: a cpu scalar unless capturable or fused (then on the parameter's device)
            state["step"] = (torch.ones((), dtype=torch.float32 if group["fused"] else default_scalar, device=p.device)
                             if on_device else torch.tensor(1.0, dtype=default_scalar, device="cpu"))
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
