"""Trainer configs in: axolotl YAML, LLaMA-Factory YAML, HF TrainingArguments / TRL SFTConfig
JSON and a PEFT adapter_config.json, each read into cell keys with every key's fate
(``fate.Translation``). ``load(path)`` detects the format from the content (``format`` forces one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import axolotl, hf_args, llamafactory, peft_adapter
from .document import MAX_BYTES, read_document
from .fate import Translation, TrainerConfigError

FORMATS = ("axolotl", "llama-factory", "hf-trainingargs", "peft-adapter")
_MARKERS = {
    "axolotl": ("base_model", "micro_batch_size", "sequence_len", "lora_r", "adapter"),
    "llama-factory": ("model_name_or_path", "finetuning_type", "lora_rank", "cutoff_len", "stage"),
    "peft-adapter": ("peft_type", "base_model_name_or_path", "target_modules", "r"),
    "hf-trainingargs": ("per_device_train_batch_size", "output_dir", "optim", "max_length", "max_seq_length"),
}


def detect(doc: dict[str, Any], source: str) -> str:
    """The format whose marker keys the document has most of; one line when none."""
    scores = {name: sum(k in doc for k in keys) for name, keys in _MARKERS.items()}
    best = max(scores, key=lambda n: scores[n])
    if scores[best] == 0:
        raise TrainerConfigError(f"{source}: no key of a known trainer config (axolotl base_model, LLaMA-Factory "
                                 "model_name_or_path, TrainingArguments per_device_train_batch_size, PEFT "
                                 "peft_type); give --format " + "|".join(FORMATS))
    return best


def translate(doc: dict[str, Any], source: str, fmt: str | None = None, config_dir: Path | None = None) -> Translation:
    fmt = fmt or detect(doc, source)
    config_dir = config_dir or Path.cwd()
    if fmt == "axolotl":
        return axolotl.translate(doc, source, config_dir)
    if fmt == "llama-factory":
        return llamafactory.translate(doc, source, config_dir)
    if fmt == "hf-trainingargs":
        return hf_args.translate(doc, source)
    if fmt == "peft-adapter":
        return peft_adapter.translate(doc, source, config_dir)
    from ..hints import did_you_mean

    raise TrainerConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}{did_you_mean(fmt, FORMATS)}")


def load(path: str | Path | None, fmt: str | None = None, adapter: str | Path | None = None,
         workload_given: bool = False) -> Translation:
    """A trainer config file (and an optional PEFT adapter_config.json beside it) as one Translation.
    ``workload_given``: --workload names the model, so the adapter's base_model_name_or_path is not read."""
    t = None
    if path is not None:
        path = Path(path)
        t = translate(read_document(path), str(path), fmt, path.resolve().parent)
    if adapter is not None:
        apath = Path(adapter)
        a = peft_adapter.translate(read_document(apath), str(apath), apath.resolve().parent,
                                   with_model=not workload_given and (t is None or "workload" not in t.cell))
        if t is None:
            return a
        t.merge(a)
    if t is None:
        raise TrainerConfigError("nothing to read: give --from FILE and/or --adapter adapter_config.json")
    return t


__all__ = ["FORMATS", "Translation", "TrainerConfigError", "load", "read_document", "translate"]
