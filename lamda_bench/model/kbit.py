"""QLoRA as practitioners run it: PEFT's ``prepare_model_for_kbit_training`` (the ``kbit_prepare`` key).

PEFT's recipe (its QLoRA docs, most training scripts) loads the quantized base, calls
``prepare_model_for_kbit_training`` and only then wraps the model with the adapter. In peft 0.21
that call freezes every parameter, casts every fp16 / bf16 parameter that is not a 4-bit
``Params4bit`` to fp32 (embeddings, the LM head, the norms; on an int8 base everything but the
int8 weights), and, with ``use_gradient_checkpointing``, enables the model's gradient
checkpointing (and, when that checkpointing is reentrant, makes the embedding output require
grad). The fp32 weights change what runs, not only what is stored: the hidden states leave the
fp32 embedding in fp32, so the norms, the residual stream and the logits of the fp32 head are
fp32 activations (a bitsandbytes linear computes in its compute dtype and returns its input's).

Here PEFT's own function is called (never re-implemented), on the real model in measure mode and
on the meta model before it is faked in estimate mode, right after ``quant.quantize_base`` and
before the method, as in PEFT's recipe. Its checkpointing argument follows the cell's
``gradient_checkpointing``, non-reentrant as every checkpointed cell here
(``gradient_checkpointing_kwargs={"use_reentrant": False}``: PEFT then leaves the inputs alone).
The record's ``info.kbit_prepare`` says what it did.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .quant import QuantError

CHECKPOINTING_KWARGS = {"use_reentrant": False}
ATTRIBUTE = "lamda_bench_kbit_prepare"  # set on the prepared transformers model: its facts
_HALF = (torch.float16, torch.bfloat16)


def prepare(model: nn.Module, cell) -> dict | None:
    """Apply PEFT's ``prepare_model_for_kbit_training`` to the quantized ``model`` when the cell asks
    (``kbit_prepare``); the facts for ``info.kbit_prepare`` (None when the cell does not ask)."""
    if not cell.kbit_prepare:
        return None
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        raise QuantError("kbit_prepare = true needs a quantized base (quant = 'nf4', 'int8', ...); "
                         f"quant is {cell.quant!r}")
    import peft
    from peft import prepare_model_for_kbit_training

    to_cast = [p for p in model.parameters() if p.dtype in _HALF and type(p).__name__ != "Params4bit"]
    cast_elements = sum(p.numel() for p in to_cast)
    cast_bytes_before = sum(p.numel() * p.element_size() for p in to_cast)
    with warnings.catch_warnings():
        # peft 0.21 calls transformers 5's deprecated alias (gradient_checkpointing_enable): the
        # same function, a FutureWarning about peft's code, not about the cell
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.* is deprecated",
                                category=FutureWarning)
        prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(cell.gradient_checkpointing),
                                        gradient_checkpointing_kwargs=dict(CHECKPOINTING_KWARGS))
    still_half = [p for p in to_cast if p.dtype in _HALF]
    if still_half:  # PEFT's rule changed: say so rather than record a cast that did not happen
        raise QuantError(f"kbit_prepare: peft {peft.__version__} left {len(still_half)} fp16/bf16 parameters "
                         "uncast; this version's prepare_model_for_kbit_training is not the one modelled here")
    facts = {
        "applied": True,
        "function": "peft.prepare_model_for_kbit_training",
        "peft_version": peft.__version__,
        "use_gradient_checkpointing": bool(cell.gradient_checkpointing),
        "gradient_checkpointing_kwargs": dict(CHECKPOINTING_KWARGS) if cell.gradient_checkpointing else None,
        "cast_to_fp32_tensors": len(to_cast),
        "cast_to_fp32_elements": cast_elements,
        "cast_to_fp32_added_bytes": cast_elements * 4 - cast_bytes_before,
        "note": ("every fp16/bf16 parameter but the 4-bit weights cast to fp32 (embeddings, norms, lm_head; on "
                 "int8 all but the int8 weights), so hidden states, norms and logits run in fp32"),
    }
    setattr(model, ATTRIBUTE, facts)
    return facts



def describe(model: nn.Module) -> dict | None:
    """``info.kbit_prepare`` of a record: what ``prepare`` did (None when it did not run)."""
    for m in model.modules():
        facts = getattr(m, ATTRIBUTE, None)
        if facts is not None:
            return dict(facts)
    return None
