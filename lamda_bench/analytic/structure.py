"""The structure the closed forms compute on: the adapted linears, the adapter chain of each
method family, and the family of a registered method.

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
from typing import Iterable
from ..errors import UserError

# The closed-form families, by the structure of their adapter path. A registered method names
# its family (``Method.family``); the formulas below are written per family, never per method.
FAMILIES = (
    "full",  # no adapter: the target linears themselves
    "lora",  # s B A x, A and B trainable (LoRA, PiSSA: PiSSA only changes the init)
    "lora-fa",  # s B A x, A frozen
    "dora",  # LoRA direction plus a trainable magnitude per output (weight-norm terms: no chain)
    "vera",  # shared frozen A, B; trainable scale vectors lambda_d (r), lambda_b (d_out)
    "lamda",  # s B S A x, A frozen, S trainable, B gradually frozen (LaMDA, LaMDA++)
)


class AnalyticError(UserError):
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
    grad: bool = True  # False: a call under no_grad (a preference objective's KL rows): forward FLOPs only

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
    fam = family(method)
    rl = layer.rank(r)
    if fam == "lora":
        return [Matmul(layer.d_in, rl, layer.d_in * rl), Matmul(rl, layer.d_out, rl * layer.d_out)]
    if fam == "lora-fa":
        return [Matmul(layer.d_in, rl, 0), Matmul(rl, layer.d_out, rl * layer.d_out)]
    if fam == "vera":
        # VeRA's A and B are shared frozen buffers; its trainable scale vectors are
        # elementwise, not matmuls. lambda_d is trainable, so B's input still needs a grad.
        return [Matmul(layer.d_in, rl, 0), Matmul(rl, layer.d_out, 0, trainable_scale_before=True)]
    if fam == "lamda":
        k = rl if b_trainable is None else min(b_trainable, rl)
        return [
            Matmul(layer.d_in, rl, 0),
            Matmul(rl, rl, rl * rl),
            Matmul(rl, layer.d_out, k * layer.d_out),
        ]
    if fam == "full":
        # No adapter: the target linear itself is the "adapter path" (as methods/full.py
        # attributes it), so its own weight gradient and saved input are what is counted.
        return [Matmul(layer.d_in, layer.d_out, layer.d_in * layer.d_out)]
    return None  # dora


def family(method: str) -> str:
    """The closed-form family of a registered method (its ``Method.family``); AnalyticError
    for a method that is not registered or has no family here."""
    from ..methods import all_methods

    methods = all_methods()
    fam = getattr(methods.get(method), "family", "")
    if fam not in FAMILIES:
        known = ", ".join(n for n, m in methods.items() if m.family in FAMILIES)
        raise AnalyticError(f"no closed form for method {method!r}; known: {known}")
    return fam


def layers_from_shapes(shapes: Iterable[tuple[int, int]]) -> list[AdaptedLinear]:
    """Convenience: plain (d_in, d_out) shapes, each reading its own input that needs a grad."""
    return [AdaptedLinear(d_in, d_out) for d_in, d_out in shapes]
