"""A transformers model config from a file or the local Hugging Face cache, and what it decides.

A workload that is not a catalogue name is a *config reference*:

- a path to a ``config.json``, or to a folder holding one (a relative path resolves against
  the suite file's folder; the cell then carries the absolute path);
- a Hugging Face hub id (``org/name``) whose ``config.json`` is already in the local cache.
  Nothing is ever downloaded (whatever ``HF_HUB_OFFLINE`` says): a config that is not cached
  is a one-line error saying how to fetch it.

From the config's ``architectures`` (else its ``model_type``) comes the *task*, which decides
the model class, the inputs and the loss (see ``workloads``):

- ``causal-lm``: an ``AutoModelForCausalLM`` class (``LlamaForCausalLM``, ``Qwen2ForCausalLM``...);
- ``seq2seq``: an ``AutoModelForSeq2SeqLM`` class (``BartForConditionalGeneration``...);
- ``seq-cls``: an ``AutoModelForSequenceClassification`` class;
- ``encoder``: a bare ``AutoModel`` class (``BertModel``): a sentence-embedding regression;
- ``image-text``: an ``AutoModelForImageTextToText`` class (``Qwen2VLForConditionalGeneration``,
  ``LlavaForConditionalGeneration``...): images and text in, text out (``lamda_bench.model.vlm``).

A class name this transformers does not have (a remote-code name such as Phi-3.5-MoE's
``PhiMoEForCausalLM``) falls back to the model type's class for the task its suffix names
(``...ForCausalLM``: causal LM), as ``AutoModelForCausalLM`` does. Without ``architectures`` the model type decides: seq2seq for an encoder-decoder, else causal
LM, else sequence classification, else the bare model. Custom-code configs (``auto_map``
only, a ``model_type`` transformers does not know) are refused: no remote code runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from ..errors import UserError

TASKS = ("causal-lm", "seq2seq", "seq-cls", "encoder", "image-text")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Keys that set a model's depth; ``layers`` overrides every one the config has.
DEPTH_KEYS = ("num_hidden_layers", "encoder_layers", "decoder_layers", "num_layers", "num_decoder_layers", "n_layer")
MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KiB; refuse to parse anything huge


class WorkloadError(UserError):
    """Bad workload input (unknown name, bad config, bad layer count, unknown target...): one-line message."""


@dataclass(frozen=True)
class ConfigSource:
    """Where a config came from: ``kind`` is ``catalogue``, ``file`` or ``hub``; ``ref`` is what a
    cell carries (catalogue name, absolute path, hub id); ``path`` the config.json read."""

    kind: str
    ref: str
    path: Path


def looks_like_reference(name: str) -> bool:
    """A path or a hub id rather than a catalogue name (catalogue names hold no '/')."""
    return "/" in name or os.sep in name or name.endswith(".json") or name.startswith(("~", "."))


def locate(ref: str, base_dir: Path | None = None) -> ConfigSource:
    """The config.json a reference points at; one-line WorkloadError when there is none."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = base / path
    if path.exists() or ref.endswith(".json") or ref.startswith(("~", ".", "/")) or not HUB_ID_RE.match(ref):
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise WorkloadError(f"workload {ref!r}: no config.json at {path}")
        return ConfigSource("file", str(path.resolve()), path.resolve())
    return ConfigSource("hub", ref, _hub_cached_config(ref, path))


def _hub_cached_config(repo_id: str, tried: Path) -> Path:
    """config.json of a hub model from the local cache only (never a download)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    found = try_to_load_from_cache(repo_id, "config.json")
    if not isinstance(found, str):
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0") else ""
        raise WorkloadError(
            f"workload {repo_id!r}: no file or folder {tried}, and as a hub id its config.json is not in the "
            f"local Hugging Face cache {HF_HUB_CACHE}{offline}; "
            f"lamda-bench never downloads: fetch it with `hf download {repo_id} config.json` "
            f"(only the config is needed) or point workload at a config.json path"
        )
    return Path(found)


def read_config(source: ConfigSource) -> dict[str, Any]:
    """The parsed config.json: a JSON object with a ``model_type`` string."""
    where = f"workload {source.ref!r}"
    try:
        with open(source.path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise WorkloadError(f"{where}: cannot read {source.path}: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise WorkloadError(f"{where}: {source.path} is over {MAX_CONFIG_BYTES} bytes, not a model config.json")
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError, or a number past int()'s digit limit
        raise WorkloadError(f"{where}: {source.path} is not valid JSON ({str(e).split(';')[0][:100]})") from None
    except RecursionError:
        raise WorkloadError(f"{where}: {source.path} nests arrays or objects too deep for a config.json") from None
    if not isinstance(config, dict):
        raise WorkloadError(f"{where}: {source.path} holds a JSON {type(config).__name__}, not a config object")
    if not isinstance(config.get("model_type"), str):
        raise WorkloadError(f"{where}: {source.path} has no \"model_type\" string, so transformers cannot read it")
    return config


def config_sha256(config: dict[str, Any]) -> str:
    """Hash of the config's content (canonical JSON): equal for the same config, whatever the file layout."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---- task and model class -----------------------------------------------------------------

