"""Where CPU kernels save other tensors than CUDA's: the statement per cell, and the corrections.

An estimate traces the kernels of the device its fake tensors live on. On a torch build that
cannot fake CUDA tensors (a CPU-only wheel: ``model.fake.fake_device_supported("cuda")`` is
False) a cell estimated for a GPU step is traced with the CPU kernels, and two of them save
other tensors for backward than CUDA's:

- dropout (p > 0, training): ``aten::dropout`` takes the fused ``native_dropout`` only on CUDA
  (and XPU, ...), which saves a **bool** mask (1 B per element); on CPU it runs
  ``input * bernoulli(1 - p) / (1 - p)`` and saves that scaled mask in the **input's dtype**
  (4 B per element for an fp32 adapter input). A CUDA step thus saves
  ``(itemsize - 1) x numel`` bytes less per dropout call: exact, ``dropout_mask_correction``.
- scaled_dot_product_attention: on CPU the flash-attention-for-CPU kernel saves its output and a
  float32 logsumexp (batch x heads x queries); CUDA picks flash, memory-efficient or cuDNN
  attention by GPU and shapes, each saving its own logsumexp layout (memory-efficient pads the
  queries to a multiple of 32) and RNG state. Which one runs is the GPU's choice, so no
  correction is made here: the record says the difference (``statement``).

``statement`` is what a record carries (``info.cpu_kernels``) and ``estimate`` prints as a NOTE;
the corrections are functions a CUDA allocation sequence (issue 39) can apply to the saved
tensors it replays. Nothing here changes a traced figure.
"""

from __future__ import annotations

from typing import Any

BOOL_ITEMSIZE = 1


def dropout_mask_correction(numel: int, itemsize: int) -> int:
    """Bytes a CUDA dropout saves fewer than the CPU one for a mask of ``numel`` elements whose CPU
    copy has ``itemsize`` bytes each (the input's dtype): CUDA keeps a bool mask."""
    return numel * (itemsize - BOOL_ITEMSIZE)


def adapter_dropout_correction(calls: list[tuple[int, int, int]]) -> int:
    """The saved bytes CUDA does not keep over a step's adapter dropouts: ``calls`` holds
    ``(tokens, d_in, itemsize of the adapter input)`` per dropout call (one per adapted layer)."""
    return sum(dropout_mask_correction(tokens * d_in, itemsize) for tokens, d_in, itemsize in calls)


def statement(info: dict[str, Any], traced_device: str) -> list[str] | None:
    """The per-cell lines saying where this CPU trace's saved tensors differ from a CUDA step's;
    None when the trace ran on CUDA kernels or nothing differs."""
    if traced_device != "cpu":
        return None
    lines = []
    method = info.get("method") or {}
    dropout = method.get("dropout")
    if isinstance(dropout, (int, float)) and dropout > 0:
        lines.append(f"adapter dropout p={dropout}: the CPU kernel saves each mask in the adapter input's dtype "
                     f"({method.get('adapter_dtype', 'its dtype')}); CUDA's native_dropout saves a bool mask, "
                     "(itemsize - 1) B x tokens x d_in less per adapted layer")
    if info.get("attn_implementation") == "sdpa":
        lines.append("SDPA: traced with the CPU flash-attention kernel (output and a float32 logsumexp saved); "
                     "on CUDA the flash, memory-efficient or cuDNN backend saves its own logsumexp layout and RNG state")
    return lines or None
