"""Named model shapes to fine-tune: transformers models built from config classes, plus a bare linear stack.

Shapes come from transformers config classes (``LlamaConfig``, ``DebertaV2Config``,
``BartConfig``, ``BertConfig``), never from the hub: nothing is downloaded. A model can be
built on the ``meta`` device (no memory; what full-size estimates start from), on ``cpu``
or on ``cuda``. Only ``minilm-l6`` has real weights (``lamda_bench.pretrained``); the
others are randomly initialised, seeded with ``cell.seed``.

What a fine-tuner would run, per family (``make_inputs`` / ``compute_loss``):

- ``llama``: causal LM, ``input_ids`` of ``seq`` random tokens, ``labels = input_ids``
  (the model shifts them); no attention mask (all tokens valid, so SDPA may take its
  causal fast path).
- ``bart``: summarization-style seq2seq (``BartForConditionalGeneration``): ``seq``
  source tokens, ``seq`` target tokens as ``labels`` and explicit ``decoder_input_ids``
  (labels shifted right, as the model would do itself).
- ``deberta``: GLUE-style sequence classification (``DebertaV2ForSequenceClassification``,
  2 labels), one random label per sequence. The classification head stays frozen like
  every other non-adapter weight: the benchmark compares adapters, not heads.
- ``bert`` (MiniLM, a bare ``BertModel`` without head): a sentence-embedding regression,
  MSE between the mean-pooled last hidden state and a fixed random target per sequence.
- ``linear``: ``layers`` stacked ``nn.Linear(d_in, d_out, bias=False)`` (no nonlinearity),
  input ``x`` with ``requires_grad=True`` so each layer behaves like one deep in a
  network (its input gradient is computed); loss = mean of the squared output.

Every model is returned in train mode (dropout active), as a training step runs it.

Targets are module-name suffixes matched the way PEFT matches ``target_modules``: a
module named ``n`` matches suffix ``s`` when ``n == s`` or ``n`` ends with ``"." + s``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .cell import Cell

FAMILIES = ("llama", "deberta", "bart", "bert", "linear")
LINEAR_DEFAULT_DIM = 4096  # LLaMA2-7B hidden size, when a linear cell gives no d_in / d_out


class WorkloadError(ValueError):
    """Bad workload input (unknown name, bad layer count, unknown target...): one-line message."""


@dataclass(frozen=True)
class Workload:
    """A named model shape. ``config`` holds the config-class kwargs (``layers`` excluded)."""

    name: str
    family: str
    description: str
    target_presets: dict[str, tuple[str, ...]]
    pretrained: bool = False
    default_layers: int = 1
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


# ---- the named shapes ---------------------------------------------------------------------

_LLAMA_PRESETS = {
    "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
_DEBERTA_PRESETS = {
    "all": ("query_proj", "key_proj", "value_proj", "attention.output.dense", "intermediate.dense", "output.dense"),
    "attn": ("query_proj", "key_proj", "value_proj", "attention.output.dense"),
}
_BART_PRESETS = {
    "all": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "attn": ("q_proj", "k_proj", "v_proj", "out_proj"),
}
_BERT_PRESETS = {
    "all": ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"),
    "attn": ("query", "key", "value", "attention.output.dense"),
}
_LINEAR_PRESETS = {"all": ("proj",)}


def _llama(hidden, inter, layers, heads, kv_heads, vocab=32000, max_pos=4096):
    return dict(
        hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
        num_key_value_heads=kv_heads, vocab_size=vocab, max_position_embeddings=max_pos,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    ), layers


def _deberta(hidden, inter, layers, heads, vocab=128100):
    # deberta-v3-base's config.json: relative attention, p2c|c2p, 256 position buckets.
    return dict(
        hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads, vocab_size=vocab,
        max_position_embeddings=512, relative_attention=True, position_buckets=256,
        norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type="p2c|c2p",
        position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7, num_labels=2,
        # Plain cross-entropy: without a problem_type, DeBERTa's loss selects labelled rows
        # with nonzero(), a data-dependent shape that fake tensors (estimate mode) cannot run.
        problem_type="single_label_classification",
    ), layers


def _bart(d_model, ffn, layers, heads, vocab=50265):
    return dict(
        d_model=d_model, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, encoder_attention_heads=heads,
        decoder_attention_heads=heads, vocab_size=vocab, max_position_embeddings=1024,
        dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
    ), layers


# all-MiniLM-L6-v2's config.json (what lamda_bench.pretrained loads); used for meta builds.
_MINILM = dict(
    hidden_size=384, intermediate_size=1536, num_attention_heads=12, vocab_size=30522,
    max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
)


def _make(name, family, description, presets, spec, pretrained=False):
    config, layers = spec
    return Workload(name, family, description, presets, pretrained, layers, config)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        _make("llama2-7b", "llama", "LLaMA-2-7B shape (hidden 4096, MLP 11008, 32 layers, 32 heads)",
              _LLAMA_PRESETS, _llama(4096, 11008, 32, 32, 32)),
        _make("llama2-13b", "llama", "LLaMA-2-13B shape (hidden 5120, MLP 13824, 40 layers, 40 heads)",
              _LLAMA_PRESETS, _llama(5120, 13824, 40, 40, 40)),
        _make("llama2-70b", "llama", "LLaMA-2-70B shape (hidden 8192, MLP 28672, 80 layers, 64 heads, GQA 8 kv heads)",
              _LLAMA_PRESETS, _llama(8192, 28672, 80, 64, 8)),
        _make("deberta-v3-base", "deberta", "DeBERTa-v3-base shape, 2-label classifier (hidden 768, 12 layers)",
              _DEBERTA_PRESETS, _deberta(768, 3072, 12, 12)),
        _make("bart-large", "bart", "BART-large shape, seq2seq LM (d_model 1024, 12+12 layers; layers sets both)",
              _BART_PRESETS, _bart(1024, 4096, 12, 16)),
        _make("tiny-llama", "llama", "tiny LLaMA for tests (hidden 64, MLP 176, 2 layers, 4 heads, 2 kv heads)",
              _LLAMA_PRESETS, _llama(64, 176, 2, 4, 2, vocab=256, max_pos=512)),
        _make("tiny-deberta", "deberta", "tiny DeBERTa-v2 classifier for tests (hidden 64, 2 layers)",
              _DEBERTA_PRESETS, _deberta(64, 160, 2, 4, vocab=256)),
        _make("tiny-bart", "bart", "tiny BART seq2seq for tests (d_model 64, 2+2 layers)",
              _BART_PRESETS, _bart(64, 160, 2, 4, vocab=256)),
        Workload("minilm-l6", "bert", "real all-MiniLM-L6-v2 BertModel (hidden 384, 6 layers), pretrained weights",
                 _BERT_PRESETS, True, 6, _MINILM),
        Workload("linear", "linear", f"`layers` stacked nn.Linear(d_in, d_out) (default {LINEAR_DEFAULT_DIM})",
                 _LINEAR_PRESETS, False, 1, {}),
    ]
}


def get_workload(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise WorkloadError(
            f"unknown workload {name!r}{_hint(name, WORKLOADS)}; known: {', '.join(sorted(WORKLOADS))}"
        ) from None


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise WorkloadError(f"unknown dtype {name!r}; known: {', '.join(_DTYPES)}") from None


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


def build_model(cell: Cell, device: str | torch.device = "cpu") -> nn.Module:
    """The cell's model in ``cell.dtype`` on ``device`` (``meta``: shapes only, no memory), train mode."""
    workload = get_workload(cell.workload)
    dtype = torch_dtype(cell.dtype)
    device = torch.device(device)
    if workload.family != "linear" and (cell.d_in is not None or cell.d_out is not None):
        raise WorkloadError(f"d_in / d_out apply to the linear workload only, not {workload.name!r}")
    layers = workload.default_layers if cell.layers is None else cell.layers
    if not isinstance(layers, int) or layers < 1:
        raise WorkloadError(f"layers must be an integer >= 1, got {layers!r}")

    torch.manual_seed(cell.seed)
    if workload.family == "linear":
        d_in, d_out = _linear_dims(cell)
        if layers > 1 and d_in != d_out:
            raise WorkloadError(f"a linear stack of {layers} layers needs d_in == d_out, got {d_in} and {d_out}")
        with torch.device(device):
            model = LinearStack(d_in, d_out, layers).to(dtype)
        return model.train()
    if workload.pretrained and device.type != "meta":
        return _load_pretrained(workload, cell, layers, dtype, device).train()

    model_class, config = _config(workload, layers)
    attn = _choose_attention(model_class, cell.attn_implementation, workload.name)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype, attn_implementation=attn)
    return model.train()


