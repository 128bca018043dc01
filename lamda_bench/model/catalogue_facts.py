"""What ``lamda-bench list workloads`` shows of each catalogue model: its parameter count and
the target presets that select something on it, from small meta builds (no memory), and the
listing's rows. Apart from ``workloads.py`` because it only reads models, never trains one.
"""

from __future__ import annotations

import functools

from . import config as model_config
from . import moe, vlm, vlm_parts
from ..suite.cell import Cell
from .targets import available_presets
from .workloads import WORKLOADS, Workload, build_model, get_workload, hf_config


@functools.lru_cache(maxsize=None)
def _meta_summary(name: str) -> tuple[int, int, tuple[str, ...]]:
    """(parameters at 1 layer, at 2 layers, presets that select something), from meta builds."""
    workload = get_workload(name)
    counts, presets = [], ("all",)
    for layers in (1, 2):
        model = build_model(Cell(workload=name, method="lora", layers=layers), "meta")
        counts.append(sum(p.numel() for p in model.parameters()))
        if layers == 2 and workload.task != "linear":
            presets = tuple(available_presets(model, workload.family))
            if workload.task == vlm.TASK:
                presets += vlm_parts.available_presets(model, name)
            if moe.experts_modules(model):  # the fused experts: parameters, reached by the expert presets
                from .targets import EXPERT_PRESETS

                presets += tuple(EXPERT_PRESETS)
    return counts[0], counts[1], presets


@functools.lru_cache(maxsize=None)
def _built_count(name: str, layers: int) -> int:
    model = build_model(Cell(workload=name, method="lora", layers=layers), "meta")
    return sum(p.numel() for p in model.parameters())


def presets_of(name: str) -> tuple[str, ...]:
    return _meta_summary(name)[2]


def parameter_count(name: str, layers: int | None = None) -> int:
    """Parameters of the model at ``layers`` depth (default: its own), from two small meta
    builds: blocks are identical, so P(L) = P(1) + (L - 1) * (P(2) - P(1)); an image-text model
    is built at its depth (its vision tower does not scale with ``layers``)."""
    depth = get_workload(name).default_layers if layers is None else layers
    if get_workload(name).task == vlm.TASK:  # unlike blocks (Mllama's cross-attention layers): one meta build
        return _built_count(name, depth)
    one, two, _ = _meta_summary(name)
    return one + (depth - 1) * (two - one)


def _experts_shape(name: str, workload: Workload) -> str:
    """", 8 experts top-2 (expert MLP 14336)" for a MoE config, else ""."""
    cfg = hf_config(name, workload.default_layers)
    if not moe.is_moe_config(cfg):
        return ""
    facts = {k: workload.config.get(k) for k in ("num_experts_per_tok", "moe_intermediate_size", "intermediate_size")}
    mlp = facts["moe_intermediate_size"] or facts["intermediate_size"]
    return f", {moe.expert_count(cfg)} experts top-{facts['num_experts_per_tok']} (expert MLP {mlp})"


def workload_rows() -> list[list[str]]:
    """``lamda-bench list workloads``: name, parameter count, shape, what it is, presets."""
    from ..report.units import fmt_count

    rows = []
    for name, workload in WORKLOADS.items():
        if workload.task == "linear":
            rows.append([name, "d_in x d_out x layers", "", workload.description, ", ".join(workload.target_presets)])
            continue
        f = model_config.shape_facts(hf_config(name, workload.default_layers))
        kv = f" ({f['kv_heads']} kv)" if f["kv_heads"] != f["heads"] else ""
        shape = (f"{workload.task}, hidden {f['hidden_size']}, MLP {f['intermediate_size']}, {f['layers']} layers, "
                 f"{f['heads']} heads{kv} x {f['head_dim']}, vocab {f['vocab_size']}"
                 + (", tied" if f["tie_word_embeddings"] and workload.task == "causal-lm" else "")
                 + _experts_shape(name, workload))
        rows.append([name, fmt_count(parameter_count(name)), shape, workload.description,
                     ", ".join(workload.target_presets)])
    return rows
