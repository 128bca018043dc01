"""FLOPs forward and backward, adapter path vs base, with torch's flop counter formulas.

torch.utils.flop_counter counts matmuls, convolutions and the CUDA SDPA kernels. It has no
formula for the CPU flash-attention kernel that SDPA uses on CPU (and on fake CPU
tensors), so attention would count 0 there, and before torch 2.13 its SDPA formulas
assert on grouped-query attention. We register one attention formula for every SDPA
kernel (torch 2.13's numbers). Causal attention is counted as full s x s, torch's
convention (``ATTENTION_COUNTING`` says so in every result).

Attribution: each counted op goes to the innermost module running (``ModuleScope``: in
backward, the module whose forward created the autograd node being differentiated),
adapter if ``is_adapter_module(name)``. ``by_module`` is exclusive (innermost module).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import flop_registry, shape_wrapper

from .active import tracker_active
from .modules import ModuleScope

aten = torch.ops.aten

ATTENTION_COUNTING = (
    "attention counted by torch's FlopCounterMode convention: Q@K^T and P@V as dense "
    "products over the full s x s score matrix (4*b*h*s_q*s_k*d forward, 2.5x that "
    "backward), causal masking NOT discounted, grouped k/v heads counted at the query "
    "head count; every SDPA kernel (CPU flash, CUDA flash/efficient/cuDNN) counted alike"
)

ATTENTION_OPS = {
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_cudnn_attention_backward",
    "_flash_attention_forward",
    "_flash_attention_backward",
    "_efficient_attention_forward",
    "_efficient_attention_backward",
    "_scaled_dot_product_attention_math",
}


def attention_flop_count(query, key, value) -> int:
    """Q@K^T then P@V over the full s_q x s_k scores; grouped-query attention (fewer k/v
    heads) counts the broadcast heads, as the kernels compute them. Same numbers as
    torch 2.13's sdpa_flop_count, which older torch lacks for GQA (it asserts)."""
    b, h_q, s_q, d_q = query
    s_k, d_v = key[-2], value[-1]
    return 2 * b * h_q * s_q * s_k * d_q + 2 * b * h_q * s_q * s_k * d_v


def attention_backward_flop_count(grad_out, query, key, value) -> int:
    """Recompute the scores, then grads of P (dO@V^T), V (P^T@dO), Q (dS@K), K (dS^T@Q)."""
    b, h_q, s_q, d_q = query
    s_k, d_v = key[-2], value[-1]
    return 2 * b * h_q * s_q * s_k * (d_q + d_v + d_v + d_q + d_q)


def _attention_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return attention_flop_count(query, key, value)


def _attention_backward_flop(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return attention_backward_flop_count(grad_out, query, key, value)


# The CPU flash kernel has no formula in torch (it would count 0); the SDPA kernels that
# have one get ours too, so every backend counts attention the same way on every torch.
ATTENTION_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _attention_flop,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward_flop,
    aten._scaled_dot_product_flash_attention: _attention_flop,
    aten._scaled_dot_product_flash_attention_backward: _attention_backward_flop,
    aten._scaled_dot_product_efficient_attention: _attention_flop,
    aten._scaled_dot_product_efficient_attention_backward: _attention_backward_flop,
    aten._scaled_dot_product_cudnn_attention: _attention_flop,
    aten._scaled_dot_product_cudnn_attention_backward: _attention_backward_flop,
}


def _gemm_4bit_flop(a, *args, out_shape=None, **kwargs) -> int:
    """bitsandbytes' 4-bit matmul: A @ dequant(B)^T, one multiply-add per A row and output."""
    rows = 1
    for n in out_shape[:-1]:
        rows *= n
    return 2 * rows * a[-1] * out_shape[-1]


def _bitsandbytes_formulas() -> dict:
    """Formulas for bitsandbytes' own matmul ops (nf4 / fp4 forward), when it is installed:
    torch's counter has none, so a quantized base's forward matmuls would count 0."""
    ops = getattr(torch.ops, "bitsandbytes", None)
    op = getattr(ops, "gemm_4bit", None) if ops is not None else None
    return {} if op is None else {op: _gemm_4bit_flop}  # keyed by packet, as torch's registry is


GROUPED_COUNTING = (
    "grouped matmuls (aten._grouped_mm, transformers::grouped_mm_fallback and its backward, the MoE "
    "experts' kernels) counted as 2*rows*k*n over every routed row (tokens x top_k in total, whatever "
    "the routing: the per-group split does not change the sum); aten.bmm (batched_mm experts) by torch's formula"
)


def _grouped_mm_flop(a, b, *args, out_shape=None, **kwargs) -> int:
    """aten._grouped_mm: 2-D x 3-D (rows split by offs over the groups of b), 2-D x 2-D (the shared
    dimension split: one (k x n) product per group, the weight gradient), 3-D x 2-D, 3-D x 3-D (bmm).
    Every routed row is multiplied once, so the total is exact without the offsets' values."""
    if len(a) == 2 and len(b) == 2:
        return 2 * a[0] * a[1] * b[1]
    out = 1
    for n in out_shape:
        out *= n
    return 2 * out * a[-1]


def _grouped_fallback_flop(a, b, offs, *args, out_shape=None, **kwargs) -> int:
    """transformers::grouped_mm_fallback: input (S, k) by expert weights (E, k, n) -> (S, n)."""
    return 2 * a[0] * a[1] * b[-1]


