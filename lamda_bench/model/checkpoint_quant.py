"""A checkpoint's own ``quantization_config`` (its config.json), and what the estimate does with it.

A published config.json may say how its weights are stored: gpt-oss ships ``quant_method:
mxfp4`` for its experts; GPTQ / AWQ / fp8 / bitsandbytes checkpoints say so the same way. The
estimate builds the model from the config without the checkpoint, so it must say which storage it
estimated (``info.model.checkpoint_quantization``, a NOTE in ``estimate``):

- ``mxfp4``: transformers cannot train MXFP4 weights (``Mxfp4HfQuantizer.is_trainable`` is False)
  and dequantizes them to bf16 at load where the kernels are missing; a fine-tune loads them with
  ``Mxfp4Config(dequantize=True)``: weights in the model dtype, which is what the estimate counts;
- ``bitsandbytes``: the cell's ``quant`` key models bitsandbytes storage (model/quant.py); it is
  modelled when the cell asks for the same format, and the note says which key to set otherwise;
- anything else (GPTQ, AWQ, fp8, compressed-tensors...): not modelled; the weights are counted
  unquantized in the cell dtype, and the note says so.
"""

from __future__ import annotations

from typing import Any


def facts(config: dict[str, Any], cell) -> dict[str, Any] | None:
    """``{"quant_method", "modelled", "note"}`` for a config with a quantization_config; None without."""
    q = config.get("quantization_config")
    if not isinstance(q, dict):
        return None
    method = str(q.get("quant_method", "unknown"))
    dtype = cell.dtype
    if method == "mxfp4":
        return {"quant_method": method, "modelled": True,
                "note": f"the checkpoint stores its experts in MXFP4 (quantization_config); transformers cannot train "
                        f"MXFP4 and loads them dequantized (Mxfp4Config(dequantize=True), as it does where the kernels "
                        f"are missing): estimated with every weight in {dtype}"}
    if method == "bitsandbytes":
        want = "int8" if q.get("load_in_8bit") else str(q.get("bnb_4bit_quant_type", "nf4")) + (
            "-dq" if q.get("bnb_4bit_use_double_quant") else "")
        modelled = getattr(cell, "quant", "none") == want
        how = "estimated so" if modelled else f"this cell has quant = {cell.quant!r}; set quant = {want!r} to estimate it"
        return {"quant_method": method, "modelled": modelled,
                "note": f"the checkpoint is bitsandbytes-quantized ({want}): {how}"}
    return {"quant_method": method, "modelled": False,
            "note": f"the checkpoint is {method}-quantized (quantization_config), which is not modelled: its weights "
                    f"are estimated unquantized in {dtype}"}
