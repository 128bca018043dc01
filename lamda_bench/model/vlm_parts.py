"""The parts of a vision-language model: who owns a module (vision tower, projector, language
model, adapter), which linears a VLM cell adapts, and bytes / FLOPs summed per owner.

Owners are read from module names, the same for every family transformers writes:

- ``projector``: under ``multi_modal_projector`` (LLaVA, Gemma 3, Mllama) or ``merger``
  (Qwen2-VL's patch merger, which sits inside ``visual``);
- ``vision``: under ``visual`` / ``vision_tower`` / ``vision_model``, the projector excepted;
- ``language_model``: everything else (the decoder, embeddings, LM head, the top-level model's
  own ops: the loss);
- ``adapter``: an adapter's own modules (the method's ``is_adapter_module``), wherever they sit.

Targets (PEFT's VLM recipes): the presets ``all`` / ``attn`` / ``mlp`` select the *language
model's* block linears only, the vision tower and projector frozen; ``all+vision``,
``all+projector`` and ``all+vision+projector`` add every linear of those parts. They resolve to
qualified module names (a suffix such as ``q_proj`` would also hit CLIP's attention).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .config import WorkloadError
from .targets import is_target_linear, preset_modules

if TYPE_CHECKING:
    from torch import nn

OWNERS = ("vision", "projector", "language_model", "adapter")
VLM_PRESETS = ("all+vision", "all+projector", "all+vision+projector")
_VISION = ("visual", "vision_tower", "vision_model")
_PROJECTOR = ("multi_modal_projector", "merger", "mm_projector")


def owner(name: str | None, is_adapter: Callable[[str], bool] | None = None) -> str:
    """The part a qualified module name belongs to: the root module ("", the top-level model's own
    ops: logits and loss) is the language model's; "outside" is work outside every module."""
    if name is None or name == "<outside>":
        return "outside"
    if name == "":
        return "language_model"
    if is_adapter is not None and is_adapter(name):
        return "adapter"
    parts = name.split(".")
    if any(p in _PROJECTOR for p in parts):
        return "projector"
    if any(p in _VISION for p in parts):
        return "vision"
    return "language_model"


def _linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if is_target_linear(m)]


def preset_targets(model: nn.Module, preset: str, workload_name: str) -> list[str]:
    """Qualified names of the linears a preset adapts on a VLM (see the module docstring)."""
    base, _, extra = preset.partition("+")
    chosen = [n for n in preset_modules(model, base) or [] if owner(n) == "language_model"]
    if not chosen:
        raise WorkloadError(f"preset {preset!r} selects no language-model linear of workload {workload_name!r}")
    for part in filter(None, extra.split("+")):
        wanted = {"vision": "vision", "projector": "projector"}[part]
        found = [n for n in _linears(model) if owner(n) == wanted]
        if not found:
            raise WorkloadError(f"preset {preset!r}: workload {workload_name!r} has no nn.Linear in its {part} "
                                "(Gemma 3's projector is a bare weight matrix, not a linear)")
        chosen += found
    return chosen


def available_presets(model: nn.Module, workload_name: str) -> tuple[str, ...]:
    """The image-text presets that select something on this model (``list workloads``)."""
    found = []
    for preset in VLM_PRESETS:
        try:
            preset_targets(model, preset, workload_name)
        except WorkloadError:
            continue
        found.append(preset)
    return tuple(found)


def by_owner(per_module: dict[str, int], is_adapter: Callable[[str], bool] | None) -> dict[str, int]:
    """Sum a module -> value table per owner (every owner present, 0 when it has none)."""
    out = dict.fromkeys((*OWNERS, "outside"), 0)
    for name, value in per_module.items():
        out[owner(name, is_adapter)] += int(value)
    return out


def owner_figures(saved_by_module: dict[str, int], flops_by_module: dict[str, dict[str, int]],
                  is_adapter: Callable[[str], bool] | None, model: nn.Module | None = None) -> dict[str, dict[str, int]]:
    """``info.vlm_owners``: bytes saved for backward by the forward (what the step holds; a
    checkpointed block's recomputation excluded), FLOPs (forward + backward) and parameter
    bytes (each storage once) per owner."""
    flops: dict[str, int] = {}
    for table in flops_by_module.values():
        for name, value in table.items():
            flops[name] = flops.get(name, 0) + int(value)
    out = {"saved_bytes": by_owner(saved_by_module, is_adapter), "flops": by_owner(flops, is_adapter)}
    if model is not None:
        params: dict[str, int] = {}
        for name, p in model.named_parameters():  # shared (tied) parameters are listed once
            module = name.rsplit(".", 1)[0]
            params[module] = params.get(module, 0) + p.numel() * p.element_size()
        out["param_bytes"] = by_owner(params, is_adapter)
    return out
