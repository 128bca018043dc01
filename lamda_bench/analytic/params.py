"""Trainable parameters, parameter updates and adapter parameter counts per method family
(assumptions: ``analytic/structure.py``).
"""

from __future__ import annotations

from typing import Callable, Sequence

from .structure import AdaptedLinear, AnalyticError, family


def layer_trainable(method: str, layer: AdaptedLinear, r: int, b_trainable: int | None = None) -> int:
    """Trainable parameters the adapter adds to one linear.

    lora, pissa: (d_in + d_out) r.  lora-fa: d_out r (A frozen).  dora: lora + d_out (the
    magnitude vector).  vera: d_out + r (PEFT's lambda_b and lambda_d; A and B are shared
    frozen buffers).  lamda / lamda++: r^2 + d_out k with k the trainable columns of B
    (k = r at the start, 0 once B is frozen).  full: not per layer (see ``trainable``).
    """
    fam = family(method)
    rl = layer.rank(r)
    if fam == "lora":
        return (layer.d_in + layer.d_out) * rl
    if fam == "lora-fa":
        return layer.d_out * rl
    if fam == "dora":
        return (layer.d_in + layer.d_out) * rl + layer.d_out
    if fam == "vera":
        return layer.d_out + rl
    if fam == "lamda":
        k = rl if b_trainable is None else min(b_trainable, rl)
        return rl * rl + layer.d_out * k
    raise AnalyticError(f"method {method!r} has no per-layer trainable count (full trains every parameter)")


def trainable(
    method: str,
    layers: Sequence[AdaptedLinear],
    r: int,
    *,
    step: int = 0,
    b_schedule: Callable[[int, int], int] | None = None,
    total_params: int | None = None,
) -> int:
    """Trainable parameters of the model during optimizer step ``step`` (0-based).

    ``b_schedule(r_l, step)`` gives LaMDA's trainable B components of a rank-r_l layer at
    that step (None: B fully trainable). ``full`` needs ``total_params`` (all of them train);
    other methods assume the base model is frozen entirely (no trainable norms or heads).
    """
    fam = family(method)
    if fam == "full":
        if total_params is None:
            raise AnalyticError("full fine-tuning trains every parameter: total_params is required")
        return total_params
    total = 0
    for layer in layers:
        k = b_schedule(layer.rank(r), step) if (b_schedule and fam == "lamda") else None
        total += layer_trainable(method, layer, r, k)
    return total


def updates(
    method: str,
    layers: Sequence[AdaptedLinear],
    r: int,
    steps: int,
    *,
    b_schedule: Callable[[int, int], int] | None = None,
    total_params: int | None = None,
) -> int:
    """Parameter updates over a run: the sum over optimizer steps 0..steps-1 of the trainable
    parameters during that step (the LaMDA paper's measure; B's freezing makes it shrink)."""
    return sum(
        trainable(method, layers, r, step=s, b_schedule=b_schedule, total_params=total_params)
        for s in range(steps)
    )


def adapter_params(method: str, layer: AdaptedLinear, r: int) -> int:
    """Parameters (trainable or frozen) the adapter adds to one linear: lora, pissa, lora-fa
    (d_in + d_out) r; dora + d_out; vera d_out + r (its A and B are shared buffers); lamda r d_in
    + r^2 + r d_out; full 0."""
    fam = family(method)
    rl = layer.rank(r)
    if fam in ("lora", "lora-fa"):
        return (layer.d_in + layer.d_out) * rl
    if fam == "dora":
        return (layer.d_in + layer.d_out) * rl + layer.d_out
    if fam == "vera":
        return layer.d_out + rl
    if fam == "lamda":
        return rl * (layer.d_in + rl + layer.d_out)
    return 0


def trainable_tensors(method: str, layers: Sequence[AdaptedLinear], r: int, *, step: int = 0,
                      b_schedule: Callable[[int, int], int] | None = None) -> int | None:
    """Trainable parameter tensors (one AdamW ``step`` scalar each): lora, pissa, vera 2 per
    layer; lora-fa 1; dora 3; lamda S plus B's trainable part while it has columns (split mode;
    with ``b_schedule`` None, B is one parameter). None for full (count the model's tensors)."""
    fam = family(method)
    if fam == "full":
        return None
    per = {"lora": 2, "vera": 2, "lora-fa": 1, "dora": 3}
    if fam in per:
        return per[fam] * len(layers)
    return sum(1 + (b_schedule is None or b_schedule(layer.rank(r), step) > 0) for layer in layers)
