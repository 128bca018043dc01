"""An axolotl YAML -> cell keys, every key's fate recorded (``fate.Translation``).

How axolotl reads these keys (src/axolotl/loaders/model.py, ``_set_quantization_config``):
``adapter: qlora`` with ``load_in_4bit`` loads the base with bitsandbytes NF4 and double
quantization (``bnb_4bit_use_double_quant: True``) -> ``quant = "nf4-dq"``; ``adapter: lora``
with ``load_in_8bit`` -> ``quant = "int8"``. The load dtype is bf16 when ``bf16`` is true or
``auto``, else fp16 when ``fp16`` or ``load_in_8bit``, else fp32. With an adapter the Trainer's
autocast runs the step: ``precision = "amp-bf16"`` (fp32 adapter weights, as PEFT keeps them);
full fine-tuning keeps bf16 weights, gradients and moments (``pure``).
Either quantized path also runs PEFT's ``prepare_model_for_kbit_training``, and then casts the norms and
the embedding modules back to the load dtype: ``kbit_prepare`` stays false (``fate.KBIT_PREPARE_AXOLOTL``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import fate as F
from .common import map_attention, map_model, map_optimizer, number, targets_of
from .fate import Translation, TrainerConfigError
from . import objective

MAPPED_KEYS = ("base_model", "base_model_config", "adapter", "load_in_4bit", "load_in_8bit", "lora_r", "lora_alpha",
               "lora_dropout", "lora_target_modules", "lora_target_linear", "peft_use_dora", "sequence_len",
               "micro_batch_size", "gradient_checkpointing", "bf16", "fp16", "optimizer", "sdp_attention",
               "eager_attention", "attention", "attn_implementation")

NOT_MODELLED = {
    "sample_packing": F.PACKING,
    "flash_attention": F.ATTENTION_KERNEL,
    "flex_attention": F.ATTENTION_KERNEL,
    "xformers_attention": F.ATTENTION_KERNEL,
    "s2_attention": F.ATTENTION_KERNEL,
    "deepspeed": F.DEEPSPEED,
    "fsdp": F.FSDP,
    "fsdp_config": F.FSDP,
    "fsdp_version": F.FSDP,
    "liger_rope": F.LIGER, "liger_rms_norm": F.LIGER, "liger_glu_activation": F.LIGER,
    "liger_layer_norm": F.LIGER, "liger_cross_entropy": F.LIGER,
    "cut_cross_entropy": F.CUT_CE,
    "plugins": "axolotl plugins (Liger, Cut Cross-Entropy, ...) replace modules; not modelled",
    "neftune_noise_alpha": F.NEFTUNE,
    "unsloth_lora_mlp": "Unsloth kernels: not modelled", "unsloth_lora_qkv": "Unsloth kernels: not modelled",
    "unsloth_lora_o": "Unsloth kernels: not modelled", "unsloth_cross_entropy_loss": "Unsloth kernels: not modelled",
    "lora_modules_to_save": "fully trained extra modules (embeddings, LM head): not modelled",
    "lora_model_dir": "an existing adapter loaded from disk: its rank and targets are not read",
    "gptq": "a GPTQ-quantized base: not modelled (quant covers bitsandbytes only)",
    "bnb_config_kwargs": "bitsandbytes settings beside axolotl's defaults: not modelled",
    "torch_compile": "torch.compile fuses kernels and changes which tensors live: not modelled",
    "relora_steps": "ReLoRA restarts: not modelled",
    "lora_fan_in_fan_out": "fan-in/fan-out (Conv1D) layout: not modelled",
    "peft_layers_to_transform": "adapters on some layers only: not modelled",
    "eval_batch_size": "an evaluation step's memory is not estimated (training step only)",
}

NO_EFFECT = {k: F.NO_MEMORY for k in (
    "base_model_ignore_patterns", "tokenizer_type", "tokenizer_config", "tokenizer_use_fast", "model_type",
    "trust_remote_code", "strict", "datasets", "test_datasets", "dataset_prepared_path", "val_set_size",
    "output_dir", "hub_model_id", "hub_strategy", "wandb_project", "wandb_entity", "wandb_watch", "wandb_name",
    "wandb_run_id", "wandb_log_model", "mlflow_tracking_uri", "mlflow_experiment_name", "comet_api_key",
    "num_epochs", "max_steps", "lr_scheduler", "learning_rate", "warmup_steps", "warmup_ratio", "weight_decay",
    "max_grad_norm", "adam_beta1", "adam_beta2", "adam_epsilon", "cosine_min_lr_ratio", "lr_quadratic_warmup",
    "train_on_inputs", "group_by_length", "tf32", "early_stopping_patience", "resume_from_checkpoint",
    "auto_resume_from_checkpoints", "local_rank", "logging_steps", "evals_per_epoch", "eval_steps",
    "eval_table_size", "eval_max_new_tokens", "eval_sample_packing", "saves_per_epoch", "save_steps",
    "save_total_limit", "save_safetensors", "save_strategy", "debug", "special_tokens", "tokens",
    "chat_template", "default_system_message", "dataset_processes", "shuffle_merged_datasets", "hf_use_auth_token",
    "seed", "ddp_timeout", "ddp_bucket_cap_mb", "ddp_broadcast_buffers", "ddp_find_unused_parameters",
    "gradient_checkpointing_kwargs", "do_bench_eval", "bench_dataset", "loss_watchdog_threshold",
    "loss_watchdog_patience", "dataloader_num_workers", "dataloader_pin_memory", "dataloader_prefetch_factor",
    "remove_unused_columns", "low_cpu_mem_usage", "is_llama_derived_model", "is_mistral_derived_model",
    "is_qwen_derived_model", "sequence_len_overflow_handling", "eval_causal_lm_metrics", "profiler_steps",
    "use_tensorboard", "use_wandb", "use_mlflow", "torch_compile_backend", "lora_on_cpu", "merge_lora",
    "include_mfu", "include_tokens_per_second",
)}
NO_EFFECT.update({
    "gradient_accumulation_steps": F.ACCUMULATION,
    "pad_to_sequence_len": F.FULL_ROWS,
    "lr_scheduler_kwargs": F.NO_MEMORY,
    "liger_fused_linear_cross_entropy": "off",
})


def _offloading(t: Translation, key: str, value: Any, adapter: Any) -> None:
    """axolotl's ActivationOffloadingMixin: TRL's OffloadActivations around each training step; true
    with CUDA streams, "legacy" without; "disk" and "hidden_states" are other mechanisms."""
    if F.is_off(value):
        t.no_effect(key, value, "off")
    elif value not in (True, "legacy"):
        t.not_modelled(key, value, f"activation_offloading {value!r} (to disk, or checkpointed hidden states "
                                   "only) is not modelled; estimated without offloading")
    elif adapter:
        t.partly(key, value, F.OFFLOAD + "; " + F.OFFLOAD_AXOLOTL_PEFT
                 + (F.OFFLOAD_STREAMS if value is True else ""), offload_activations=True)
    else:
        t.map(key, value, F.OFFLOAD + (F.OFFLOAD_STREAMS if value is True else ""), offload_activations=True)


def translate(doc: dict[str, Any], source: str, config_dir: Path) -> Translation:
    t = Translation("axolotl", source)
    adapter = doc.get("adapter")
    four, eight = bool(doc.get("load_in_4bit")), bool(doc.get("load_in_8bit"))
    for key, value in doc.items():
        if key in MAPPED_KEYS:
            _map(t, key, value, doc, config_dir)
        elif key == "liger_fused_linear_cross_entropy" and not F.is_off(value):  # LigerPlugin: this kernel alone
            t.map(key, value, F.FUSED_CE, loss="fused_linear_ce")
        elif key == "activation_offloading":
            _offloading(t, key, value, adapter)
        elif not objective.axolotl_key(t, key, value, doc):
            F.classify_rest(t, key, value, NO_EFFECT, NOT_MODELLED)
    if "base_model" not in doc:
        raise TrainerConfigError(f"{source}: no base_model: an axolotl config names its model there")
    if "adapter" not in doc:  # axolotl reads no adapter key as full fine-tuning
        t.map("(implied) adapter", None, "no adapter key: axolotl runs full fine-tuning", method="full")
    if adapter in ("lora", "qlora") and (four or eight):
        t.map("prepare_model_for_kbit_training (implied by adapter and load_in_*bit)", True, F.KBIT_PREPARE_AXOLOTL,
              kbit_prepare=False)
    if "dtype" not in t.cell:
        dtype = "fp16" if eight else "fp32"
        t.map("(implied) load dtype", dtype, "neither bf16 nor fp16: axolotl loads in "
              + ("fp16 for load_in_8bit" if eight else "fp32"), dtype=dtype)
    return t


_AMP = {True: "; the Trainer autocasts, the adapter's weights are fp32 masters",
        False: "; full fine-tuning keeps its weights in that dtype (autocast over them changes no stored bytes)"}


def _map(t: Translation, key: str, value: Any, doc: dict[str, Any], config_dir: Path) -> None:
    adapter = doc.get("adapter")
    if key == "base_model":
        if doc.get("base_model_config"):
            t.no_effect(key, value, "the model's config is base_model_config's")
        else:
            map_model(t, key, value, config_dir)
    elif key == "base_model_config":
        map_model(t, key, value, config_dir) if value else t.no_effect(key, value, "unset: base_model's")
    elif key == "adapter":
        if adapter in (None, ""):
            t.map(key, value, "no adapter: full fine-tuning", method="full")
        elif adapter in ("lora", "qlora"):
            method = "dora" if doc.get("peft_use_dora") else "lora"
            t.map(key, value, **{"method": method})
        else:
            raise TrainerConfigError(f"{t.source}: adapter {adapter!r}: lamda-bench models lora and qlora "
                                     "(and full fine-tuning, no adapter)")
    elif key == "load_in_4bit":
        if value and adapter == "qlora":
            t.map(key, value, "axolotl's qlora: NF4, double quantization", quant="nf4-dq")
        elif value:
            t.not_modelled(key, value, f"4-bit load with adapter {adapter!r}: axolotl builds no bitsandbytes "
                                       "config for it; not modelled")
        else:
            t.no_effect(key, value, "off")
    elif key == "load_in_8bit":
        if value and adapter == "lora":
            t.map(key, value, "bitsandbytes LLM.int8", quant="int8")
        elif value:
            t.not_modelled(key, value, f"8-bit load with adapter {adapter!r}: not modelled")
        else:
            t.no_effect(key, value, "off")
    elif key == "lora_r":
        t.map(key, value, r=value) if adapter else t.no_effect(key, value, "no adapter")
    elif key == "lora_alpha":
        t.map(key, value, "scales the update; no memory effect", alpha=value) if adapter \
            else t.no_effect(key, value, "no adapter")
    elif key == "lora_dropout":
        t.map(key, value, dropout=number(value, 0.0)) if adapter else t.no_effect(key, value, "no adapter")
    elif key == "lora_target_modules":
        targets = targets_of(value)
        if not adapter or targets is None or doc.get("lora_target_linear"):
            t.no_effect(key, value, "lora_target_linear decides" if doc.get("lora_target_linear") else "unset")
        else:
            t.map(key, value, targets=targets)
    elif key == "lora_target_linear":
        t.map(key, value, "every linear of the blocks", targets="all") if value and adapter \
            else t.no_effect(key, value, "off")
    elif key == "peft_use_dora":
        t.map(key, value, "method dora (set with adapter)") if value else t.no_effect(key, value, "off")
    elif key == "sequence_len":
        t.map(key, value, seq=value)
    elif key == "micro_batch_size":
        t.map(key, value, "per-device micro batch; memory follows it", batch=value)
    elif key == "gradient_checkpointing":
        if value in (True, False):
            t.map(key, value, gradient_checkpointing=value)
        else:
            t.not_modelled(key, value, "offloaded/unsloth checkpointing: not modelled; estimated without")
    elif key == "bf16":
        if value in (True, "auto"):
            t.map(key, value, "model loaded in bf16" + (" (auto: on a card with bf16)" if value == "auto" else "")
                  + _AMP[bool(adapter)], dtype="bf16", **({"precision": "amp-bf16"} if adapter else {}))
        else:
            t.no_effect(key, value, "off")
    elif key == "fp16":
        if value and doc.get("bf16") not in (True, "auto"):
            t.map(key, value, "model loaded in fp16" + _AMP[bool(adapter)], dtype="fp16",
                  **({"precision": "amp-fp16"} if adapter else {}))
        else:
            t.no_effect(key, value, "off" if not value else "bf16 wins")
    elif key == "optimizer":
        map_optimizer(t, key, value)
    elif key in ("attention", "attn_implementation"):
        map_attention(t, key, value)
    elif key in ("sdp_attention", "eager_attention"):
        if value and not doc.get("flash_attention"):
            t.map(key, value, attn_implementation="sdpa" if key == "sdp_attention" else "eager")
        else:
            t.no_effect(key, value, "off" if not value else "flash_attention wins")
