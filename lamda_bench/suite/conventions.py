"""Suite spellings people bring from PEFT / transformers, read the way they mean them.

- ``targets``: a list of module names is ONE setting, as PEFT's ``target_modules``
  (``targets = ["q_proj", "v_proj"]`` adapts both in one cell). An *axis* of targets is a
  list of presets (``["all", "attn"]``: two cells) or a list whose elements are presets or
  lists of module names (``[["q_proj", "v_proj"], "all"]``). A list mixing presets and bare
  module names, a bare module name beside lists, or a preset inside a list of module names
  could mean either, and is refused.
- ``dtype``: torch's names ``float32``, ``bfloat16``, ``float16`` are read as ``fp32``,
  ``bf16``, ``fp16`` (the canonical name is what the cell stores, so ids do not change).
- an unknown key's hint knows common aliases (``rank`` -> ``r``, ``lora_alpha`` -> ``alpha``,
  ``target_modules`` -> ``targets``...).
"""

from __future__ import annotations

from typing import Any

from ..hints import did_you_mean
from ..model.targets import PRESETS as _TEXT_PRESETS
from ..model.vlm_parts import VLM_PRESETS

PRESETS = _TEXT_PRESETS + VLM_PRESETS  # image-text presets too (model/vlm_parts.py)
from ..errors import UserError

DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
KEY_ALIASES = {
    "rank": "r", "lora_r": "r", "lora_rank": "r",
    "lora_alpha": "alpha",
    "target_modules": "targets", "target": "targets", "lora_target_modules": "targets",
    "model": "workload", "model_name": "workload", "model_name_or_path": "workload", "model_id": "workload",
    "num_layers": "layers", "num_hidden_layers": "layers",
    "batch_size": "batch", "per_device_train_batch_size": "batch", "train_batch_size": "batch",
    "seq_len": "seq", "seq_length": "seq", "max_seq_length": "seq", "max_length": "seq", "sequence_length": "seq",
    "torch_dtype": "dtype", "precision": "dtype",
    "learning_rate": "lr", "optim": "optimizer", "attention": "attn_implementation",
    "lora_dropout": "dropout",
}


class AmbiguousTargets(UserError):
    """A targets value that could mean one setting or an axis; the message says how to write each."""


def key_hint(key: str, known) -> str:
    """' (did you mean X?)' from the alias table first, else the closest spelling; '' when nothing fits."""
    known = list(known)
    alias = KEY_ALIASES.get(str(key).lower())
    if alias in known:
        return f" (did you mean {alias!r}?)"
    return did_you_mean(key, known)


def canonical_dtype(value: Any) -> Any:
    return DTYPE_ALIASES.get(value, value) if isinstance(value, str) else value


def targets_settings(value: Any) -> list[Any]:
    """The targets settings a suite value stands for (one element: one setting, several: an axis).

    Elements are preset names (str) or lists of module names; the per-setting type check is
    the suite's. Raises AmbiguousTargets for a form that could mean either."""
    if not isinstance(value, list):
        return [value]
    if not value:
        return []
    if all(isinstance(v, str) for v in value):
        presets = [v for v in value if v in PRESETS]
        if len(presets) == len(value):
            return list(value)  # an axis of presets
        if not presets:
            return [list(value)]  # PEFT's target_modules: one setting
        others = [v for v in value if v not in PRESETS]
        raise AmbiguousTargets(
            f"{value!r} mixes presets ({', '.join(presets)}) and module names ({', '.join(others)}): "
            f"one setting is a list of module names (targets = {others!r}); an axis is a list of presets or "
            f"of lists (targets = [{others!r}, {presets[0]!r}])")
    for v in value:
        if isinstance(v, str) and v not in PRESETS:
            raise AmbiguousTargets(
                f"{v!r} beside lists in {value!r}: in an axis, a module name alone is written as a list ([{v!r}])")
        if isinstance(v, list) and any(isinstance(x, str) and x in PRESETS for x in v):
            raise AmbiguousTargets(
                f"{v!r} puts a preset inside a list of module names: give the preset alone, as one axis value")
    return list(value)