def _mapping_names():
    from transformers.models.auto import modeling_auto as ma

    def names(mapping) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for model_type, value in mapping.items():
            out[model_type] = set(value) if isinstance(value, (list, tuple)) else {value}
        return out

    return {
        "seq2seq": names(ma.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES),
        "seq-cls": names(ma.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES),
        "causal-lm": names(ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
        "encoder": names(ma.MODEL_MAPPING_NAMES),
        "image-text": names(ma.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES),
    }


def task_and_class(config: dict[str, Any], where: str) -> tuple[str, str]:
    """(task, transformers class name) for a config dict; one-line WorkloadError when unsupported."""
    from transformers import CONFIG_MAPPING

    model_type = config["model_type"]
    if model_type not in CONFIG_MAPPING:
        custom = " (it names custom code in auto_map; lamda-bench runs no remote code)" if "auto_map" in config else ""
        raise WorkloadError(f"{where}: model_type {model_type!r} is not known to this transformers{custom}")
    mappings = _mapping_names()
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise WorkloadError(f"{where}: \"architectures\" must be a list of class names, got {archs!r}")
    if archs:
        arch = archs[0]
        # image-text before causal-lm: Gemma 3's multimodal class is in both mappings
        for task in ("seq2seq", "seq-cls", "image-text", "causal-lm", "encoder"):
            if any(arch in classes for classes in mappings[task].values()):
                return task, arch
        # A class name transformers does not have (Phi-3.5-MoE's remote-code ``PhiMoEForCausalLM``):
        # AutoConfig / AutoModelForCausalLM go by model_type, and so does this.
        for task in ("seq2seq", "image-text", "causal-lm"):
            classes = mappings[task].get(model_type)
            if classes and _task_matches_name(task, arch):
                return task, sorted(classes)[0]
        raise WorkloadError(
            f"{where}: architecture {arch!r} is not a causal LM, seq2seq LM, image-text-to-text model, sequence classifier or bare model "
            f"that transformers knows; supported tasks: {', '.join(TASKS)}")
    order = ("seq2seq", "causal-lm", "seq-cls", "encoder") if config.get("is_encoder_decoder", _encdec(model_type)) \
        else ("causal-lm", "seq-cls", "encoder")
    for task in order:
        classes = mappings[task].get(model_type)
        if classes:
            return task, sorted(classes)[0]
    raise WorkloadError(f"{where}: model_type {model_type!r} has no causal LM, seq2seq, classification or bare model class")


def _task_matches_name(task: str, arch: str) -> bool:
    """The task an unknown class name says it is, by the suffix every transformers head class uses."""
    suffix = {"seq2seq": ("ForConditionalGeneration", "ForSeq2SeqLM"), "image-text": ("ForConditionalGeneration",),
              "causal-lm": ("ForCausalLM",)}[task]
    return arch.endswith(suffix)


def _encdec(model_type: str) -> bool:
    from transformers import CONFIG_MAPPING

    return bool(getattr(CONFIG_MAPPING[model_type](), "is_encoder_decoder", False))


def model_class(class_name: str):
    import transformers

    return getattr(transformers, class_name)


def build_config(config: dict[str, Any], layers: int | None, task: str, where: str):
    """The transformers config object, with ``layers`` (when given) as the depth of every stack."""
    from transformers import CONFIG_MAPPING

    d = dict(config)
    if layers is not None:
        present = [k for k in DEPTH_KEYS if k in d]
        for key in present or ["num_hidden_layers"]:
            d[key] = layers
        if isinstance(d.get("layer_types"), list) and d["layer_types"]:
            pattern = d["layer_types"]  # per-layer attention kinds (Gemma-2's sliding/full): keep the pattern
            d["layer_types"] = [pattern[i % len(pattern)] for i in range(layers)]
    try:
        cfg = CONFIG_MAPPING[d["model_type"]].from_dict(d)
    except Exception as e:  # noqa: BLE001 - any config class complaint is bad input
        raise WorkloadError(f"{where}: transformers refuses this config: {_one_line(e)}") from None
    if task == "seq-cls" and getattr(cfg, "problem_type", None) is None:
        # Without a problem_type some heads pick labelled rows with nonzero(), a data-dependent
        # shape that fake tensors (estimate mode) cannot run; this is what HF infers for int labels.
        cfg.problem_type = "regression" if cfg.num_labels == 1 else "single_label_classification"
    return cfg


def shape_facts(cfg) -> dict[str, Any]:
    """The fields that decide memory, read from the (effective) config object."""
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    def first(*names):
        for n in names:
            v = getattr(text, n, None)
            if v is not None:
                return v
        return None

    hidden = first("hidden_size", "d_model", "n_embd")
    heads = first("num_attention_heads", "n_head")
    head_dim = first("head_dim")
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    facts = {
        "hidden_size": hidden,
        "intermediate_size": first("intermediate_size", "encoder_ffn_dim", "d_ff", "n_inner"),
        "layers": first("num_hidden_layers", "num_layers", "n_layer"),
        "heads": heads,
        "kv_heads": first("num_key_value_heads") or heads,
        "head_dim": head_dim,
        "vocab_size": first("vocab_size"),
        "tie_word_embeddings": bool(first("tie_word_embeddings")),
    }
    if getattr(text, "decoder_layers", None) is not None:
        facts["decoder_layers"] = text.decoder_layers
    return facts


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__
