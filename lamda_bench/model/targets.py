"""Which linears a cell adapts: module-name suffixes, and presets derived from the model's module names.

Targets are module-name suffixes matched the way PEFT matches ``target_modules``: a module
named ``n`` matches suffix ``s`` when ``n == s`` or ``n`` ends with ``"." + s``.

Presets, the same for every architecture (no per-model table to edit):

- ``all``: every ``nn.Linear`` inside the repeated blocks (the modules under a numbered
  layer, ``...layers.<i>...``) -- PEFT's ``all-linear`` without what sits outside the blocks
  (LM head, classifier, pooler) -- except a mixture-of-experts block's router and gates
  (``routing_linears``), which no preset adapts;
- ``attn``: the block linears under an attention module (a path component containing
  ``attn`` or ``attention``: ``self_attn``, ``encoder_attn``, ``attention.self``...);
- ``mlp``: the other block linears (``mlp``, ``fc1``/``fc2``, ``intermediate``/``output``...);
- ``peft``: PEFT's default ``target_modules`` for the model type, where PEFT has one
  (``q_proj``, ``v_proj`` for LLaMA).

A preset resolves to the shortest suffixes that select exactly its modules (``q_proj``,
``attention.output.dense``...); where a block-relative name cannot tell a module from one
outside the preset (BERT's ``output.dense`` vs ``attention.output.dense`` for ``mlp``), the
qualified names are used.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..hints import did_you_mean
from .config import WorkloadError

if TYPE_CHECKING:  # torch is imported where a model is at hand (is_target_linear)
    from torch import nn

# Mixture-of-experts presets: the fused expert parameters (not linears), alone or with a linear
# preset; resolved by lamda_bench/methods/peft_experts.py (LoRA through PEFT's target_parameters).
EXPERT_PRESETS = {"experts": None, "attn+experts": "attn", "all+experts": "all"}
PRESETS = ("all", "attn", "mlp", "peft", *EXPERT_PRESETS)
_BLOCK_RE = re.compile(r"^(?P<stack>.*?)\.(?P<index>\d+)\.(?P<rest>.+)$")
_ATTENTION_RE = re.compile(r"attn|attention", re.IGNORECASE)


def matches_target(module_name: str, suffixes) -> bool:
    """PEFT's suffix rule: the name equals a suffix or ends with "." + suffix."""
    return any(module_name == s or module_name.endswith("." + s) for s in suffixes)


def is_target_linear(module: nn.Module) -> bool:
    """A linear an adapter may wrap: any ``nn.Linear``, subclasses included, as PEFT's LoRA
    dispatch decides (bitsandbytes' ``Linear4bit``/``Linear8bitLt`` and torch's
    ``NonDynamicallyQuantizableLinear`` are linears to adapt). An adapter wrapper (PEFT's
    ``lora.Linear``, LaMDA's ``LamdaLinear``) is not an ``nn.Linear``, so an adapted layer is
    never matched a second time; its ``base_layer`` does not end with the target suffix. Every
    method matches targets with this and ``matches_target``."""
    from torch import nn  # here, not at the top: suite parsing (the CLI's parent) reads PRESETS without torch

    return isinstance(module, nn.Linear)


def target_linears(model: nn.Module, suffixes) -> dict[str, nn.Linear]:
    """Qualified name -> ``nn.Linear`` for every linear of ``model`` that a suffix matches."""
    return {
        name: module
        for name, module in model.named_modules()
        if is_target_linear(module) and matches_target(name, suffixes)
    }


def block_linears(model: nn.Module) -> dict[str, str]:
    """Qualified name -> block-relative name of every ``nn.Linear`` inside a numbered block, less the
    routers and gates of mixture-of-experts blocks (``routing_linears``): no preset adapts those."""
    out = {}
    routing = routing_linears(model)
    for name, module in model.named_modules():
        if is_target_linear(module) and name not in routing:
            m = _BLOCK_RE.match(name)
            if m:
                out[name] = m.group("rest")
    return out


