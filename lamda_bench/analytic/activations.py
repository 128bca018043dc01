"""Bytes the adapter paths save for backward and the matmul FLOPs they run, per method family
(assumptions: ``analytic/structure.py``).
"""

from __future__ import annotations

from typing import Callable, Sequence

from .structure import AdaptedLinear, adapter_chain, family


def adapter_saved_bytes(
    method: str,
    layers: Sequence[AdaptedLinear],
    r: int,
    tokens: int,
    *,
    adapter_itemsize: int,
    input_itemsize: int,
    b_trainable: Callable[[int], int] | None = None,
    dropout: float = 0.0,
) -> int | None:
    """Bytes the adapter paths save for backward, unique storages, N = ``tokens``.

    lora / pissa: x (N d_in) + A x (N r) per layer. The saved x is the cast copy (N d_in x
    adapter itemsize, one per layer) when the adapter dtype differs from the input's (PEFT's
    ``autocast_adapter_dtype`` with fp32 adapters on a bf16 model), else the layer's own
    input storage (N d_in x input itemsize, once per ``input_group``, none when the base
    saved that storage already).
    lora-fa: A x (N r) only: A is frozen, so x is not saved.
    lamda / lamda++: A x and S A x (2 N r) while any column of B trains, A x (N r) once B is
    frozen (``b_trainable(r_l)`` gives the trainable columns at the accounted step).
    full: x of each target linear (its own input storage, once per ``input_group``): the
    target linears are the "adapter path" of full fine-tuning, as ``methods/full.py`` says.
    dora, vera: None (no closed form here: measure it).
    With dropout p > 0 (lora-like) each layer saves its own dropout output (N d_in, adapter
    itemsize) and a bool mask (N d_in bytes) instead of x.
    """
    fam = family(method)
    if fam in ("dora", "vera"):
        return None
    total = 0
    shared_inputs: set[str] = set()
    for i, layer in enumerate(layers):
        if not layer.grad:
            continue  # a no-grad call saves nothing
        n = layer.rows(tokens)
        in_size = layer.input_itemsize or input_itemsize
        casts = adapter_itemsize != in_size and fam != "full"
        k = b_trainable(layer.rank(r)) if b_trainable else None
        chain = adapter_chain(method, layer, r, k)
        assert chain is not None
        for j, mm in enumerate(chain):
            if mm.trainable == 0:
                continue  # a frozen weight's matmul saves only the weight
            if j > 0:
                total += n * mm.d_in * adapter_itemsize  # an adapter-internal activation
            elif dropout > 0:
                total += n * mm.d_in * (adapter_itemsize + 1)
            elif casts:
                total += n * mm.d_in * adapter_itemsize
            elif not layer.input_saved_by_base:
                group = layer.input_group if layer.input_group is not None else f"#{i}"
                if group not in shared_inputs:
                    shared_inputs.add(group)
                    total += n * mm.d_in * in_size
    return total


def adapter_flops(
    method: str,
    layers: Sequence[AdaptedLinear],
    r: int,
    tokens: int,
    *,
    b_trainable: Callable[[int], int] | None = None,
) -> tuple[int, int] | None:
    """(forward, backward) matmul FLOPs of the adapter paths for N = ``tokens``.

    Per matmul of the chain: forward 2 N d_in d_out; backward 2 N x (trainable weight
    elements) for the weight gradient, plus 2 N d_in d_out for the input gradient when the
    matmul's input requires grad (the layer input: ``input_requires_grad``; an inner input:
    when anything before it in the chain is trainable, a trainable scale feeds it, or the
    layer input requires grad). VeRA: fwd 2N r (d_in + d_out); bwd 2N r d_out (into its
    scaled input, for lambda_d's gradient) [+ 2N r d_in if x needs grad].
    LoRA: fwd 2N r (d_in + d_out); bwd 2N r (2 d_out + d_in [+ d_in if x needs grad]).
    LaMDA with k trainable B columns: fwd 2N r (d_in + r + d_out);
    bwd 2N (d_out k + d_out r + r^2 [+ r^2 + r d_in if x needs grad]).
    full: the target linears themselves, fwd 2N d_in d_out, bwd 2N d_in d_out [x2 if x needs
    grad]. dora: None (its weight-norm terms are not a chain; measure it).
    """
    family(method)
    fwd = bwd = 0
    for layer in layers:
        k = b_trainable(layer.rank(r)) if b_trainable else None
        chain = adapter_chain(method, layer, r, k)
        if chain is None:
            return None
        needs_grad = layer.input_requires_grad
        n = layer.rows(tokens)
        for mm in chain:
            needs_grad = needs_grad or mm.trainable_scale_before
            fwd += 2 * n * mm.d_in * mm.d_out
            if not layer.grad:
                continue  # a no-grad call: no backward
            bwd += 2 * n * mm.trainable
            if needs_grad:
                bwd += 2 * n * mm.d_in * mm.d_out
            needs_grad = needs_grad or mm.trainable > 0
    return fwd, bwd