def _linear_dims(cell: Cell) -> tuple[int, int]:
    d_in = LINEAR_DEFAULT_DIM if cell.d_in is None else cell.d_in
    d_out = d_in if cell.d_out is None else cell.d_out
    for key, value in (("d_in", d_in), ("d_out", d_out)):
        if not isinstance(value, int) or value < 1:
            raise WorkloadError(f"{key} must be an integer >= 1, got {value!r}")
    return d_in, d_out


def _config(workload: Workload, layers: int):
    import transformers as tf

    kw = dict(workload.config)
    if workload.family == "llama":
        return tf.LlamaForCausalLM, tf.LlamaConfig(num_hidden_layers=layers, **kw)
    if workload.family == "deberta":
        return tf.DebertaV2ForSequenceClassification, tf.DebertaV2Config(num_hidden_layers=layers, **kw)
    if workload.family == "bart":
        return tf.BartForConditionalGeneration, tf.BartConfig(encoder_layers=layers, decoder_layers=layers, **kw)
    if workload.family == "bert":
        return tf.BertModel, tf.BertConfig(num_hidden_layers=layers, **kw)
    raise WorkloadError(f"workload {workload.name!r} has unknown family {workload.family!r}")


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


# ---- inputs and loss ----------------------------------------------------------------------


