"""Model shapes to fine-tune: transformers models built from a config.json, plus a bare linear stack.

A cell's ``workload`` is

- a catalogue name (``lamda-bench list workloads``): a committed ``config.json`` under
  ``lamda_bench/model/configs/`` (shape facts from the public model cards, no weights), or ``linear``;
- a path to a ``config.json`` or a folder holding one, or a Hugging Face hub id found in the
  local cache (``model_config``: nothing is downloaded).

The model class comes from the config's ``architectures`` (``model_config.task_and_class``),
``layers`` overrides the depth, and the model is built on the ``meta`` device (no memory;
what full-size estimates start from), on ``cpu`` or on ``cuda``. Only ``minilm-l6`` has real
weights (``lamda_bench.model.pretrained``); the others are randomly initialised, seeded with
``cell.seed``.

What a fine-tuner would run, per task (``make_inputs`` / ``compute_loss``):

- ``causal-lm``: ``input_ids`` of ``seq`` random tokens, ``labels = input_ids`` (the model
  shifts them); no attention mask (all tokens valid, so SDPA may take its causal fast path).
- ``seq2seq`` (summarization style): ``seq`` source tokens, ``seq`` target tokens as
  ``labels`` and explicit ``decoder_input_ids`` (labels shifted right after the config's
  ``decoder_start_token_id``, as the model would do itself).
- ``seq-cls`` (GLUE style): one random label per sequence (``num_labels`` classes; the
  problem type is set so the loss is plain cross-entropy). The classification head stays
  frozen like every other non-adapter weight: the benchmark compares adapters, not heads.
- ``encoder`` (a bare model without head, e.g. MiniLM's ``BertModel``): a sentence-embedding
  regression, MSE between the mean-pooled last hidden state and a fixed random target.
- ``linear``: ``layers`` stacked ``nn.Linear(d_in, d_out, bias=False)`` (no nonlinearity),
  input ``x`` with ``requires_grad=True`` so each layer behaves like one deep in a
  network (its input gradient is computed); loss = mean of the squared output.
- ``image-text`` (vision-language models): images and text as the model's processor would make
  them, labels on the text (``lamda_bench.model.vlm``; ``images``, ``image_size``,
  ``vision_layers`` cell keys; ``seq`` counts text tokens only).

Every model is returned in train mode (dropout active), as a training step runs it.
Targets and presets: ``lamda_bench.model.targets``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import config as model_config
from . import fused_ce
from . import objective
from . import moe
from . import rope
from ..suite.cell import Cell
from .config import WorkloadError
from .targets import PRESETS, available_presets, matches_target, target_linears  # noqa: F401 - re-exported
from .targets import resolve_targets as _resolve_targets
from . import vlm
from ..hints import did_you_mean as _hint

LINEAR_DEFAULT_DIM = 4096  # LLaMA2-7B hidden size, when a linear cell gives no d_in / d_out
CONFIG_DIR = Path(__file__).parent / "configs"
TORCH_DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

# Catalogue: name -> what it is. Each name has CONFIG_DIR/<name>.json. The llama2/deberta/bart/
# tiny entries reproduce the shapes this harness always used (ids and figures unchanged).
CATALOGUE = {
    "llama2-7b": "LLaMA-2-7B",
    "llama2-13b": "LLaMA-2-13B",
    "llama2-70b": "LLaMA-2-70B",
    "llama3.1-8b": "Llama-3.1-8B (meta-llama/Llama-3.1-8B)",
    "llama3.1-70b": "Llama-3.1-70B (meta-llama/Llama-3.1-70B)",
    "mistral-7b-v0.3": "Mistral-7B-v0.3 (mistralai/Mistral-7B-v0.3)",
    "qwen2.5-7b": "Qwen2.5-7B (Qwen/Qwen2.5-7B), q/k/v projections with bias",
    "gemma2-9b": "Gemma-2-9B (google/gemma-2-9b), tied embeddings, head_dim 256",
    "phi3-mini": "Phi-3-mini-4k (microsoft/Phi-3-mini-4k-instruct), fused qkv_proj and gate_up_proj",
    "deberta-v3-base": "DeBERTa-v3-base shape, 2-label classifier",
    "bart-large": "BART-large shape, seq2seq LM (layers sets encoder and decoder depth; dropout 0.1 only)",
    "minilm-l6": "real all-MiniLM-L6-v2 BertModel, pretrained weights",
    "tiny-llama": "tiny LLaMA for tests",
    "tiny-deberta": "tiny DeBERTa-v2 classifier for tests",
    "tiny-bart": "tiny BART seq2seq for tests",
    "mixtral-8x7b-v0.1": "Mixtral-8x7B-v0.1 (mistralai/Mixtral-8x7B-v0.1), MoE: 8 experts, top-2",
    "qwen3-30b-a3b": "Qwen3-30B-A3B (Qwen/Qwen3-30B-A3B), MoE: 128 experts, top-8",
    "tiny-mixtral": "tiny Mixtral MoE for tests (4 experts, top-2)",
    "tiny-qwen3-moe": "tiny Qwen3-MoE for tests (8 experts, top-2)",
    "qwen2-vl-2b": "Qwen2-VL-2B (Qwen/Qwen2-VL-2B-Instruct), vision-language: 675M ViT, patch merger, tied embeddings",
    "llava1.5-7b": "LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf), vision-language: CLIP ViT-L/14-336, 2-layer MLP projector",
    "gemma3-4b": "Gemma-3-4B multimodal (google/gemma-3-4b-it), vision-language: SigLIP 896, 256 tokens per image",
    "llama3.2-11b-vision": "Llama-3.2-11B-Vision (meta-llama/Llama-3.2-11B-Vision), images through cross-attention, 560 tiles",
    "tiny-qwen2-vl": "tiny Qwen2-VL vision-language model for tests",
    "tiny-llava": "tiny LLaVA vision-language model for tests",
    "tiny-gemma3": "tiny Gemma 3 vision-language model for tests",
    "tiny-mllama": "tiny Mllama (Llama 3.2 Vision) model for tests, 56-pixel tiles",
}
PRETRAINED = ("minilm-l6",)


@dataclass(frozen=True)
class Workload:
    """A model shape: ``config`` is the config.json dict ({} for linear), ``task`` decides
    inputs and loss, ``class_name`` the transformers class, ``source`` where the config came from."""

    name: str
    family: str  # the config's model_type, or "linear"
    task: str
    description: str
    class_name: str | None = None
    pretrained: bool = False
    default_layers: int = 1
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    source: model_config.ConfigSource | None = field(default=None, repr=False, compare=False)

    @property
    def config_sha256(self) -> str | None:
        return model_config.config_sha256(self.config) if self.config else None

    @property
    def target_presets(self) -> tuple[str, ...]:
        """The presets that select something on this model (built on meta with 2 layers)."""
        from .catalogue_facts import presets_of

        return presets_of(self.name)


def _from_config(name: str, description: str, source: model_config.ConfigSource, pretrained: bool = False) -> Workload:
    config = model_config.read_config(source)
    where = f"workload {name!r}"
    task, class_name = model_config.task_and_class(config, where)
    if task == vlm.TASK:
        vlm.check_family(config["model_type"], where)  # refused when read, not after the cell started
    cfg = model_config.build_config(config, None, task, where)
    layers = model_config.shape_facts(cfg)["layers"] or 1
    return Workload(name, config["model_type"], task, description, class_name, pretrained, int(layers), config, source)


class _Catalogue(Mapping):
    """Name -> Workload, each config read on first use: importing this module (every cell
    process, every suite parse) stays free of transformers imports and config parsing."""

    def __init__(self) -> None:
        self._names = [*CATALOGUE, "linear"]
        self._loaded: dict[str, Workload] = {}

    def __getitem__(self, name: str) -> Workload:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._loaded:
            if name == "linear":
                self._loaded[name] = Workload("linear", "linear", "linear",
                                              f"`layers` stacked nn.Linear(d_in, d_out) (default {LINEAR_DEFAULT_DIM})")
            else:
                source = model_config.ConfigSource("catalogue", name, CONFIG_DIR / f"{name}.json")
                self._loaded[name] = _from_config(name, CATALOGUE[name], source, name in PRETRAINED)
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


WORKLOADS: Mapping[str, Workload] = _Catalogue()


def resolve_reference(name: str, base_dir: Path | None = None) -> str:
    """What a cell carries for a workload: a catalogue name as is; a config path made absolute
    (relative to ``base_dir``); a hub id as is. The config is read and checked now (one-line
    WorkloadError), so a bad workload fails when the suite is parsed."""
    if name in WORKLOADS:
        return name
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if not model_config.looks_like_reference(name) and not (base / name).exists():
        raise WorkloadError(f"unknown workload {name!r}{_hint(name, WORKLOADS)}; known: {', '.join(sorted(WORKLOADS))}, "
                            "or a path to a config.json / its folder, or a cached Hugging Face hub id")
    source = model_config.locate(name, base_dir)
    get_workload(source.ref)
    return source.ref


@functools.lru_cache(maxsize=64)
def get_workload(name: str) -> Workload:
    """A catalogue workload, or one from a config reference (absolute path or cached hub id)."""
    if name in WORKLOADS:
        return WORKLOADS[name]
    if not model_config.looks_like_reference(name):
        raise WorkloadError(
            f"unknown workload {name!r}{_hint(name, WORKLOADS)}; known: {', '.join(sorted(WORKLOADS))}"
        )
    source = model_config.locate(name)
    return _from_config(name, f"{source.kind} config {source.path}", source)


def torch_dtype(name: str) -> torch.dtype:
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    try:
        return dtypes[TORCH_DTYPE_ALIASES.get(name, name)]
    except KeyError:
        raise WorkloadError(f"unknown dtype {name!r}; known: {', '.join(dtypes)}") from None


# ---- building ----------------------------------------------------------------------------


class LinearStack(nn.Module):
    """The bare ``linear`` workload: ``blocks.i.proj`` are the adaptable linears."""

    def __init__(self, d_in: int, d_out: int, layers: int):
        super().__init__()
        self.blocks = nn.ModuleList(_LinearBlock(d_in, d_out) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block.proj(x)
        return x


class _LinearBlock(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False)


def _layers(workload: Workload, cell: Cell) -> int:
    layers = workload.default_layers if cell.layers is None else cell.layers
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise WorkloadError(f"layers must be an integer >= 1, got {layers!r}")
    return layers


@functools.lru_cache(maxsize=32)
def hf_config(name: str, layers: int):
    """The transformers config object of a workload at ``layers`` depth."""
    workload = get_workload(name)
    return model_config.build_config(workload.config, layers, workload.task, f"workload {name!r}")


@functools.lru_cache(maxsize=32)
def _vlm_config(name: str, layers: int, vision_layers: int | None):
    """An image-text workload's config: ``layers`` sets the language model's depth, ``vision_layers`` the tower's."""
    workload = get_workload(name)
    d = vlm.adjust_config(workload.config, layers, vision_layers)
    return model_config.build_config(d, None, workload.task, f"workload {name!r}")


