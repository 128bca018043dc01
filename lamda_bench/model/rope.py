"""Rotary embeddings whose forward branches on the data, made traceable for a training step.

Phi-3.5-MoE's ``PhimoeRotaryEmbedding.forward`` picks its long or short ``mscale`` with
``torch.max(position_ids) + 1`` tested in Python (``if seq_len``, ``seq_len > original``): a
data-dependent branch that fake tensors (estimate mode) cannot take
(``DataDependentOutputException: aten._local_scalar_dense``). Every step this harness runs
feeds positions ``0 .. seq-1`` (no cache, no padding: transformers' default
``cache_position``), so that maximum is ``position_ids.shape[-1] - 1``: the replacement forward
reads the length from the shape and is otherwise transformers' code, line for line (the
inverse frequencies come from ``rope_init_fn(config)``, as there; the ``dynamic_rope_update``
wrapper only refreshes ``inv_freq``, which this forward never reads).
"""

from __future__ import annotations

import types

import torch
from torch import nn


def make_traceable(model: nn.Module) -> int:
    """Swap the data-dependent rotary forwards of ``model`` for the shape-read ones; how many."""
    count = 0
    for module in model.modules():
        if type(module).__name__ == "PhimoeRotaryEmbedding":
            module.forward = types.MethodType(_phimoe_forward, module)
            count += 1
    return count


@torch.no_grad()
def _phimoe_forward(self, x, position_ids=None):
    params = self.config.rope_parameters
    seq_len = position_ids.shape[-1]  # positions 0 .. seq-1 in every step the harness runs
    mscale = None
    if params["rope_type"] != "default" and seq_len:
        mscale = params["long_mscale"] if seq_len > params["original_max_position_embeddings"] else params["short_mscale"]
    inv_freq, attention_scaling = self.rope_init_fn(self.config)
    mscale = attention_scaling if mscale is None else mscale
    freqs = position_ids[..., None].float() * inv_freq.to(device=x.device, dtype=torch.float)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * mscale).to(x.dtype), (emb.sin() * mscale).to(x.dtype)
