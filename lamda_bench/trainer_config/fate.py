"""The fate of every key of a trainer config: what became of it on the way to one cell.

Each key of the file ends as exactly one ``Fate``:

- ``mapped``: it sets a cell key (``lora_r: 16`` -> ``r = 16``);
- ``no effect``: it does not change the memory of one training step (logging, paths, the
  learning rate, the number of epochs), or it is set to its "off" value;
- ``not modelled``: it changes memory, and the estimate does not follow it (``sample_packing``,
  ``deepspeed``, flash attention kernels the CPU cannot trace). The answer names these first;
- ``unknown``: the translator has no entry for it, so it cannot say; named first as well.

Why a table per format and no silent default: a practitioner's question is "does MY config
fit", so every key the estimate did not follow must be visible next to the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError

MAPPED, NO_EFFECT, NOT_MODELLED, UNKNOWN = "mapped", "no effect", "not modelled", "unknown"


class TrainerConfigError(UserError):
    """A trainer config that cannot become a cell (unreadable, not YAML/JSON, a method we lack)."""


@dataclass(frozen=True)
class Fate:
    """What became of one key: ``cell`` holds the cell keys it set (empty unless mapped)."""

    key: str
    value: Any
    fate: str
    note: str = ""
    cell: tuple[tuple[str, Any], ...] = ()

    def line(self) -> str:
        from ..terminal import shown_name

        value, key = _short(self.value), shown_name(self.key)
        if self.fate == MAPPED or self.cell:
            sets = ", ".join(f"{k} = {_short(v)}" for k, v in self.cell) or "(read with another key)"
            text = f"{key}: {value} -> {sets}"
        else:
            text = f"{key}: {value}"
        return f"  [{self.fate}] {text}" + (f"  ({self.note})" if self.note else "")


@dataclass
class Translation:
    """A trainer config read into cell keys (``cell``), with every key's fate, in file order."""

    format: str
    source: str
    cell: dict[str, Any] = field(default_factory=dict)
    fates: list[Fate] = field(default_factory=list)

    def map(self, key: str, value: Any, note: str = "", **cell: Any) -> None:
        self.cell.update(cell)
        self.fates.append(Fate(key, value, MAPPED, note, tuple(cell.items())))

    def partly(self, key: str, value: Any, note: str, **cell: Any) -> None:
        """A key that sets cell keys for part of what it does; the rest (``note``) is not modelled."""
        self.cell.update(cell)
        self.fates.append(Fate(key, value, NOT_MODELLED, note, tuple(cell.items())))

    def no_effect(self, key: str, value: Any, note: str = "") -> None:
        self.fates.append(Fate(key, value, NO_EFFECT, note))

    def not_modelled(self, key: str, value: Any, note: str) -> None:
        self.fates.append(Fate(key, value, NOT_MODELLED, note))

    def unknown(self, key: str, value: Any) -> None:
        self.fates.append(Fate(key, value, UNKNOWN, f"not in lamda-bench's {self.format} table; not read"))

    def merge(self, other: "Translation") -> None:
        """Another file's keys (``--adapter``) on top of this one's."""
        self.cell.update(other.cell)
        self.fates.extend(Fate(f"{other.format}:{f.key}", f.value, f.fate, f.note, f.cell) for f in other.fates)

    def caveats(self) -> list[Fate]:
        return [f for f in self.fates if f.fate in (NOT_MODELLED, UNKNOWN)]

    def headline(self) -> str | None:
        """The answer's first line when some key was not followed; None when every key was."""
        from ..terminal import shown_name

        bad = self.caveats()
        if not bad:
            return None
        names = ", ".join(shown_name(f.key) for f in bad)
        return (f"NOTE: {len(bad)} key(s) of {self.source} may change memory and are not modelled or not known: "
                f"{names}; the figures below leave them out")

    def lines(self) -> list[str]:
        head = f"{self.source} read as {self.format}: every key's fate"
        order = {MAPPED: 0, NOT_MODELLED: 1, UNKNOWN: 2, NO_EFFECT: 3}
        return [head] + [f.line() for f in sorted(self.fates, key=lambda f: order[f.fate])]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "source": self.source,
                "cell": {k: list(v) if isinstance(v, tuple) else v for k, v in self.cell.items()},
                "keys": [{"key": f.key, "value": _jsonable(f.value), "fate": f.fate, "note": f.note,
                          "cell": {k: _jsonable(v) for k, v in f.cell}} for f in self.fates]}