def routing_linears(model: nn.Module) -> set[str]:
    """The linears that route a mixture-of-experts block: every ``nn.Linear`` beside a fused experts
    module in the same parent (Phi-3.5-MoE's ``mlp.router``, a ``PhimoeTopKRouter`` subclassing
    ``nn.Linear``; Qwen2-MoE's and Qwen3-Next's 1-output ``mlp.shared_expert_gate``). The expert
    linears themselves sit one level down (``mlp.shared_expert.gate_proj``) and stay."""
    from .moe import experts_modules

    parents = {name.rpartition(".")[0] for name in experts_modules(model)}
    return {name for name, module in model.named_modules()
            if is_target_linear(module) and name.rpartition(".")[0] in parents}


def preset_modules(model: nn.Module, preset: str, model_type: str | None = None) -> list[str] | None:
    """Qualified names a preset selects, in module order; None when the preset does not apply."""
    blocks = block_linears(model)
    if preset == "all":
        return list(blocks)
    if preset == "attn":
        return [n for n, rest in blocks.items() if _is_attention(rest)]
    if preset == "mlp":
        return [n for n, rest in blocks.items() if not _is_attention(rest)]
    if preset == "peft":
        suffixes = peft_default_targets(model_type)
        if suffixes is None:
            return None
        return [n for n in _linear_names(model) if matches_target(n, suffixes)]
    return None


def _is_attention(block_relative: str) -> bool:
    return any(_ATTENTION_RE.search(part) for part in block_relative.split(".")[:-1])


def peft_default_targets(model_type: str | None) -> list[str] | None:
    """PEFT's default LoRA ``target_modules`` for a transformers model type (None: PEFT has none)."""
    if not model_type:
        return None
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    found = mapping.get(model_type)
    return list(found) if found else None


def preset_suffixes(model: nn.Module, preset: str, model_type: str | None = None) -> list[str] | None:
    """The shortest suffixes selecting exactly the preset's modules (see the module docstring)."""
    if preset == "peft":
        return peft_default_targets(model_type)
    chosen = preset_modules(model, preset, model_type)
    if not chosen:
        return None if chosen is None else []
    selected = set(chosen)
    linears = _linear_names(model)
    blocks = block_linears(model)
    suffixes: list[str] = []
    covered: set[str] = set()
    for name in chosen:
        if name in covered:
            continue
        parts = blocks[name].split(".")
        pick = name  # the qualified name always selects exactly this module
        for k in range(1, len(parts) + 1):
            candidate = ".".join(parts[-k:])
            hits = {n for n in linears if matches_target(n, [candidate])}
            if hits <= selected:
                pick = candidate
                break
        suffixes.append(pick)
        covered |= {n for n in linears if matches_target(n, [pick])}
    return suffixes


def available_presets(model: nn.Module, model_type: str | None = None) -> list[str]:
    return [p for p in PRESETS if preset_suffixes(model, p, model_type)]


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if is_target_linear(m)]


def resolve_targets(targets, model: nn.Module, workload_name: str, model_type: str | None = None) -> list[str]:
    """A cell's targets as module-name suffixes, each checked to match at least one ``nn.Linear``.

    ``targets`` is a preset name (``"all"``, ``"attn"``, ``"mlp"``, ``"peft"``), a single
    suffix, or a tuple of suffixes.
    """
    if isinstance(targets, str) and targets in EXPERT_PRESETS:
        raise WorkloadError(f"preset {targets!r} adapts the fused experts of a mixture-of-experts model, which are "
                            f"parameters, not linears: only a training cell resolves it (methods/peft_experts.py)")
    if isinstance(targets, str) and targets in PRESETS:
        suffixes = preset_suffixes(model, targets, model_type)
        if not suffixes:
            have = ", ".join(available_presets(model, model_type)) or "none"
            raise WorkloadError(f"preset {targets!r} selects no linear of workload {workload_name!r}; "
                                f"its presets: {have}")
        return suffixes
    suffixes = [targets] if isinstance(targets, str) else list(dict.fromkeys(targets))
    if not suffixes:
        raise WorkloadError(f"no target modules given for workload {workload_name!r}")
    linear_names = _linear_names(model)
    unknown = [s for s in suffixes if not any(matches_target(n, [s]) for n in linear_names)]
    if unknown:
        valid = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
        hint = did_you_mean(unknown[0], valid + list(PRESETS))
        raise WorkloadError(
            f"unknown target module(s) {', '.join(map(repr, unknown))} for workload {workload_name!r}{hint}; "
            f"linear modules: {', '.join(valid)}; presets: {', '.join(available_presets(model, model_type))}"
        )
    return suffixes


