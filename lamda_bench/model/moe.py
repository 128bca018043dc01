"""Mixture-of-experts models: which modules are the experts, the cell keys that choose how they
run, and what the record says about them.

transformers 5 stores a MoE block's experts as fused 3-D parameters (``mlp.experts.gate_up_proj``
(E, 2I, H), ``mlp.experts.down_proj`` (E, H, I)) on one module and runs them with the kernel
``config._experts_implementation`` names:

- ``grouped_mm`` (transformers' default): the tokens x top_k routed rows sorted by expert, two
  grouped matmuls (``aten._grouped_mm``; ``transformers::grouped_mm_fallback`` where torch's is
  unusable). Shapes depend on tokens x top_k only, never on the routing;
- ``batched_mm``: each routed row gathers its expert's weights (``gate_up_proj[expert_ids]``, a
  (tokens x top_k, 2I, H) copy) and runs ``bmm``: same FLOPs, far more memory, routing-free shapes;
- ``eager``: a Python loop over the experts hit, each on its own tokens: shapes depend on the
  routing, which fake tensors do not have, so an estimate refuses it (measure runs it).

Cell keys (``suite/cell.py``): ``experts_implementation`` (auto: transformers' default) and
``output_router_logits`` (the router's load-balancing loss, as training recipes turn on; None:
what the config says). Both are refused on a model without experts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import WorkloadError

EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
TOP_K_KEYS = ("num_experts_per_tok", "top_k", "moe_topk")


def _text(cfg):
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def expert_count(cfg) -> int:
    """Experts per MoE block the config declares (0: not a MoE model)."""
    text = _text(cfg)
    for key in EXPERT_COUNT_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def is_moe_config(cfg) -> bool:
    return expert_count(cfg) > 0


def is_experts_module(module: nn.Module) -> bool:
    """transformers' fused experts: a ``num_experts`` attribute and its own 3-D parameters."""
    if not isinstance(getattr(module, "num_experts", None), int):
        return False
    return any(p.dim() == 3 for p in module.parameters(recurse=False)) or any(
        p.dim() == 3 for n, p in module.named_parameters(recurse=True) if n.startswith("parametrizations.")
    )


def experts_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> fused experts module, in module order."""
    return {name: m for name, m in model.named_modules() if is_experts_module(m)}


def expert_parameters(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Qualified ``<experts module>.<parameter>`` -> shape of every 3-D expert weight."""
    out = {}
    for name, module in experts_modules(model).items():
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() == 3:
                out[f"{name}.{pname}"] = tuple(p.shape)
    return out


def expert_parameter_suffixes(model: nn.Module) -> list[str]:
    """The shortest names PEFT's ``target_parameters`` needs (``experts.gate_up_proj``...)."""
    found = []
    for qualified in expert_parameters(model):
        parts = qualified.split(".")
        suffix = ".".join(parts[-2:])
        if suffix not in found:
            found.append(suffix)
    return found


def is_expert_module_name(name: str | None, experts: frozenset[str]) -> bool:
    """The module (or one inside it) belongs to an experts stack."""
    if not name:
        return False
    return any(name == e or name.startswith(e + ".") for e in experts)


# ---- cell keys ---------------------------------------------------------------------------------

def apply_cell_keys(config, cell, workload_name: str) -> None:
    """Write the cell's MoE keys into the transformers config before the model is built."""
    moe = is_moe_config(config)
    asked = [k for k, default in (("experts_implementation", "auto"), ("output_router_logits", None))
             if getattr(cell, k, default) != default]
    if asked and not moe:
        raise WorkloadError(f"cell {asked[0]} applies to mixture-of-experts models only; workload "
                            f"{workload_name!r} has no experts")
    if not moe:
        return
    if cell.experts_implementation != "auto":
        config._experts_implementation = cell.experts_implementation
    if cell.output_router_logits is not None:
        text = _text(config)
        if not hasattr(text, "output_router_logits"):
            raise WorkloadError(f"workload {workload_name!r} ({type(config).__name__}) has no router "
                                "auxiliary loss (output_router_logits)")
        text.output_router_logits = cell.output_router_logits
        config.output_router_logits = cell.output_router_logits


def check_estimate(model: nn.Module, workload_name: str) -> None:
    """Refuse what fake tensors cannot trace: the eager experts loop (its shapes follow the routing)."""
    impl = experts_implementation(model)
    if impl == "eager" and experts_modules(model):
        raise WorkloadError(
            f"workload {workload_name!r}: experts_implementation 'eager' loops over the experts the routing "
            "picks, so its shapes depend on the data, which an estimate (fake tensors) does not have; "
            "measure it, or estimate grouped_mm / batched_mm")


def experts_implementation(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    if config is None or not is_moe_config(config):
        return None
    impl = getattr(config, "_experts_implementation", None)
    return str(impl) if impl else "grouped_mm"


def facts(model: nn.Module) -> dict[str, Any] | None:
    """What ``info.model`` says about the experts (None for a dense model)."""
    config = getattr(model, "config", None)
    if config is None or not is_moe_config(config):
        return None
    text = _text(config)
    top_k = next((getattr(text, k) for k in TOP_K_KEYS if isinstance(getattr(text, k, None), int)), None)
    params = expert_parameters(model)
    return {
        "experts": expert_count(config),
        "top_k": top_k,
        "experts_implementation": experts_implementation(model),
        "output_router_logits": bool(getattr(text, "output_router_logits", False)),
        "router_aux_loss_coef": getattr(text, "router_aux_loss_coef", None),
        "moe_blocks": len(experts_modules(model)),
        "expert_parameters": sum(_numel(s) for s in params.values()),
    }


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def experts_flops(by_module: dict[str, dict[str, int]], model: nn.Module) -> dict[str, int]:
    """FLOPs run inside the experts modules (their grouped matmuls, on the folded weight where the
    experts are adapted; the fold itself runs in PEFT's wrapper, on the adapter side), per phase."""
    experts = frozenset(experts_modules(model))
    out = {}
    for phase, modules in by_module.items():
        out[phase] = sum(v for name, v in modules.items() if is_expert_module_name(name, experts))
    return out


# ---- fake tensors ------------------------------------------------------------------------------

_GROUPED_META = None


def allow_fake_grouped_mm_any_dtype() -> None:
    """torch's meta kernel for ``aten._grouped_mm`` insists on bf16 (the CUTLASS fast path), but
    the CUDA and CPU kernels take fp32 and fp16 through their fallback (a loop of mm over the
    groups, same output): an fp32 estimate would fail where the real run does not. This registers
    a Meta kernel with the same output tensor minus that check (once per process)."""
    global _GROUPED_META
    if _GROUPED_META is not None or not hasattr(torch.ops.aten, "_grouped_mm"):
        return
    from torch._meta_registrations import _create_grouped_mm_output_tensor

    def meta(mat_a, mat_b, offs=None, bias=None, out_dtype=None):
        torch._check(mat_a.dtype == mat_b.dtype, lambda: f"grouped_mm of {mat_a.dtype} by {mat_b.dtype}")
        torch._check(mat_a.dim() in (2, 3) and mat_b.dim() in (2, 3), lambda: "grouped_mm needs 2-D or 3-D operands")
        return _create_grouped_mm_output_tensor(mat_a, mat_b, offs, out_dtype)

    lib = torch.library.Library("aten", "IMPL")
    lib.impl("_grouped_mm", meta, "Meta", allow_override=True)
    _GROUPED_META = lib