def _grouped_fallback_backward_flop(a, b, offs, grad_out, *args, out_shape=None, **kwargs) -> int:
    """Its backward op: grad_input (S, n) @ W^T and grad_weight input^T @ grad_out, per group."""
    return 4 * a[0] * a[1] * b[-1]


def _grouped_formulas() -> dict:
    """The MoE experts' grouped matmuls: torch's counter has no formula for them, so the experts
    (most of a MoE model's FLOPs) would count 0."""
    found = {}
    if hasattr(aten, "_grouped_mm"):
        found[aten._grouped_mm] = _grouped_mm_flop
    ops = getattr(torch.ops, "transformers", None)
    for name, formula in (("grouped_mm_fallback", _grouped_fallback_flop),
                          ("grouped_mm_fallback_backward", _grouped_fallback_backward_flop)):
        try:
            found[getattr(ops, name)] = formula
        except (AttributeError, RuntimeError):  # transformers' MoE integration not imported (no MoE model)
            pass
    return found


def flop_formulas() -> dict:
    """torch's flop registry with our attention formulas, bitsandbytes' matmuls and the grouped
    matmuls of MoE experts (shape-wrapped like torch's own)."""
    ours = {**ATTENTION_FORMULAS, **_bitsandbytes_formulas(), **_grouped_formulas()}
    return {**flop_registry, **{k: shape_wrapper(v) for k, v in ours.items()}}


class FlopCounter:
    """Context manager. Phases: ``with counter.phase("forward")`` etc.; ops outside any
    marked phase go to "backward" while autograd runs backward, else "forward"."""

    def __init__(
        self,
        model: nn.Module,
        is_adapter_module: Callable[[str], bool],
        scope: ModuleScope | None = None,
    ) -> None:
        self.model = model
        self.is_adapter_module = is_adapter_module
        self.scope = scope or ModuleScope(model)
        self._adapter_cache: dict[str | None, bool] = {None: False}
        self._phase: str | None = None
        self._formulas = flop_formulas()
        # flops[phase]["adapter" | "base"]
        self.flops: dict[str, dict[str, int]] = defaultdict(lambda: {"adapter": 0, "base": 0})
        self.by_module: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.by_op: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.attention_ops: dict[str, int] = defaultdict(int)

    # ---- results ------------------------------------------------------------------------
    def total(self, phase: str) -> int:
        f = self.flops.get(phase, {"adapter": 0, "base": 0})
        return f["adapter"] + f["base"]

    def adapter(self, phase: str) -> int:
        return self.flops.get(phase, {"adapter": 0})["adapter"]

    @property
    def forward(self) -> int:
        return self.total("forward")

    @property
    def backward(self) -> int:
        return self.total("backward")

    @property
    def adapter_forward(self) -> int:
        return self.adapter("forward")

    @property
    def adapter_backward(self) -> int:
        return self.adapter("backward")

    def summary(self) -> dict:
        return {
            "forward": self.forward,
            "backward": self.backward,
            "adapter_forward": self.adapter_forward,
            "adapter_backward": self.adapter_backward,
            "by_phase": {k: dict(v) for k, v in self.flops.items()},
            "by_module": {k: dict(v) for k, v in self.by_module.items()},
            "by_op": {k: dict(v) for k, v in self.by_op.items()},
            "attention_ops": dict(self.attention_ops),
            "attention_counting": ATTENTION_COUNTING,
            "grouped_counting": GROUPED_COUNTING,
        }

    # ---- phases / context ---------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._phase is not None:
            raise RuntimeError(f"phase {name!r} started inside phase {self._phase!r}; phases do not nest")
        self._phase = name
        try:
            yield
        finally:
            self._phase = None

    def __enter__(self) -> "FlopCounter":
        self.scope.__enter__()
        self.scope.ops.add(self._observe)
        self.scope.ops.__enter__()
        tracker_active.enter(self)
        return self

    def __exit__(self, *exc) -> None:
        tracker_active.exit(self)
        self.scope.ops.__exit__(*exc)
        self.scope.ops.remove(self._observe)
        self.scope.__exit__(*exc)

    def _observe(self, func, args, kwargs, out) -> None:
        # Counts with torch's own formula registry (plus ATTENTION_FORMULAS) but not through
        # FlopCounterMode: that mode tries ``func.decompose`` on every op it has no formula
        # for and runs a ModuleTracker whose backward attribution is not ours; on a fake
        # LLaMA2-7B step it doubled this tracker's cost. Ops reaching a dispatch mode are
        # already past autograd and composite decomposition, so the counted ops are the
        # same (the tests compare totals with FlopCounterMode on a tiny LLaMA).
        packet = func._overloadpacket
        formula = self._formulas.get(packet)
        if formula is not None:
            self._add(packet.__name__, formula(*args, **kwargs, out_val=out))
        elif packet.__name__ in ATTENTION_OPS:
            self.attention_ops[packet.__name__] += 1  # an attention kernel counted as 0 FLOPs

    def _add(self, name: str, flops: int) -> None:
        phase = self._phase or ("backward" if self.scope.in_backward else "forward")
        module = self.scope.current()
        adapter = self._adapter_cache.get(module)
        if adapter is None:
            adapter = bool(self.is_adapter_module(module))
            self._adapter_cache[module] = adapter
        self.flops[phase]["adapter" if adapter else "base"] += flops
        self.by_module[phase][module if module is not None else "<outside>"] += flops
        self.by_op[phase][name] += flops
        if name in ATTENTION_OPS:
            self.attention_ops[name] += 1