def cell_config(cell: Cell):
    """The transformers config object a cell builds (every depth override applied)."""
    workload = get_workload(cell.workload)
    if workload.task == vlm.TASK:
        return _vlm_config(cell.workload, _layers(workload, cell), cell.vision_layers)
    return hf_config(cell.workload, _layers(workload, cell))


def _check_image_keys(workload: Workload, cell: Cell) -> None:
    if workload.task != vlm.TASK:
        given = [k for k in ("images", "image_size", "vision_layers") if getattr(cell, k, None) is not None]
        if given:
            raise WorkloadError(f"{', '.join(given)} apply to image-text workloads only, not {workload.name!r} "
                                f"({workload.task})")


def build_model(cell: Cell, device: str | torch.device = "cpu") -> nn.Module:
    """The cell's model in ``cell.dtype`` on ``device`` (``meta``: shapes only, no memory), train mode."""
    workload = get_workload(cell.workload)
    dtype = torch_dtype(cell.dtype)
    device = torch.device(device)
    if workload.task != "linear" and (cell.d_in is not None or cell.d_out is not None):
        raise WorkloadError(f"d_in / d_out apply to the linear workload only, not {workload.name!r}")
    _check_image_keys(workload, cell)
    layers = _layers(workload, cell)

    torch.manual_seed(cell.seed)
    if workload.task == "linear":
        d_in, d_out = _linear_dims(cell)
        if layers > 1 and d_in != d_out:
            raise WorkloadError(f"a linear stack of {layers} layers needs d_in == d_out, got {d_in} and {d_out}")
        with torch.device(device):
            model = LinearStack(d_in, d_out, layers).to(dtype)
        return model.train()
    if workload.pretrained and device.type != "meta":
        return _load_pretrained(workload, cell, layers, dtype, device).train()

    model_class = model_config.model_class(workload.class_name)
    config = copy.deepcopy(cell_config(cell))  # _from_config writes dtype/attention into it
    moe.apply_cell_keys(config, cell, workload.name)  # experts kernel, router loss: refused on a dense model
    attn = _choose_attention(model_class, cell.attn_implementation, workload.name)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype, attn_implementation=attn)
    rope.make_traceable(model)  # Phi-3.5-MoE's rotary branches on max(position_ids)
    return model.train()


