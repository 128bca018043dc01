"""What every trainer-config format maps the same way: the model reference, the optimizer name,
the LoRA target list, and the hub ids of catalogue models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .fate import Translation, TrainerConfigError

# Hub id -> catalogue name, read from the catalogue's own descriptions ("Llama-3.1-8B
# (meta-llama/Llama-3.1-8B)"): the committed config.json is that model card's, so a config
# naming the hub id gets the catalogue cell (same id as a suite's ``workload = "llama3.1-8b"``).
_HUB_IN_DESCRIPTION = re.compile(r"\(([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)\)")


def catalogue_hub_ids() -> dict[str, str]:
    from ..model.workloads import CATALOGUE

    ids = {}
    for name, description in CATALOGUE.items():
        match = _HUB_IN_DESCRIPTION.search(description)
        if match:
            ids[match.group(1).lower()] = name
    return ids


def map_model(t: Translation, key: str, value: Any, config_dir: Path) -> None:
    """A model path or hub id -> the cell's workload, by the suite's workload rules (a local
    config.json or the HF cache, never a download); WorkloadError (one line) when unavailable."""
    from ..model.workloads import WORKLOADS, resolve_reference

    if not isinstance(value, str) or not value.strip():
        raise TrainerConfigError(f"{t.source}: {key}: expected a model path or hub id, got {value!r}")
    ref = value.strip()
    if ref in WORKLOADS:
        t.map(key, value, "a catalogue name", workload=ref)
        return
    here = Path.cwd() / ref
    local = here.exists() or (config_dir / ref).exists()  # a folder named like a hub id is that folder
    name = None if local else catalogue_hub_ids().get(ref.lower())
    if name is not None:
        t.map(key, value, f"the catalogue's copy of {ref}'s config.json", workload=name)
        return
    base = Path.cwd() if here.exists() else config_dir
    t.map(key, value, "config.json read offline (a path, or the HF cache)",
          workload=resolve_reference(ref, base))


def map_optimizer(t: Translation, key: str, value: Any) -> None:
    """The optimizer name goes to the cell unchanged (HF ``TrainingArguments.optim`` names);
    a name the cell does not know yet is not modelled, estimated with the cell's default."""
    from ..suite.cell import OPTIMIZERS, Cell

    if value is None:
        t.no_effect(key, value, f"unset: the cell default {Cell.optimizer!r}")
    elif value in OPTIMIZERS:
        t.map(key, value, optimizer=value)
    else:
        from ..optimizers.catalogue import problem

        why = problem(value) if isinstance(value, str) else f"optimizer {value!r} is not a name"
        t.not_modelled(key, value, f"{why}; estimated with {Cell.optimizer!r}, whose state may differ")


def targets_of(value: Any) -> str | tuple[str, ...] | None:
    """PEFT / trainer target lists -> the cell's targets: ``all-linear`` / ``all`` -> the ``all``
    preset (every block linear; PEFT's all-linear also leaves the LM head out); a list or a
    comma-separated string -> module-name suffixes; None when empty."""
    if value is None or value == [] or value == "":
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("all", "all-linear", "all_linear"):
            return "all"
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise TrainerConfigError(f"target modules {value!r}: expected a list of module names or 'all-linear'")


def dtype_name(value: Any) -> str | None:
    """``bfloat16`` / ``torch.bfloat16`` / ``bf16`` -> the cell's dtype name; None when not one."""
    text = str(value).strip().lower().removeprefix("torch.")
    return {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16",
            "float32": "fp32", "fp32": "fp32", "float": "fp32"}.get(text)


def map_attention(t: Translation, key: str, value: Any) -> None:
    """An attention-kernel key (LLaMA-Factory ``flash_attn``/``attn``, axolotl ``attention`` /
    ``attn_implementation``): sdpa and eager are the cell's ``attn_implementation``; auto or unset
    changes nothing; a flash/flex/xformers kernel is not modelled (the CPU cannot trace it)."""
    from . import fate as F

    text = str(value).strip().lower() if value is not None else ""
    if value is False or text in ("", "auto", "none", "null", "false", "off", "no"):
        t.no_effect(key, value, "auto or off: the model's own attention (sdpa)")
    elif text == "sdpa":
        t.map(key, value, attn_implementation="sdpa")
    elif text in ("eager", "disabled"):
        t.map(key, value, attn_implementation="eager")
    else:
        t.not_modelled(key, value, F.ATTENTION_KERNEL)


def named(table: dict[str, Any], value: Any) -> Any:
    """``table[value]`` where the value is a name in the table, else None: a list or a mapping where
    a file names something (``stage: [dpo]``) is no key of it, and must not raise TypeError."""
    return table.get(value) if isinstance(value, str) else None


def number(value: Any, default: float | None = None) -> Any:
    """A config's number as a float (``None`` -> ``default``); anything else unchanged, so the
    cell's own check refuses it in one line naming the key (never a ValueError here)."""
    if value is None and default is not None:
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value
