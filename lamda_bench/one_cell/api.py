"""``lamda_bench.estimate(...)``: one cell from what a training script already holds.

    import lamda_bench
    rec = lamda_bench.estimate("meta-llama/Llama-3.1-8B", peft_config=LoraConfig(r=16, target_modules="all-linear"),
                               training_args=TrainingArguments(per_device_train_batch_size=2, bf16=True,
                                                               gradient_checkpointing=True, output_dir="x"),
                               seq=2048)
    rec["memory"]["peak"]

``model``: a catalogue name, a config.json path, a cached hub id, or a ``transformers.PretrainedConfig``
(written once under ``out/configs/`` by content hash, so the cell id is the config's). The objects go
through the same translators as ``--adapter`` and ``--from`` (``trainer_config``); what they hold and
the estimate does not model is raised as an ``EstimateWarning`` naming the keys.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any


class EstimateWarning(UserWarning):
    """Keys of the given configs that change memory and are not modelled."""


def estimate(model: Any, peft_config: Any = None, training_args: Any = None, seq: int | None = None, *,
             method: str | None = None, out: str | Path = Path("reports") / "estimate", as_frame: bool = False,
             progress: bool = False, **cell_keys: Any):
    """The record of one estimate cell (a DataFrame row with ``as_frame=True``); ``cell_keys``
    (``batch=2``, ``quant="nf4"``, ``dropout=0.05``...) win over what the configs say."""
    from ..trainer_config import hf_args, peft_adapter
    from ..trainer_config.common import map_model
    from ..trainer_config.fate import Translation
    from .cell import build_cell, run_one

    out = Path(out)
    t = Translation("python", "lamda_bench.estimate")
    map_model(t, "model", _workload(model, out), Path.cwd())
    if training_args is not None:
        t.merge(hf_args.translate(_as_dict(training_args), "training_args"))
    if peft_config is not None:
        t.merge(peft_adapter.translate(_as_dict(peft_config), "peft_config", Path.cwd(), with_model=False))
    elif "method" not in cell_keys and method is None:
        t.cell["method"] = "full"
    keys = dict(t.cell)
    if method is not None:
        keys["method"] = method
    if seq is not None:
        keys["seq"] = seq
    keys.update(cell_keys)
    if "seq" not in keys:
        from ..api import ApiError

        raise ApiError("estimate: no sequence length: give seq= (or an SFTConfig with max_length)")
    if t.headline():
        warnings.warn(t.headline() + ": " + "; ".join(f"{f.key} ({f.note})" for f in t.caveats()),
                      EstimateWarning, stacklevel=2)
    record, _ = run_one(build_cell(keys), out, progress=progress)
    if as_frame:
        from ..api import frame

        return frame([record])
    return record


def _workload(model: Any, out: Path) -> str:
    """A reference the workload rules read: a PretrainedConfig becomes a config.json under ``out``."""
    if isinstance(model, (str, Path)):
        return str(model)
    to_dict = getattr(model, "to_dict", None)
    if to_dict is None or not hasattr(model, "model_type"):
        from ..api import ApiError

        raise ApiError(f"model {type(model).__name__}: expected a catalogue name, a config.json path, a hub id "
                       "or a transformers.PretrainedConfig")
    blob = json.dumps(to_dict(), sort_keys=True, default=str, indent=1)
    path = out / "configs" / (hashlib.sha256(blob.encode()).hexdigest()[:16] + ".json")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(blob, encoding="utf-8")
    return str(path.resolve())


def _as_dict(obj: Any) -> dict[str, Any]:
    """A PeftConfig / TrainingArguments (``to_dict``) or a plain dict, with sets as sorted lists."""
    d = obj if isinstance(obj, dict) else obj.to_dict()
    return {k: sorted(v) if isinstance(v, (set, frozenset)) else getattr(v, "value", v) for k, v in d.items()}