def _linear_dims(cell: Cell) -> tuple[int, int]:
    d_in = LINEAR_DEFAULT_DIM if cell.d_in is None else cell.d_in
    d_out = d_in if cell.d_out is None else cell.d_out
    for key, value in (("d_in", d_in), ("d_out", d_out)):
        if not isinstance(value, int) or value < 1:
            raise WorkloadError(f"{key} must be an integer >= 1, got {value!r}")
    return d_in, d_out


def _choose_attention(model_class, requested: str, workload_name: str) -> str:
    supports_sdpa = bool(getattr(model_class, "_supports_sdpa", False))
    if requested == "auto":
        return "sdpa" if supports_sdpa else "eager"
    if requested == "sdpa" and not supports_sdpa:
        raise WorkloadError(f"workload {workload_name!r} ({model_class.__name__}) has no sdpa attention; use eager or auto")
    if requested not in ("sdpa", "eager"):
        raise WorkloadError(f"unknown attn_implementation {requested!r}; known: auto, sdpa, eager")
    return requested


def _load_pretrained(workload: Workload, cell: Cell, layers: int, dtype, device) -> nn.Module:
    from .pretrained import PretrainedUnavailable, load_minilm

    try:
        model = load_minilm(dtype)
    except PretrainedUnavailable as exc:
        raise WorkloadError(f"workload {workload.name!r}: {exc}") from None
    have = len(model.encoder.layer)
    if layers > have:
        raise WorkloadError(f"workload {workload.name!r} has {have} pretrained layers, cannot build {layers}")
    if layers < have:  # keep the first `layers` real layers
        model.encoder.layer = model.encoder.layer[:layers]
        model.config.num_hidden_layers = layers
    model.set_attn_implementation(_choose_attention(type(model), cell.attn_implementation, workload.name))
    return model.to(device)


