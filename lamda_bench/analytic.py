"""Closed-form predictions: trainable parameters, parameter updates, adapter saved bytes, adapter FLOPs.

Every figure the harness measures that has a closed form is recorded next to the prediction
made here, so a mismatch points at either the arithmetic or the implementation.

The model is described by the list of its adapted linears (``AdaptedLinear``): their shapes
plus two structural facts that the arithmetic needs and that a name alone does not give:

- ``input_requires_grad``: whether autograd needs dL/dx at the layer's input. It does for
  every layer that sits downstream of a trainable parameter; it does not for the first
  adapted layers of a model with frozen embeddings (LLaMA's layer-0 q, k, v) or for a bare
  linear fed a plain input. It decides whether the adapter pays input-gradient FLOPs.
- ``input_group``: layers with the same (non-None) group read the very same input tensor
  (q, k, v read one norm output). When the adapter does not copy its input, a saved ``x``
  is one storage for the whole group; counted once, as the tracker counts unique storages.

The adapter paths are chains of linears (``Matmul``), which is all the arithmetic needs:
forward 2 N d_in d_out FLOPs per matmul (2 FLOPs per multiply-accumulate, N = batch x seq
tokens); backward a weight gradient (2 N x trainable weight elements) only for trainable
weights and an input gradient (2 N d_in d_out) only where the input requires grad. Autograd
saves a matmul's input only when its weight needs a gradient (``F.linear(x, W)`` with W
frozen saves W, a parameter, which is not an activation). Elementwise ops (LoRA scaling,
the residual add, VeRA's scale vectors) are not counted, as torch's FlopCounterMode does not
count them either.

Assumptions shared by all formulas (stated once here, referred to below):

- adapter dropout is 0 (PEFT's default), so ``dropout(x)`` is ``x`` itself; with dropout
  p > 0 each layer saves its dropout output and a bool mask of N x d_in instead;
- PEFT casts the layer input to the adapter weights' dtype only when the two differ
  (``_cast_input_dtype``); the cast is a new storage per layer, the uncast input is the
  base layer's own input storage (shared by the layer's ``input_group``);
- an uncast input that a base op saved first is the base's bytes, not the adapter's
  (``input_saved_by_base``; SDPA's flash kernels save their output, and LLaMA's o_proj
  input is a view of it); norms save their inputs, not their outputs, so q/k/v and MLP
  inputs are the adapter's;
- no gradient checkpointing (with it, the saved set is the checkpoint boundaries; the
  functions here do not model that and callers report no prediction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

# Method families by the structure of their adapter path.
LORA_LIKE = ("lora", "pissa")  # B A x, A and B trainable (PiSSA only changes the init)
LAMDA_LIKE = ("lamda", "lamda++")  # s B S A x, A frozen, S trainable, B gradually frozen
KNOWN_METHODS = ("full", "lora", "pissa", "lora-fa", "dora", "vera", "lamda", "lamda++")


class AnalyticError(ValueError):
    """A prediction was asked for something it cannot describe (one-line message)."""


@dataclass(frozen=True)
class AdaptedLinear:
    """One adapted linear of the model and the structural facts the arithmetic needs.

    ``r`` overrides the cell's rank for this layer (LaMDA++ allocates per-layer ranks).
    An entry may describe one *call* of the layer rather than the layer: ``tokens`` (rows of
    its input) and ``input_itemsize`` then override the model-wide values (DeBERTa calls
    its query/key projections a second time on the relative position embeddings).
    """

    d_in: int
    d_out: int
    r: int | None = None
    input_requires_grad: bool = True
    input_group: str | None = None
    name: str = ""
    tokens: int | None = None
    input_itemsize: int | None = None
    input_saved_by_base: bool = False  # a base op saved this very input storage first

    def rank(self, r: int) -> int:
        return self.r if self.r is not None else r

    def rows(self, tokens: int) -> int:
        return self.tokens if self.tokens is not None else tokens


@dataclass(frozen=True)
class Matmul:
    """One linear of an adapter chain: input width, output width, trainable weight elements."""

    d_in: int
    d_out: int
    trainable: int  # trainable elements of the weight (0: frozen)
    trainable_scale_before: bool = False  # a trainable elementwise scale feeds this matmul (VeRA's lambda_d)


# ---------------------------------------------------------------------------------------
# adapter structure
# ---------------------------------------------------------------------------------------


def adapter_chain(method: str, layer: AdaptedLinear, r: int, b_trainable: int | None = None) -> list[Matmul] | None:
    """The adapter path of ``layer`` as a chain of matmuls, or None where it is not a chain.

    ``b_trainable`` is LaMDA's number of trainable rank components of B (columns of the
    d_out x r matrix; defaults to all r). For full fine-tuning the chain is the target
    linear itself. DoRA (weight-norm terms) has no chain.
    """
    _check_method(method)
    rl = layer.rank(r)
    if method in LORA_LIKE:
        return [Matmul(layer.d_in, rl, layer.d_in * rl), Matmul(rl, layer.d_out, rl * layer.d_out)]
    if method == "lora-fa":
        return [Matmul(layer.d_in, rl, 0), Matmul(rl, layer.d_out, rl * layer.d_out)]
    if method == "vera":
        # VeRA's A and B are shared frozen buffers; its trainable scale vectors are
        # elementwise, not matmuls. lambda_d is trainable, so B's input still needs a grad.
        return [Matmul(layer.d_in, rl, 0), Matmul(rl, layer.d_out, 0, trainable_scale_before=True)]
    if method in LAMDA_LIKE:
        k = rl if b_trainable is None else min(b_trainable, rl)
        return [
            Matmul(layer.d_in, rl, 0),
            Matmul(rl, rl, rl * rl),
            Matmul(rl, layer.d_out, k * layer.d_out),
        ]
    if method == "full":
        # No adapter: the target linear itself is the "adapter path" (as methods/full.py
        # attributes it), so its own weight gradient and saved input are what is counted.
        return [Matmul(layer.d_in, layer.d_out, layer.d_in * layer.d_out)]
    return None  # dora


# ---------------------------------------------------------------------------------------
# trainable parameters and updates
# ---------------------------------------------------------------------------------------


def layer_trainable(method: str, layer: AdaptedLinear, r: int, b_trainable: int | None = None) -> int:
    """Trainable parameters the adapter adds to one linear.

    lora, pissa: (d_in + d_out) r.  lora-fa: d_out r (A frozen).  dora: lora + d_out (the
    magnitude vector).  vera: d_out + r (PEFT's lambda_b and lambda_d; A and B are shared
    frozen buffers).  lamda / lamda++: r^2 + d_out k with k the trainable columns of B
    (k = r at the start, 0 once B is frozen).  full: not per layer (see ``trainable``).
    """
    _check_method(method)
    rl = layer.rank(r)
    if method in LORA_LIKE:
        return (layer.d_in + layer.d_out) * rl
    if method == "lora-fa":
        return layer.d_out * rl
    if method == "dora":
        return (layer.d_in + layer.d_out) * rl + layer.d_out
    if method == "vera":
        return layer.d_out + rl
    if method in LAMDA_LIKE:
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
    if method == "full":
        if total_params is None:
            raise AnalyticError("full fine-tuning trains every parameter: total_params is required")
        return total_params
    total = 0
    for layer in layers:
        k = b_schedule(layer.rank(r), step) if (b_schedule and method in LAMDA_LIKE) else None
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


# ---------------------------------------------------------------------------------------
# saved activations
# ---------------------------------------------------------------------------------------


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
    _check_method(method)
    if method in ("dora", "vera"):
        return None
    total = 0
    shared_inputs: set[str] = set()
    for i, layer in enumerate(layers):
        n = layer.rows(tokens)
        in_size = layer.input_itemsize or input_itemsize
        casts = adapter_itemsize != in_size and method != "full"
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


# ---------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------


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
    _check_method(method)
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
            bwd += 2 * n * mm.trainable
            if needs_grad:
                bwd += 2 * n * mm.d_in * mm.d_out
            needs_grad = needs_grad or mm.trainable > 0
    return fwd, bwd


# ---------------------------------------------------------------------------------------
# weights, gradients and optimizer state under a precision policy
# ---------------------------------------------------------------------------------------


def adapter_params(method: str, layer: AdaptedLinear, r: int) -> int:
    """Parameters (trainable or frozen) the adapter adds to one linear: lora, pissa, lora-fa
    (d_in + d_out) r; dora + d_out; vera d_out + r (its A and B are shared buffers); lamda r d_in
    + r^2 + r d_out; full 0."""
    _check_method(method)
    rl = layer.rank(r)
    if method in LORA_LIKE or method == "lora-fa":
        return (layer.d_in + layer.d_out) * rl
    if method == "dora":
        return (layer.d_in + layer.d_out) * rl + layer.d_out
    if method == "vera":
        return layer.d_out + rl
    if method in LAMDA_LIKE:
        return rl * (layer.d_in + rl + layer.d_out)
    return 0


def trainable_tensors(method: str, layers: Sequence[AdaptedLinear], r: int, *, step: int = 0,
                      b_schedule: Callable[[int, int], int] | None = None) -> int | None:
    """Trainable parameter tensors (one AdamW ``step`` scalar each): lora, pissa, vera 2 per
    layer; lora-fa 1; dora 3; lamda S plus B's trainable part while it has columns (split mode;
    with ``b_schedule`` None, B is one parameter). None for full (count the model's tensors)."""
    _check_method(method)
    if method == "full":
        return None
    per = {"lora": 2, "pissa": 2, "vera": 2, "lora-fa": 1, "dora": 3}
    if method in per:
        return per[method] * len(layers)
    return sum(1 + (b_schedule is None or b_schedule(layer.rank(r), step) > 0) for layer in layers)


def state_bytes(
    method: str,
    layers: Sequence[AdaptedLinear],
    r: int,
    *,
    total_params: int,
    total_tensors: int,
    buffer_bytes: int,
    base_itemsize: int,
    adapter_itemsize: int,
    trainable_itemsize: int,
    optimizer: str | None,
    step: int,
    optimizer_step: int | None = None,
    b_schedule: Callable[[int, int], int] | None = None,
) -> dict:
    """Weights and gradients during 0-based optimizer step ``step``, optimizer state for the
    trainable set of 0-based step ``optimizer_step`` (default ``step + 1``: after that step and
    the method's ``on_step``, which may freeze LaMDA columns and drop their state; the record's
    ``memory.optimizer`` is read before that freeze, so its closed form passes ``step``). P = ``total_params``,
    T = trainable parameters at the step in question:

    - weights: (P - adapter) x base itemsize + frozen adapter x adapter itemsize + T x trainable
      itemsize + buffers. The itemsizes are the precision policy's: ``pure`` keeps trainable
      parameters as the method built them (adapters in their adapter dtype, full in the model
      dtype), ``amp-*`` and ``fp32`` keep them in fp32 (master weights); frozen base weights are
      in the model dtype (fp32 under ``fp32``). LaMDA's B columns frozen during the run keep
      the trainable itemsize (they were master weights when frozen), those frozen from the
      start the adapter's.
    - grads: T x trainable itemsize (one gradient per trainable parameter, same dtype).
    - optimizer (torch AdamW): 2 T x trainable itemsize (exp_avg, exp_avg_sq) + 4 bytes per
      trainable tensor (its fp32 ``step`` scalar); None for any other optimizer.
    Observed structure: P, the parameter-tensor count of full fine-tuning and the buffer bytes.
    """
    t_now = trainable(method, layers, r, step=step, b_schedule=b_schedule, total_params=total_params)
    if method == "full":
        weights = total_params * trainable_itemsize + buffer_bytes
        tensors = total_tensors
    else:
        adapter = sum(adapter_params(method, layer, r) for layer in layers)
        late_frozen = 0  # LaMDA's B columns frozen by the schedule after the start: master dtype
        if method in LAMDA_LIKE and b_schedule is not None:
            late_frozen = sum(layer.d_out * (b_schedule(layer.rank(r), 0) - b_schedule(layer.rank(r), step))
                              for layer in layers)
        frozen_adapter = adapter - t_now - late_frozen
        weights = ((total_params - adapter) * base_itemsize + frozen_adapter * adapter_itemsize
                   + (t_now + late_frozen) * trainable_itemsize + buffer_bytes)
        tensors = trainable_tensors(method, layers, r, step=step, b_schedule=b_schedule)
    opt = None
    if optimizer == "adamw":
        after = step + 1 if optimizer_step is None else optimizer_step
        t_after = trainable(method, layers, r, step=after, b_schedule=b_schedule, total_params=total_params)
        if method != "full":
            tensors = trainable_tensors(method, layers, r, step=after, b_schedule=b_schedule)
        opt = 2 * t_after * trainable_itemsize + 4 * tensors
    return {"weights": weights, "grads": t_now * trainable_itemsize, "optimizer": opt}


# ---------------------------------------------------------------------------------------
# all predictions for one cell
# ---------------------------------------------------------------------------------------


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
    at = (lambda rl: b_schedule(rl, accounted_step)) if (b_schedule and method in LAMDA_LIKE) else None
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


def _check_method(method: str) -> None:
    if method not in KNOWN_METHODS:
        raise AnalyticError(f"no closed form for method {method!r}; known: {', '.join(KNOWN_METHODS)}")


def layers_from_shapes(shapes: Iterable[tuple[int, int]]) -> list[AdaptedLinear]:
    """Convenience: plain (d_in, d_out) shapes, each reading its own input that needs a grad."""
    return [AdaptedLinear(d_in, d_out) for d_in, d_out in shapes]


# ---- data-parallel sharding (FSDP2, rank 0) ------------------------------------------------
# fully_shard chunks every parameter on dim 0 into world_size pieces, padding dim 0 up to a
# multiple of world_size: rank 0 holds ceil(dim0 / W) rows (its gradient and its Adam moments
# the same), and an all-gather rebuilds a block at its padded size, ceil(dim0 / W) * W rows.


@dataclass(frozen=True)
class ShardedParam:
    """One parameter as FSDP2 sees it: global shape, bytes per element, whether it trains,
    whether it is sharded (False: left out of the sharding and replicated on every rank)."""

    shape: tuple[int, ...]
    itemsize: int
    trainable: bool
    sharded: bool = True


def shard_rows(dim0: int, world_size: int) -> int:
    """Rows of a parameter's dim 0 on rank 0: ceil(dim0 / W)."""
    if world_size < 1:
        raise AnalyticError(f"world_size must be >= 1, got {world_size}")
    return -(-dim0 // world_size)


def rank0_bytes(p: ShardedParam, world_size: int) -> int:
    """Bytes of ``p`` on rank 0 (its padded shard, or all of it when replicated)."""
    rest = 1
    for d in p.shape[1:]:
        rest *= d
    rows = shard_rows(p.shape[0], world_size) if p.sharded and p.shape else (p.shape[0] if p.shape else 1)
    return rows * rest * p.itemsize


def gathered_bytes(params: Iterable[ShardedParam], world_size: int) -> int:
    """Bytes of one unit's all-gathered (unsharded) parameters, dim 0 padded to a multiple of W."""
    return sum(rank0_bytes(p, world_size) * world_size for p in params if p.sharded)


def fsdp2_rank_memory(params: Iterable[ShardedParam], world_size: int, optimizer: str = "adamw",
                      step_itemsize: int = 4) -> dict[str, int]:
    """Rank 0's persistent bytes: weights, trainable weights, grads, optimizer state.

    Grads and Adam's two moments are shaped like the rank's shard of each trainable parameter;
    Adam also keeps one ``step`` scalar (fp32 by default) per trainable parameter; SGD none.
    """
    params = list(params)
    weights = sum(rank0_bytes(p, world_size) for p in params)
    trained = sum(rank0_bytes(p, world_size) for p in params if p.trainable)
    n_trained = sum(1 for p in params if p.trainable)
    opt = 2 * trained + step_itemsize * n_trained if optimizer == "adamw" else 0
    return {"weights": weights, "trainable_weights": trained, "grads": trained, "optimizer": opt}


def lamda_sharded_params(layers: Sequence[AdaptedLinear], r: int, b_trainable: Callable[[int], int],
                         itemsize: int = 4) -> list[ShardedParam]:
    """LaMDA's adapter parameters on a mesh, for ``fsdp2_rank_memory``: per layer A (r x d_in,
    frozen), S (r x r, trainable), B's frozen columns (d_out x (r - t)) and its trainable ones
    (d_out x t, t = ``b_trainable(r)``), each only while it has columns; every one sharded on
    dim 0 (A and S by fully_shard, B by hand: ``methods/lamda_freeze.py``). Once t is 0, B has
    no trainable tensor: no gradient, no Adam moments, no ``step`` scalar."""
    params: list[ShardedParam] = []
    for layer in layers:
        rl = layer.rank(r)
        t = b_trainable(rl)
        params += [ShardedParam((rl, layer.d_in), itemsize, trainable=False),
                   ShardedParam((rl, rl), itemsize, trainable=True)]
        if t < rl:
            params.append(ShardedParam((layer.d_out, rl - t), itemsize, trainable=False))
        if t > 0:
            params.append(ShardedParam((layer.d_out, t), itemsize, trainable=True))
    return params
