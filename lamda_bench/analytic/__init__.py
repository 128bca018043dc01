"""Closed-form predictions: trainable parameters, parameter updates, adapter saved bytes, adapter
FLOPs, state bytes under a precision policy and FSDP2 shards.

Every figure the harness measures that has a closed form is recorded next to the prediction
made here, so a mismatch points at either the arithmetic or the implementation. The formulas
are written per method family (``FAMILIES``); a registered method names its family
(``Method.family``), so a new method of a known family needs nothing here.

- ``structure``: the adapted linears, the adapter chains, the shared assumptions (read first);
- ``params``: trainable parameters and updates;
- ``activations``: saved bytes and FLOPs of the adapter paths;
- ``state``: weights, gradients and optimizer state under a precision policy;
- ``sharded``: rank 0's bytes under FSDP2;
- ``optimizers``: every catalogue optimizer's state bytes (8-bit, paged, Adafactor, Lion, Muon);
- ``predict`` (here): the ``predicted`` block of a record.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .activations import adapter_flops, adapter_saved_bytes
from .params import adapter_params, layer_trainable, trainable, trainable_tensors, updates
from .sharded import ShardedParam, fsdp2_rank_memory, gathered_bytes, lamda_sharded_params, rank0_bytes, shard_rows
from .state import state_bytes
from .structure import FAMILIES, AdaptedLinear, AnalyticError, Matmul, adapter_chain, family, layers_from_shapes

__all__ = [
    "FAMILIES", "AdaptedLinear", "AnalyticError", "Matmul", "ShardedParam", "adapter_chain", "adapter_flops",
    "adapter_params", "adapter_saved_bytes", "family", "fsdp2_rank_memory", "lamda_sharded_params", "gathered_bytes", "layer_trainable",
    "layers_from_shapes", "predict", "rank0_bytes", "shard_rows", "state_bytes", "trainable", "trainable_tensors",
    "updates",
]


def predict(
    method: str,
    layers: Sequence[AdaptedLinear],
    r: int,
    tokens: int,
    *,
    calls: Sequence[AdaptedLinear] | None = None,
    steps: int,
    accounted_step: int,
    adapter_itemsize: int,
    input_itemsize: int,
    b_schedule: Callable[[int, int], int] | None = None,
    total_params: int | None = None,
    dropout: float = 0.0,
    gradient_checkpointing: bool = False,
) -> dict:
    """The ``predicted`` block of a record: the closed forms for the same fields as measured.

    ``trainable`` is at the start (step 0), ``updates`` over ``steps`` optimizer steps, saved
    bytes and FLOPs at ``accounted_step`` (the instrumented step, 0-based). ``layers`` are the
    adapted modules (parameter counts); ``calls`` (default: ``layers``) the calls of them
    in one forward (bytes and FLOPs). Saved bytes are None under gradient checkpointing
    (not modelled) and for methods without a closed form.
    """
    calls = layers if calls is None else calls
    at = (lambda rl: b_schedule(rl, accounted_step)) if (b_schedule and family(method) == "lamda") else None
    saved = None
    if not gradient_checkpointing:
        saved = adapter_saved_bytes(
            method, calls, r, tokens, adapter_itemsize=adapter_itemsize,
            input_itemsize=input_itemsize, b_trainable=at, dropout=dropout,
        )
    flops = adapter_flops(method, calls, r, tokens, b_trainable=at)
    return {
        "params": {
            "trainable": trainable(method, layers, r, step=0, b_schedule=b_schedule, total_params=total_params),
            "updates": updates(method, layers, r, steps, b_schedule=b_schedule, total_params=total_params),
        },
        "memory": {"saved_activations_adapter": saved},
        "flops": {
            "adapter_forward": None if flops is None else flops[0],
            # Under checkpointing the forward is recomputed in backward; not modelled.
            "adapter_backward": None if (flops is None or gradient_checkpointing) else flops[1],
        },
    }