def make_inputs(cell: Cell, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A fixed random batch for the cell (same seed, same batch). See the module docstring per family."""
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

    if workload.family == "linear":
        d_in, _ = _linear_dims(cell)
        return {"x": floats((b, s, d_in)).requires_grad_(True)}
    vocab = workload.config["vocab_size"]
    if workload.family == "llama":
        ids = tokens((b, s), vocab)
        return {"input_ids": ids, "labels": ids.clone()}
    if workload.family == "bart":
        labels = tokens((b, s), vocab)
        decoder_input_ids = torch.full_like(labels, 2)  # BART's decoder_start_token_id
        decoder_input_ids[:, 1:] = labels[:, :-1]
        return {"input_ids": tokens((b, s), vocab), "decoder_input_ids": decoder_input_ids, "labels": labels}
    if workload.family == "deberta":
        return {"input_ids": tokens((b, s), vocab), "labels": tokens((b,), workload.config["num_labels"])}
    if workload.family == "bert":
        return {"input_ids": tokens((b, s), vocab), "labels": floats((b, workload.config["hidden_size"]))}
    raise WorkloadError(f"workload {workload.name!r} has unknown family {workload.family!r}")


def compute_loss(cell: Cell, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The scalar training loss of one forward pass (works on the bare model and on a PEFT wrapper)."""
    family = get_workload(cell.workload).family
    if family == "linear":
        return model(inputs["x"]).float().pow(2).mean()
    if family == "bert":
        hidden = model(input_ids=inputs["input_ids"]).last_hidden_state
        pooled = hidden.float().mean(dim=1)
        return nn.functional.mse_loss(pooled, inputs["labels"].float())
    return model(**inputs).loss


# ---- targets ------------------------------------------------------------------------------


def matches_target(module_name: str, suffixes) -> bool:
    """PEFT's suffix rule: the name equals a suffix or ends with "." + suffix."""
    return any(module_name == s or module_name.endswith("." + s) for s in suffixes)


def target_linears(model: nn.Module, suffixes) -> dict[str, nn.Linear]:
    """Qualified name -> ``nn.Linear`` for every linear of ``model`` that a suffix matches."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and matches_target(name, suffixes)
    }


def resolve_targets(cell: Cell, model: nn.Module) -> list[str]:
    """The cell's targets as module-name suffixes, each checked to match at least one ``nn.Linear``.

    ``cell.targets`` is a preset name of the workload (``"all"``, ``"attn"``...), a single
    suffix, or a tuple of suffixes.
    """
    workload = get_workload(cell.workload)
    targets = cell.targets
    if isinstance(targets, str):
        suffixes = list(workload.target_presets.get(targets, (targets,)))
    else:
        suffixes = list(dict.fromkeys(targets))
    if not suffixes:
        raise WorkloadError(f"no target modules given for workload {workload.name!r}")
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    unknown = [s for s in suffixes if not any(matches_target(n, [s]) for n in linear_names)]
    if unknown:
        valid = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
        presets = ", ".join(sorted(workload.target_presets))
        hint = _hint(unknown[0], valid + list(workload.target_presets))
        raise WorkloadError(
            f"unknown target module(s) {', '.join(map(repr, unknown))} for workload {workload.name!r}{hint}; "
            f"linear modules: {', '.join(valid)}; presets: {presets}"
        )
    return suffixes


def _hint(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

