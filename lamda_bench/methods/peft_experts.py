"""Adapting the experts of a mixture-of-experts model: presets, PEFT's ``target_parameters``, and
what the record says about experts that were not adapted.

The experts are fused 3-D parameters (``experts.gate_up_proj`` (E, 2I, H), ``experts.down_proj``
(E, H, I)), not ``nn.Linear``, so the linear presets never reach them. Presets that do:

- ``experts``: the expert parameters only;
- ``all+experts``: ``all`` (every block linear) and the expert parameters;
- ``attn+experts``: the attention projections and the expert parameters.

The router (``mlp.gate``) is never adapted by a preset. Only LoRA adapts expert parameters
(PEFT 0.21's ``lora.ParamWrapper``: per expert A (r x in) and B (out x r), trainable r x E x
(in + out) per parameter). At each forward PEFT folds ``W + s B A`` into a parametrization of
the experts module (one ``baddbmm``): a tensor the size of the whole expert stack, held while
the experts run and saved for their backward, plus its gradient in backward. That is the memory
cost of this path; the record has it in the saved activations (adapter side).

Attribution: PEFT computes the fold lazily inside the experts module; here it is computed on
entry to the wrapper instead (the same ops and tensors, a moment earlier), so its FLOPs and saved
tensors count on the adapter side. Any other adapter method on expert parameters is refused in
one line; with a linear preset on a MoE model the record says the experts were not adapted
(``info.method.experts_adapted``, ``info.method.not_adapted``).
"""

from __future__ import annotations

import contextlib
from typing import Any

from torch import nn

from ..model import moe
from ..model.config import WorkloadError
from ..model.targets import EXPERT_PRESETS
from .base import MethodError

EXPERT_METHODS = ("lora",)  # methods that adapt expert parameters (full fine-tuning trains them anyway)


def split_targets(cell, model: nn.Module) -> tuple[list[str], list[str]]:
    """(linear suffixes, expert parameter suffixes) of the cell's targets."""
    from ..model import workloads

    targets = cell.targets
    if isinstance(targets, str) and targets in EXPERT_PRESETS:
        params = moe.expert_parameter_suffixes(model)
        if not params:
            raise WorkloadError(f"preset {targets!r} adapts the experts of a mixture-of-experts model; "
                                f"workload {cell.workload!r} has none")
        base = EXPERT_PRESETS[targets]
        if base is None:
            return [], params
        return workloads.resolve_targets(_with_targets(cell, base), model), params
    return workloads.resolve_targets(cell, model), []


def _with_targets(cell, targets):
    import dataclasses

    return dataclasses.replace(cell, targets=targets)


def check_method(method, expert_params: list[str]) -> None:
    """Refuse, in one line, an adapter method that cannot adapt fused expert parameters."""
    if not expert_params or method.name in EXPERT_METHODS or method.name == "full":
        return
    why = {
        "lamda": "LaMDA's factors (A frozen, S r x r, B) wrap nn.Linear calls; the experts run as one grouped "
                 "matmul over fused (E, out, in) weights, with no per-expert call to put the r-dimensional path in",
        "lamda++": "LaMDA's factors (A frozen, S r x r, B) wrap nn.Linear calls; the experts run as one grouped "
                   "matmul over fused (E, out, in) weights, with no per-expert call to put the r-dimensional path in",
    }.get(method.name, "PEFT 0.21 adapts nn.Parameter targets (target_parameters) with LoRA only")
    raise MethodError(f"method {method.name!r} cannot adapt the experts ({', '.join(expert_params)}): {why}; "
                      f"use lora, or a linear preset (attn, all)")


def lora_config_extra(config, spec) -> None:
    """Add the expert parameters to a LoraConfig (PEFT's ParamWrapper takes no dropout)."""
    if not spec.target_parameters:
        return
    if config.lora_dropout:
        raise MethodError("method 'lora' option 'dropout' must be 0 when the experts are adapted: PEFT's "
                          "ParamWrapper cannot put dropout on a parameter's input")
    config.target_parameters = list(spec.target_parameters)


def expected_wrappers(model: nn.Module, spec) -> int:
    """How many ParamWrappers PEFT must create: one per expert parameter per experts module."""
    if not spec.target_parameters:
        return 0
    wanted = set(spec.target_parameters)
    return sum(1 for q in moe.expert_parameters(model) if ".".join(q.split(".")[-2:]) in wanted)


def fold_on_entry(peft_model: nn.Module) -> None:
    """Compute each ParamWrapper's folded weight on entry to the wrapper (see the module docstring)."""
    from peft.tuners.lora.layer import ParamWrapper

    for module in peft_model.modules():
        if isinstance(module, ParamWrapper):
            module._activate_lora = _eager(module, module._activate_lora)


def _eager(wrapper, activate):
    @contextlib.contextmanager
    def activate_and_fold(adapters):
        with activate(adapters):
            getattr(wrapper.get_base_layer(), wrapper.parameter_name)  # parametrize.cached(): computed once, here
            yield

    return activate_and_fold


def coverage(model: nn.Module, method_name: str, expert_params: list[str]) -> dict[str, Any]:
    """``info.method`` facts for a MoE model: whether the experts were adapted, and if not, a line saying so."""
    params = moe.expert_parameters(model)
    if not params:
        return {}
    count = sum(moe._numel(s) for s in params.values())
    if method_name == "full":
        return {"experts_adapted": True, "expert_targets": "trained in full (full fine-tuning)"}
    if expert_params:
        return {"experts_adapted": True, "expert_targets": list(expert_params),
                "router_adapted": False}
    return {"experts_adapted": False,
            "not_adapted": (f"experts not adapted: {len(params)} fused expert parameters ({count} weights) are not "
                            "nn.Linear, so linear targets do not reach them; targets 'experts', 'attn+experts' "
                            "or 'all+experts' adapt them (LoRA)")}


@contextlib.contextmanager
def exact_linear_targets():
    """PEFT 0.21 rewrites a LoRA config on models whose MoE layout changed in transformers 5
    (``convert_peft_config_for_transformers``: DeepSeek-V2/V3, Qwen3-MoE, Qwen3-Next, Mixtral...):
    a ``target_modules`` name that was an expert linear in transformers 4 (``gate_proj``, ``up_proj``,
    ``down_proj``, ``w1``...) becomes the fused experts' ``target_parameters``, and the dense or
    shared-expert linears of that name are no longer adapted. That keeps transformers-4 adapters
    loadable; here the targets are the exact linears the cell resolved (the fused experts are asked
    for by the expert presets), so the rewrite is held off while PEFT wraps them, and PEFT adapts
    what the count check (``len(linears) + wrappers``) expects."""
    from peft.utils import transformers_weight_conversion as conversion

    original = conversion.convert_peft_config_for_transformers
    conversion.convert_peft_config_for_transformers = lambda *args, **kwargs: None
    try:
        yield
    finally:
        conversion.convert_peft_config_for_transformers = original