def attention_implementation(model: nn.Module) -> str:
    """The attention kernel family the model runs ("sdpa", "eager"...); "none" for the linear stack."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None) if config is not None else None
    return str(impl) if impl else "none"


def model_info(cell: Cell, model: nn.Module) -> dict[str, Any]:
    """``info.model``: ``model_facts`` plus what the built model says: its experts (``moe.facts``),
    the kernels that run as reference PyTorch code here (``kernels``) and the checkpoint's own
    ``quantization_config`` (``checkpoint_quant``). Depth extrapolation calls it on a meta model at
    the target depth, so an extrapolated record says the same as a traced one."""
    from . import checkpoint_quant, kernels

    info = model_facts(cell)
    moe_facts = moe.facts(model)
    if moe_facts is not None:
        info["moe"] = moe_facts
        info["experts_implementation"] = moe_facts["experts_implementation"]
    fallbacks = kernels.reference_fallbacks(model)
    if fallbacks:
        info["reference_kernels"] = fallbacks
    workload = get_workload(cell.workload)
    stored = checkpoint_quant.facts(workload.config, cell)
    if stored is not None:
        info["checkpoint_quantization"] = stored
    return info


def model_facts(cell: Cell) -> dict[str, Any]:
    """What the record stores about the model: where its config came from, the config's hash
    and the fields that decide memory (at the cell's depth), so two runs of "the same model"
    can be checked to be the same shape."""
    workload = get_workload(cell.workload)
    if workload.task == "linear":
        d_in, d_out = _linear_dims(cell)
        return {"source": "builtin", "task": "linear", "d_in": d_in, "d_out": d_out, "layers": _layers(workload, cell)}
    facts = {
        "source": workload.source.kind if workload.source else None,
        "config_sha256": workload.config_sha256,
        "model_type": workload.family,
        "class": workload.class_name,
        "task": workload.task,
    }
    cfg = cell_config(cell)
    facts.update(model_config.shape_facts(cfg))
    if workload.task == vlm.TASK:
        facts["vlm"] = vlm.facts(cell, cfg, workload.family)
    return facts


# ---- inputs and loss ----------------------------------------------------------------------


def make_inputs(cell: Cell, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A fixed random batch for the cell (same seed, same batch). See the module docstring per task."""
    workload = get_workload(cell.workload)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(cell.seed + 1)
    b, s = cell.batch, cell.seq
    dtype = torch_dtype(cell.dtype)

    def tokens(shape, high):
        if device.type == "meta":
            return torch.zeros(shape, dtype=torch.long, device=device)
        return torch.randint(0, high, shape, generator=gen).to(device)

    def floats(shape):
        if device.type == "meta":
            return torch.zeros(shape, dtype=dtype, device=device)
        return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)

    if workload.task == "linear":
        d_in, _ = _linear_dims(cell)
        return {"x": floats((b, s, d_in)).requires_grad_(True)}
    if workload.task == vlm.TASK:
        return vlm.make_inputs(cell, cell_config(cell), workload.family, device, dtype, gen)
    config = hf_config(cell.workload, _layers(workload, cell))
    facts = model_config.shape_facts(config)
    vocab = facts["vocab_size"]
    if workload.task == "causal-lm" and cell.objective != "sft":  # preference rows (model/objective.py)
        return objective.make_inputs(cell, lambda shape: tokens(shape, vocab), device)
    if workload.task == "causal-lm":
        ids = tokens((b, s), vocab)
        return {"input_ids": ids, "labels": ids.clone()}
    if workload.task == "seq2seq":
        labels = tokens((b, s), vocab)
        start = getattr(config, "decoder_start_token_id", None)
        decoder_input_ids = torch.full_like(labels, 0 if start is None else start)
        decoder_input_ids[:, 1:] = labels[:, :-1]
        return {"input_ids": tokens((b, s), vocab), "decoder_input_ids": decoder_input_ids, "labels": labels}
    if workload.task == "seq-cls":
        if config.num_labels == 1:
            return {"input_ids": tokens((b, s), vocab), "labels": floats((b,))}
        return {"input_ids": tokens((b, s), vocab), "labels": tokens((b,), config.num_labels)}
    if workload.task == "encoder":
        return {"input_ids": tokens((b, s), vocab), "labels": floats((b, facts["hidden_size"]))}
    raise WorkloadError(f"workload {workload.name!r} has unknown task {workload.task!r}")


