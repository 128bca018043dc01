"""A LLaMA-Factory YAML (``llamafactory-cli train x.yaml``) -> cell keys, every key's fate recorded.

LLaMA-Factory's defaults differ from the cell's, and an absent key takes them
(src/llamafactory/hparams): ``finetuning_type`` lora, ``lora_rank`` 8, ``lora_alpha`` 2 x rank,
``lora_target`` all, ``cutoff_len`` 2048, ``per_device_train_batch_size`` 8 (TrainingArguments'),
gradient checkpointing ON unless ``disable_gradient_checkpointing``; ``quantization_bit: 4`` is
bitsandbytes ``nf4`` with double quantization by default (``quantization_type``,
``double_quantization``). The load dtype is ``bf16``/``fp16`` when set (else the model's own, on a
card with bf16: bf16), and the Trainer's autocast with it: ``precision = "amp-bf16"`` (trainable
weights upcast to fp32, as LLaMA-Factory does unless ``pure_bf16``). Every other key is a TrainingArguments key
(``hf_args``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import fate as F
from . import hf_args
from . import objective
from .common import map_attention, map_model, named, number, targets_of
from .fate import Translation, TrainerConfigError

DEFAULTS = {"finetuning_type": "lora", "lora_rank": 8, "lora_target": "all", "cutoff_len": 2048,
            "per_device_train_batch_size": 8}
METHODS = {"lora": "lora", "full": "full"}
BNB = ("bnb", "bitsandbytes")  # quantization_method values that are bitsandbytes

NOT_MODELLED = {
    "flash_attn": F.ATTENTION_KERNEL,
    "use_unsloth": "Unsloth kernels: not modelled",
    "use_unsloth_gc": "Unsloth checkpointing: not modelled",
    "packing": F.PACKING,
    "neat_packing": F.PACKING,
    "neftune_noise_alpha": F.NEFTUNE,
    "additional_target": "fully trained extra modules: not modelled",
    "adapter_name_or_path": "an existing adapter loaded from disk: its rank and targets are not read",
    "upcast_layernorm": "layernorms upcast to fp32: not modelled",
    "upcast_lmhead_output": "the LM head's output upcast to fp32: not modelled",
    "use_galore": "GaLore projections: not modelled", "use_apollo": "APOLLO: not modelled",
    "use_badam": "BAdam: not modelled", "use_adam_mini": "Adam-mini: not modelled",
    "freeze_trainable_layers": "partial freezing: not modelled",
    "pissa_convert": "PiSSA conversion at save time: no training memory, not modelled",
    "shift_attn": "shift short attention: not modelled",
    "rope_scaling": "RoPE scaling changes no stored bytes but may change the attention path: not modelled",
    "moe_aux_loss_coef": "MoE router loss: not modelled",
    "enable_thinking": F.NO_MEMORY,
}

NO_EFFECT = {k: F.NO_MEMORY for k in (
    "trust_remote_code", "do_train", "dataset", "eval_dataset", "dataset_dir", "template", "max_samples",
    "overwrite_cache", "preprocessing_num_workers", "plot_loss", "val_size", "train_on_prompt", "mask_history",
    "tokenized_path", "streaming", "buffer_size", "mix_strategy", "interleave_probs", "cache_dir", "model_revision",
    "hf_hub_token", "ms_hub_token", "om_hub_token", "export_dir", "export_size", "infer_backend", "use_fast_tokenizer",
    "resize_vocab", "split_special_tokens", "new_special_tokens", "print_param_status", "compute_accuracy",
    "predict_with_generate", "create_new_adapter", "use_rslora", "loraplus_lr_ratio", "loraplus_lr_embedding",
    "lora_alpha", "ddp_timeout", "default_system", "tool_format", "image_max_pixels", "video_max_pixels",
    "enable_thinking", "include_mfu",
)}
NO_EFFECT.update(hf_args.NO_EFFECT)
NO_EFFECT["enable_liger_kernel"] = "off"
NO_EFFECT.pop("model_init_kwargs", None)
NOT_MODELLED.pop("enable_thinking")
for _k, _v in hf_args.NOT_MODELLED.items():
    NOT_MODELLED.setdefault(_k, _v)


def translate(doc: dict[str, Any], source: str, config_dir: Path) -> Translation:
    t = Translation("llama-factory", source)
    if "model_name_or_path" not in doc:
        raise TrainerConfigError(f"{source}: no model_name_or_path: a LLaMA-Factory config names its model there")
    kind = doc.get("finetuning_type", DEFAULTS["finetuning_type"])
    if not named(METHODS, kind):
        raise TrainerConfigError(f"{source}: finetuning_type {kind!r}: lamda-bench models lora and full")
    lora = kind == "lora"
    for key, value in doc.items():
        if (not _map(t, key, value, doc, lora, config_dir) and not objective.llamafactory_key(t, key, value, doc)
                and not hf_args.map_key(t, key, value, doc)):
            F.classify_rest(t, key, value, NO_EFFECT, NOT_MODELLED)
    _defaults(t, doc, lora)
    return t


def _map(t: Translation, key: str, value: Any, doc: dict[str, Any], lora: bool, config_dir: Path) -> bool:
    if key == "model_name_or_path":
        map_model(t, key, value, config_dir)
    elif key == "finetuning_type":
        t.map(key, value, method=_method(doc, lora))
    elif key in ("use_dora", "pissa_init"):
        t.map(key, value, "sets the method (with finetuning_type)") if value and lora else t.no_effect(key, value, "off")
    elif key in ("pissa_iter",):
        t.no_effect(key, value, "SVD iterations at init; no training memory")
    elif key == "lora_rank":
        t.map(key, value, r=value) if lora else t.no_effect(key, value, "not lora")
    elif key == "lora_alpha":
        t.map(key, value, "scales the update; no memory effect", alpha=value) if lora and value is not None \
            else t.no_effect(key, value, "unset: 2 x lora_rank" if lora else "not lora")
    elif key == "lora_dropout":
        t.map(key, value, dropout=number(value, 0.0)) if lora else t.no_effect(key, value, "not lora")
    elif key == "lora_target":
        t.map(key, value, targets=targets_of(value) or "all") if lora else t.no_effect(key, value, "not lora")
    elif key == "quantization_bit":
        _quant(t, key, value, doc)
    elif key in ("quantization_type", "double_quantization"):
        t.map(key, value, "read with quantization_bit") if doc.get("quantization_bit") else t.no_effect(key, value, "no quantization_bit")
    elif key == "cutoff_len":
        t.map(key, value, F.FULL_ROWS, seq=value)
    elif key == "disable_gradient_checkpointing":
        t.map(key, value, gradient_checkpointing=not value)
    elif key == "gradient_checkpointing":
        t.no_effect(key, value, "LLaMA-Factory decides by disable_gradient_checkpointing")
    elif key == "bf16" and value:
        t.map(key, value, "model loaded in bf16; the Trainer autocasts, trainable weights upcast to fp32",
              dtype="bf16", precision="amp-bf16")
    elif key == "fp16" and value and not doc.get("bf16"):
        t.map(key, value, "model loaded in fp16; the Trainer autocasts with a GradScaler, trainable weights "
              "upcast to fp32", dtype="fp16", precision="amp-fp16")
    elif key == "pure_bf16" and value:
        t.map(key, value, "bf16 everywhere, trainable weights not upcast", dtype="bf16",
              **({"autocast_adapter_dtype": False} if lora else {}))
    elif key == "pure_bf16":
        t.no_effect(key, value, "off")
    elif key in ("flash_attn", "attn"):
        map_attention(t, key, value)
    elif key == "quantization_method":
        _quant_method(t, key, value, doc)
    elif key == "enable_liger_kernel" and not F.is_off(value):
        _liger(t, key, value, doc.get("stage", "sft"))
    else:
        return False
    return True


def _liger(t: Translation, key: str, value: Any, stage: Any) -> None:
    """LLaMA-Factory's apply_liger_kernel: Liger's defaults, but the fused loss off (plain Liger
    cross-entropy instead) for a stage that needs the logits (any but pt and sft)."""
    if stage in ("pt", "sft"):
        hf_args.map_liger(t, key, value, fused=True)
    else:
        t.not_modelled(key, value, F.LIGER + f" (stage {stage!r} needs the logits: LLaMA-Factory turns the fused "
                                             "linear cross-entropy off)")


def _quant_method(t: Translation, key: str, value: Any, doc: dict[str, Any]) -> None:
    if not doc.get("quantization_bit"):
        t.no_effect(key, value, "no quantization_bit")
    elif value in BNB:
        t.map(key, value, "bitsandbytes: read with quantization_bit")
    else:
        t.not_modelled(key, value, "a non-bitsandbytes quantization (gptq, awq, hqq, eetq...): not modelled")


def _method(doc: dict[str, Any], lora: bool) -> str:
    return "full" if not lora else "dora" if doc.get("use_dora") else "pissa" if doc.get("pissa_init") else "lora"


def _quant(t: Translation, key: str, value: Any, doc: dict[str, Any]) -> None:
    if value in (None, 0):
        t.no_effect(key, value, "off")
        return
    method = doc.get("quantization_method", "bnb")
    if method not in BNB:
        t.not_modelled(key, value, f"quantization_method {method!r}: not modelled")
        return
    if value == 8:
        t.map(key, value, "bitsandbytes LLM.int8", quant="int8")
    elif value == 4:
        kind = doc.get("quantization_type", "nf4")
        if kind not in ("nf4", "fp4"):
            raise TrainerConfigError(f"{t.source}: quantization_type {kind!r}: expected nf4 or fp4")
        quant = kind + ("-dq" if doc.get("double_quantization", True) else "")
        t.map(key, value, f"bitsandbytes {kind}" + (", double quantization" if quant.endswith("-dq") else ""),
              quant=quant)
    else:
        t.not_modelled(key, value, f"{value}-bit quantization: not modelled (4 and 8 are)")
    t.map("prepare_model_for_training (implied by quantization_bit)", True, F.KBIT_PREPARE_LLAMAFACTORY,
          kbit_prepare=False)


def _defaults(t: Translation, doc: dict[str, Any], lora: bool) -> None:
    """LLaMA-Factory's own defaults for what the file leaves out (they differ from the cell's)."""
    implied = {"seq": ("cutoff_len", 2048), "batch": ("per_device_train_batch_size", 8)}
    if "method" not in t.cell:
        t.map("(default) finetuning_type", "lora", "LLaMA-Factory's default", method=_method(doc, lora))
    if lora:
        implied.update(r=("lora_rank", 8), targets=("lora_target", "all"))
    for cell_key, (key, default) in implied.items():
        if key not in doc:
            t.map(f"(default) {key}", default, "LLaMA-Factory's default", **{cell_key: default})
    r = t.cell.get("r")
    if lora and doc.get("lora_alpha") is None and isinstance(r, int) and not isinstance(r, bool):
        # (a lora_rank that is not a whole number is the cell's to refuse, in one line; 2 x "8" is "88")
        t.map("(default) lora_alpha", 2 * r, "LLaMA-Factory: 2 x lora_rank", alpha=2 * r)
    if "disable_gradient_checkpointing" not in doc:
        t.map("(default) disable_gradient_checkpointing", False, "LLaMA-Factory checkpoints by default",
              gradient_checkpointing=True)
    if "dtype" not in t.cell:
        t.map("(default) compute dtype", "bf16", "neither bf16 nor fp16: LLaMA-Factory infers the model's dtype; "
              "bf16 on a card that has it", dtype="bf16")
