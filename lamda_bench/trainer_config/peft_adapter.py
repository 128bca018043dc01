"""A PEFT ``adapter_config.json`` (a ``LoraConfig`` / ``VeraConfig`` as ``save_pretrained`` writes
it, or ``peft_config.to_dict()``) -> cell keys, every key's fate recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import fate as F
from .common import map_model, number, targets_of
from .fate import Translation, TrainerConfigError

PEFT_TYPES = {"LORA": "lora", "VERA": "vera"}

NOT_MODELLED = {
    "modules_to_save": "fully trained extra modules (classifier, LM head): not modelled",
    "layers_to_transform": "adapters on some layers only: not modelled",
    "rank_pattern": "per-module ranks: not modelled", "alpha_pattern": F.NO_MEMORY,
    "loftq_config": "LoftQ initialisation: not modelled",
    "use_qalora": "QA-LoRA: not modelled", "lora_bias": "LoRA's bias term on B: not modelled",
    "trainable_token_indices": "trainable token rows: not modelled", "layer_replication": "layer replication: not modelled",
    "megatron_config": "Megatron layers: not modelled", "eva_config": "EVA init: not modelled",
    "corda_config": "CorDA init: not modelled", "target_parameters": "adapters on parameters (MoE experts): modelled only as the fused experts' "
                         "gate_up_proj and down_proj of every layer (targets 'experts' / 'all+experts'); "
                         "this list is not that, so the experts are estimated as not adapted",
    "exclude_modules": "modules excluded from the targets: not modelled",
    "fan_in_fan_out": "Conv1D (fan-in/fan-out) layout: not modelled",
    "lora_ga_config": "LoRA-GA init: not modelled", "velora_config": "VeLoRA: not modelled",
    "monteclora_config": "MonteCLoRA: not modelled", "use_bdlora": "BD-LoRA: not modelled",
    "kasa_config": "KaSA: not modelled",
}
NOT_MODELLED.pop("alpha_pattern")
NO_EFFECT = {k: F.NO_MEMORY for k in (
    "task_type", "inference_mode", "revision", "auto_mapping", "use_rslora", "layers_pattern", "megatron_core",
    "peft_version", "alpha_pattern", "lora_alpha", "init_weights", "save_projection", "arrow_config",
    "ensure_weight_tying", "alora_invocation_tokens", "qalora_group_size",
)}


def translate(doc: dict[str, Any], source: str, config_dir: Path, with_model: bool = True) -> Translation:
    """``with_model`` False: ``base_model_name_or_path`` is left to the trainer config (or --workload)."""
    t = Translation("peft-adapter", source)
    kind = str(doc.get("peft_type", "LORA")).upper()
    if kind not in PEFT_TYPES:
        raise TrainerConfigError(f"{source}: peft_type {kind!r}: lamda-bench models {', '.join(PEFT_TYPES)}")
    for key, value in doc.items():
        if not _map(t, key, value, doc, kind, config_dir, with_model):
            F.classify_rest(t, key, value, NO_EFFECT, NOT_MODELLED)
    if "method" not in t.cell:
        t.map("(default) peft_type", "LORA", "PEFT's LoraConfig", method="lora")
    return t


def _map(t: Translation, key: str, value: Any, doc: dict[str, Any], kind: str, config_dir: Path,
         with_model: bool) -> bool:
    if key == "peft_type":
        method = PEFT_TYPES[kind]
        init = str(doc.get("init_lora_weights", True)).lower()
        if method == "lora" and doc.get("use_dora"):
            method = "dora"
        elif method == "lora" and init.startswith("pissa"):
            method = "pissa"
        t.map(key, value, method=method)
    elif key == "base_model_name_or_path":
        if with_model and value:
            map_model(t, key, value, config_dir)
        else:
            t.no_effect(key, value, "the trainer config's model (or --workload) is used" if value else "unset")
    elif key == "r":
        t.map(key, value, r=value)
    elif key == "lora_alpha" and doc.get("peft_type", "LORA").upper() == "LORA":
        t.map(key, value, "scales the update; no memory effect", alpha=number(value))
    elif key in ("lora_dropout", "vera_dropout"):
        t.map(key, value, dropout=number(value, 0.0))
    elif key == "target_modules" and _expert_preset(doc):  # with MoE expert parameters (methods/peft_experts.py)
        t.map(key, value, "with target_parameters on the experts", targets=_expert_preset(doc))
    elif key == "target_parameters" and _expert_preset(doc):
        t.map(key, value, "the fused MoE expert weights (LoRA ParamWrapper)", targets=_expert_preset(doc))
    elif key == "target_modules":
        targets = targets_of(value)
        if targets is None:
            t.no_effect(key, value, "unset: PEFT's default for the model type")
            t.cell["targets"] = "peft"
        else:
            t.map(key, value, targets=targets)
    elif key == "use_dora":
        t.map(key, value, "sets the method (with peft_type)") if value else t.no_effect(key, value, "off")
    elif key == "init_lora_weights":
        text = str(value).lower()
        if text.startswith("pissa"):
            t.map(key, value, "PiSSA init: method pissa")
        elif value in (True, False, "gaussian"):
            t.no_effect(key, value, "the initial values; no memory effect")
        else:
            t.not_modelled(key, value, "this initialisation is not modelled; estimated as LoRA's")
    elif key == "bias":
        t.no_effect(key, value, "none") if value in (None, "none") else \
            t.not_modelled(key, value, "trained biases: not modelled")
    elif key == "projection_prng_key" and kind == "VERA":
        t.map(key, value, projection_prng_key=value)
    elif key == "d_initial" and kind == "VERA":
        t.map(key, value, d_initial=value)
    else:
        return False
    return True


def _expert_preset(doc: dict[str, Any]) -> str | None:
    """The expert preset a LoRA config with ``target_parameters`` is: exactly the fused experts'
    gate_up_proj and down_proj, with no target_modules ("experts") or all-linear ("all+experts");
    None for anything else (then ``target_parameters`` stays not modelled)."""
    value = doc.get("target_parameters")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return None
    if any(_names_a_layer(v) for v in value):
        return None  # the experts of some layers only (gpt-oss recipe: layers 7, 15, 23): not a preset
    if {".".join(v.split(".")[-2:]) for v in value} != {"experts.gate_up_proj", "experts.down_proj"}:
        return None
    try:
        modules = targets_of(doc.get("target_modules"))
    except TrainerConfigError:
        return None
    return {None: "experts", "all": "all+experts"}.get(modules) if not isinstance(modules, tuple) else None


def _names_a_layer(name: str) -> bool:
    """A ``target_parameters`` entry that PEFT matches in one layer only: it holds a layer index
    (``model.layers.7.mlp.experts.gate_up_proj``); ``experts.gate_up_proj`` matches every layer."""
    return any(part.isdigit() for part in name.split("."))


def check_peft_rewrite(t: Translation, model_type: str | None) -> None:
    """Refuse (one line) an adapter whose target_modules PEFT itself rewrites on this model.

    PEFT 0.21 on transformers 5 (``convert_peft_config_for_transformers``) turns the transformers-4
    expert names (``gate_proj`` / ``up_proj`` / ``down_proj``, Mixtral's ``w1`` / ``w2`` / ``w3``, the
    router ``gate``) into ``target_parameters`` on the fused experts (with twice the rank on the
    fused gate_up_proj) and the router weight, and ``all-linear`` gains them all. The cell would
    train the linears only, so the ``[mapped]`` target_modules line would not be what PEFT trains."""
    if not model_type:
        return
    from peft.utils.transformers_weight_conversion import _MODEL_TO_CONVERSION_PATTERN, _MOE_TARGET_MODULE_MAPPING

    renamed = _MOE_TARGET_MODULE_MAPPING.get(_MODEL_TO_CONVERSION_PATTERN.get(model_type) or "", {})
    keys = ("target_modules", "peft-adapter:target_modules") if t.format == "peft-adapter" else ("peft-adapter:target_modules",)
    fate = next((f for f in t.fates if f.key in keys and f.cell), None)
    if not renamed or fate is None:
        return
    targets = dict(fate.cell)["targets"]
    hit = sorted(renamed) if targets in ("all", "all+experts") else \
        sorted({n for n in targets if any(n == old or n.endswith("." + old) for old in renamed)}) \
        if isinstance(targets, tuple) else []
    if hit:
        import peft

        raise TrainerConfigError(
            f"{t.source}: target_modules {fate.value!r} on a {model_type} model: PEFT {peft.__version__} rewrites "
            f"{', '.join(hit)} to the fused experts' target_parameters and the router's weight (its transformers-4 "
            "compatibility), which lamda-bench does not model; name the attention and dense linears only, and "
            "target_parameters ['experts.gate_up_proj', 'experts.down_proj'] for the experts")
