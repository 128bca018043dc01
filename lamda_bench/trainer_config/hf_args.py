"""HF ``TrainingArguments`` / TRL ``SFTConfig`` as JSON (``args.to_json_string()``, or a file of
their keys) -> cell keys, every key's fate recorded.

TrainingArguments says how the Trainer runs the step, not which model or adapter: the model
comes from ``--workload`` (or ``SFTConfig.model_init_kwargs``' neighbour, the script), the
adapter from ``--adapter adapter_config.json``. ``bf16: true`` / ``fp16: true`` are the Trainer's
mixed precision: ``precision = "amp-bf16"`` / ``"amp-fp16"`` (fp32 master weights for what
trains; ``lamda_bench/model/precision.py``). The load dtype is not a TrainingArguments field:
``model_init_kwargs.torch_dtype`` (TRL) when given, else the cell's ``dtype`` (``--dtype``).
"""

from __future__ import annotations

from typing import Any

from . import fate as F
from .common import dtype_name, map_optimizer
from .fate import Translation

NOT_MODELLED = {
    "deepspeed": F.DEEPSPEED,
    "fsdp": F.FSDP,
    "fsdp_config": F.FSDP,
    "parallelism_config": "a tensor/context-parallel layout: not modelled",
    "torch_compile": "torch.compile fuses kernels and changes which tensors live: not modelled",
    "torch_compile_backend": "torch.compile: not modelled",
    "torch_compile_mode": "torch.compile: not modelled",
    "liger_kernel_config": F.LIGER,
    "neftune_noise_alpha": F.NEFTUNE,
    "auto_find_batch_size": "the Trainer halves the batch after an OOM; the estimate takes the batch as given",
    "optim_target_modules": "GaLore/APOLLO projections of chosen modules: not modelled",
    "optim_args": "extra optimizer arguments: not modelled",
    "packing": F.PACKING,
    "padding_free": F.PACKING,
    "label_smoothing_factor": "label smoothing adds temporaries to the loss: not modelled",
    "eval_accumulation_steps": "evaluation is not estimated (training step only)",
    "use_cache": "a KV cache in training mode (transformers turns it off under checkpointing): not modelled",
    "use_cpu": "training on the CPU: the estimate models a device step",
}

NO_EFFECT = {k: F.NO_MEMORY for k in (
    "output_dir", "overwrite_output_dir", "num_train_epochs", "max_steps", "learning_rate", "lr_scheduler_type",
    "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
    "average_tokens_across_devices", "max_grad_norm", "tf32", "bf16_full_eval", "fp16_full_eval",
    "gradient_checkpointing_kwargs", "activation_checkpointing_kwargs", "torch_empty_cache_steps", "logging_strategy", "logging_steps",
    "logging_first_step", "log_on_each_node", "logging_nan_inf_filter", "include_num_input_tokens_seen", "log_level",
    "log_level_replica", "disable_tqdm", "report_to", "run_name", "project", "trackio_space_id", "trackio_bucket_id",
    "trackio_static_space_id", "eval_strategy", "evaluation_strategy", "eval_steps", "eval_delay",
    "prediction_loss_only", "eval_on_start", "eval_do_concat_batches", "eval_use_gather_object", "include_for_metrics",
    "batch_eval_metrics", "save_only_model", "save_strategy", "save_steps", "save_on_each_node", "save_total_limit",
    "save_safetensors", "enable_jit_checkpoint", "push_to_hub", "hub_token", "hub_private_repo", "hub_model_id",
    "hub_strategy", "hub_always_push", "hub_revision", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "ignore_data_skip", "restore_callback_states_from_checkpoint", "full_determinism", "seed",
    "data_seed", "accelerator_config", "dataloader_drop_last", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "dataloader_multiprocessing_context",
    "dataloader_in_order", "remove_unused_columns", "label_names", "train_sampling_strategy", "length_column_name",
    "group_by_length", "ddp_find_unused_parameters", "ddp_bucket_cap_mb", "ddp_broadcast_buffers", "ddp_static_graph",
    "ddp_backend", "ddp_timeout", "debug", "skip_memory_metrics", "do_train", "do_eval", "do_predict",
    "resume_from_checkpoint", "local_rank", "logging_dir", "half_precision_backend", "past_index", "disable_tqdm",
    "include_tokens_per_second", "include_inputs_for_metrics", "save_on_each_node", "push_to_hub_model_id",
    "mp_parameters", "ray_scope", "split_batches", "dispatch_batches", "eval_packing", "dataset_text_field",
    "dataset_kwargs", "dataset_num_proc", "dataset_batch_size", "eos_token", "pad_token", "chat_template_path",
    "completion_only_loss", "assistant_only_loss", "dataset_name", "shuffle_dataset", "loss_type",
    "model_init_kwargs", "pad_to_multiple_of", "per_device_eval_batch_size", "per_gpu_eval_batch_size",
    "_n_gpu", "use_ipex", "jit_mode_eval", "use_mps_device", "tpu_num_cores", "tpu_metrics_debug",
    "fp16_opt_level", "fp16_backend", "push_to_hub_organization", "push_to_hub_token", "torchdynamo",
    "log_on_each_node",
)}
NO_EFFECT.update({
    "bf16": "off: no bf16 mixed precision", "fp16": "off: no fp16 mixed precision",
    "gradient_accumulation_steps": F.ACCUMULATION,
    "per_device_eval_batch_size": "evaluation is not estimated (training step only)",
    "model_init_kwargs": "read for its torch_dtype only; the rest (device_map, attn_implementation...) is not",
    "use_liger_kernel": "off",
})
SEQ_KEYS = ("max_length", "max_seq_length")