def is_off(value: Any) -> bool:
    """A key left empty or switched off (``deepspeed:``, ``sample_packing: false``, ``fsdp: []``)."""
    return value is None or value is False or value == 0 or value == "" or value == [] or value == {} \
        or (isinstance(value, str) and value.strip().lower() in ("false", "none", "no", "off", "null"))


def classify_rest(t: Translation, key: str, value: Any, no_effect: dict[str, str],
                  not_modelled: dict[str, str]) -> None:
    """The shared tail of every format: a key that is not mapped is ``no effect`` (from the
    format's table), ``not modelled`` when on (off: no effect), or ``unknown``."""
    if key in not_modelled:
        if is_off(value):
            t.no_effect(key, value, "off")
        else:
            t.not_modelled(key, value, not_modelled[key])
    elif key in no_effect:
        t.no_effect(key, value, no_effect[key])
    else:
        t.unknown(key, value)


# Notes shared by the formats' tables.
NO_MEMORY = "does not change one step's memory"
ACCUMULATION = ("memory follows the micro batch: each accumulated micro step frees its activations; "
                "the gradients are the same buffers")
ATTENTION_KERNEL = ("attention kernel the CPU cannot trace; the estimate uses the model's own attention "
                    "(sdpa/eager; attn_implementation in the record), whose saved tensors differ")
DEEPSPEED = "DeepSpeed ZeRO partitions state across ranks in its own way; not modelled (fsdp2 is: --world-size N --parallel fsdp2)"
FSDP = ("an FSDP job's ranks are not in the file; give --world-size N --parallel fsdp2 (FSDP2, fully_shard per "
        "block) when that is the layout; otherwise not modelled")
PACKING = "packed rows (varlen attention over several sequences) are not modelled; the estimate takes one full sequence per row"
FUSED_CE = "loss = 'fused_linear_ce': Liger's fused linear cross-entropy, no full logits (docs/loss.md)"
LIGER_DEFAULTS = ("sets loss = 'fused_linear_ce' (Liger's fused linear cross-entropy, on by default); Liger's RoPE, "
                  "RMSNorm and SwiGLU kernels, also on by default, save less than the model's own modules and are "
                  "not modelled")
CUT_CE = ("Cut Cross-Entropy (Apple's CCE kernel) computes the loss and its gradient block by block, keeping less than "
          "Liger's fused linear cross-entropy (no per-chunk logits, no kept input gradient); not modelled "
          "(loss = 'fused_linear_ce' is the nearest key)")
OFFLOAD = ("offload_activations = true: saved tensors of 1 KiB or more copied to host memory in forward, back in "
           "backward, parameters, duplicates and the output head kept on the device, as TRL's OffloadActivations "
           "(docs/offload.md)")
OFFLOAD_STREAMS = "; its CUDA-streams path keeps up to 5 offloaded tensors on the device until their copies end, not counted"
OFFLOAD_AXOLOTL_PEFT = ("axolotl's PEFT path (get_lora_act_offloading_ctx_manager) does not filter parameter storages, so "
                        "views of the frozen weights are copied to host too (more host RAM and host-link traffic, the same "
                        "device bytes), and it keeps every submodule of a torch checkpoint_wrapper out of offloading; "
                        "the estimate filters parameters as TRL's get_act_offloading_ctx_manager does")
LIGER = "Liger kernels (fused cross-entropy, RMSNorm...) save less than the model's own modules; not modelled"
NEFTUNE = "NEFTune adds noise to the embeddings; its extra tensors are not modelled"
KBIT_PREPARE_AXOLOTL = ("axolotl runs PEFT's prepare_model_for_kbit_training, then, for lora/qlora, casts every norm "
                        "and the embedding modules (embed_tokens, lm_head) back to the load dtype (src/axolotl/loaders/"
                        "model.py, _configure_embedding_dtypes): the weights stay in the load dtype, so kbit_prepare = "
                        "false (true is PEFT's recipe without that step); checkpointing is the config's "
                        "gradient_checkpointing")
KBIT_PREPARE_LLAMAFACTORY = ("LLaMA-Factory's own prepare_model_for_training, not PEFT's prepare_model_for_kbit_training "
                             "(src/llamafactory/model/model_utils/checkpointing.py): nothing cast to fp32 unless "
                             "upcast_layernorm / upcast_lmhead_output, so kbit_prepare = false")
FULL_ROWS = "the estimate takes every row at seq tokens, the most a padded batch reaches"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)