def compute_loss(cell: Cell, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The scalar training loss of one forward pass (works on the bare model and on a PEFT wrapper)."""
    task = get_workload(cell.workload).task
    if task == "linear":
        return model(inputs["x"]).float().pow(2).mean()
    if task == "encoder":
        hidden = model(input_ids=inputs["input_ids"]).last_hidden_state
        pooled = hidden.float().mean(dim=1)
        return nn.functional.mse_loss(pooled, inputs["labels"].float())
    if task == vlm.TASK:
        with vlm.forward_context():
            return model(**inputs).loss
    if cell.objective != "sft":  # a TRL preference step: policy, reference, log-probs (model/objective.py)
        return objective.compute_loss(cell, model, inputs)
    if cell.loss == "fused_linear_ce":  # the decoder body, then Liger's fused loss: no full logits
        return fused_ce.causal_lm_loss(model, inputs, cell.workload)
    return model(**inputs).loss


def loss_problem(cell: Cell) -> str | None:
    """One line when the cell's loss or objective key cannot apply to its workload, else None."""
    if cell.loss == "model" and cell.objective == "sft" and not cell.precompute_ref_log_probs:
        return None
    workload = get_workload(cell.workload)
    found = objective.problem(cell, workload.task, workload.config)
    if found or cell.loss == "model":
        return found
    return fused_ce.problem(workload.name, workload.task, workload.config, cell.output_router_logits)


# ---- targets ------------------------------------------------------------------------------


def resolve_targets(cell: Cell, model: nn.Module) -> list[str]:
    """The cell's targets as module-name suffixes (``lamda_bench.model.targets.resolve_targets``)."""
    from .vlm_parts import VLM_PRESETS, preset_targets

    workload = get_workload(cell.workload)
    if workload.task == vlm.TASK and isinstance(cell.targets, str) and cell.targets in (*VLM_PRESETS, "all", "attn", "mlp"):
        return preset_targets(model, cell.targets, workload.name)
    if isinstance(cell.targets, str) and cell.targets in VLM_PRESETS:
        raise WorkloadError(f"preset {cell.targets!r} is for image-text workloads; {workload.name!r} is {workload.task}")
    return _resolve_targets(cell.targets, model, workload.name, workload.family)