def translate(doc: dict[str, Any], source: str, t: Translation | None = None) -> Translation:
    """The keys of a TrainingArguments/SFTConfig dict; ``t`` given: add to it (LLaMA-Factory's
    YAML takes every TrainingArguments key beside its own)."""
    t = t or Translation("hf-trainingargs", source)
    for key, value in doc.items():
        if not map_key(t, key, value, doc):
            F.classify_rest(t, key, value, NO_EFFECT, NOT_MODELLED)
    return t


def map_key(t: Translation, key: str, value: Any, doc: dict[str, Any]) -> bool:
    """Map one TrainingArguments key when it sets a cell key; False when it does not."""
    if key in ("per_device_train_batch_size", "per_gpu_train_batch_size"):
        t.map(key, value, "per-device micro batch; memory follows it", batch=value)
    elif key in SEQ_KEYS and value is not None and not any(k in doc for k in SEQ_KEYS[:SEQ_KEYS.index(key)]):
        t.map(key, value, F.FULL_ROWS, seq=value)
    elif key in ("gradient_checkpointing", "activation_checkpointing"):
        other = "activation_checkpointing" if key == "gradient_checkpointing" else "gradient_checkpointing"
        on = bool(value) or bool(doc.get(other))  # transformers 5 renamed the one into the other
        t.map(key, value, "transformers 5's name for gradient checkpointing" if key == "activation_checkpointing"
              else "", gradient_checkpointing=on)
    elif key == "bf16" and value:
        t.map(key, value, "the Trainer's bf16 mixed precision: fp32 master weights for what trains",
              precision="amp-bf16")
    elif key == "fp16" and value and not doc.get("bf16"):
        t.map(key, value, "the Trainer's fp16 mixed precision with a GradScaler", precision="amp-fp16")
    elif key == "optim":
        map_optimizer(t, key, value)
    elif key == "model_init_kwargs" and isinstance(value, dict) and dtype_name(value.get("torch_dtype",
                                                                                          value.get("dtype"))):
        dtype = dtype_name(value.get("torch_dtype", value.get("dtype")))
        t.map(key, value, "its torch_dtype is the load dtype; the other init kwargs are not read", dtype=dtype)
    elif key == "activation_offloading":  # TRL's SFTConfig: get_act_offloading_ctx_manager, CUDA streams
        t.map(key, value, F.OFFLOAD + F.OFFLOAD_STREAMS, offload_activations=True) if not F.is_off(value) \
            else t.no_effect(key, value, "off")
    elif key == "use_liger_kernel" and not F.is_off(value):
        map_liger(t, key, value, fused=(doc.get("liger_kernel_config") or {}).get("fused_linear_cross_entropy", True))
    else:
        return False
    return True


def map_liger(t: Translation, key: str, value: Any, fused: Any) -> None:
    """Liger's ``apply_liger_kernel_to_*`` defaults: fused linear CE, RoPE, RMSNorm, SwiGLU on; the loss
    is the part modelled."""
    if F.is_off(fused):
        t.not_modelled(key, value, F.LIGER + " (fused_linear_cross_entropy off in liger_kernel_config)")
    else:
        t.partly(key, value, F.LIGER_DEFAULTS, loss="fused_linear_ce")
