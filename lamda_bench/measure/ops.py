"""The step's ops as the time model reads them: per aten op its kind, FLOPs, bytes moved and dtype.

An observer on the shared dispatch hub (``ModuleScope.ops``), like the FLOP counter and the
live tracker: no mode of its own. Ops with the same name, shapes and dtypes are one entry with a
count, so a full-size step stays a few hundred entries. Bytes are what the op touches: each
input tensor's and each output tensor's own elements (a view of a large storage moves only the
view's elements); a view op (``aten.view``, ``t``, ``expand``, ...) and an allocation
(``empty``) move nothing and launch no kernel. An in-place op reads its inputs and writes its
output (the tensor it mutated). The step-time model (``card/step_time.py``) is pure over
``OpRecorder.ops()``.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from .flops import ATTENTION_OPS, flop_formulas
from .modules import ModuleScope

GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm", "_grouped_mm", "gemm_4bit", "grouped_mm_fallback",
            "grouped_mm_fallback_backward", "_int_mm", "_scaled_mm"}
REDUCTION_OPS = {"sum", "mean", "amax", "amin", "max", "min", "norm", "linalg_vector_norm", "var_mean",
                 "_softmax", "_log_softmax", "_softmax_backward_data", "_log_softmax_backward_data",
                 "nll_loss_forward", "nll_loss_backward", "_fused_rms_norm", "_fused_rms_norm_backward",
                 "native_layer_norm", "native_layer_norm_backward", "logsumexp", "argmax", "cumsum"}
# No kernel: an allocation, or an op that only reads metadata.
NO_KERNEL_OPS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_local_scalar_dense",
                 "is_same_size", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "lift_fresh",
                 "set_", "resize_", "record_stream", "_has_compatible_shallow_copy_type"}
# Views in effect whose schema does not say so (``_unsafe_view`` returns an alias of its input).
VIEW_LIKE_OPS = {"_unsafe_view", "detach", "alias", "_reshape_alias", "lift_fresh"}
KINDS = ("gemm", "attention", "elementwise", "reduction", "optimizer", "host_link", "none")
# Ops that write their output without reading any input's elements (an input gives only the
# shape, dtype or the tensor to fill): a fill kernel, or a random number generator.
WRITE_ONLY_OPS = {"zeros_like", "ones_like", "full_like", "zeros", "ones", "full", "new_zeros", "new_ones",
                  "new_full", "fill_", "zero_", "bernoulli_", "uniform_", "normal_", "random_", "scalar_tensor",
                  "arange"}
# Gathers read only the rows or entries they pick, not the whole table they index
# (aten/src/ATen/native/cuda/Embedding.cu: embedding is index_select of weight rows;
# Loss.cu / LossNLL.cu: nll_loss reads input[i, target[i]] per row, and its backward zero-fills
# grad_input and scatters into it, never reading ``self``).
GATHER_OPS = {"embedding", "nll_loss_forward", "nll_loss_backward", "nll_loss2d_forward", "nll_loss2d_backward"}


def op_kind(func) -> str:
    """gemm / attention / reduction / optimizer (foreach, fused) / elementwise / none (no kernel)."""
    name = func._overloadpacket.__name__
    if name in ATTENTION_OPS:
        return "attention"
    if name in GEMM_OPS:
        return "gemm"
    if getattr(func, "is_view", False) or name in NO_KERNEL_OPS or name in VIEW_LIKE_OPS:
        return "none"
    if name.startswith("_foreach_") or name.startswith("_fused_adam") or name.startswith("_fused_sgd"):
        return "optimizer"
    if name in REDUCTION_OPS:
        return "reduction"
    return "elementwise"


def _tensors(value) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _shape(value) -> object:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), str(value.dtype).removeprefix("torch."))
    if isinstance(value, (list, tuple)):
        inner = [_shape(v) for v in value]
        inner = [s for s in inner if s is not None]
        if not inner:
            return None
        if len(inner) > 4:  # a foreach list: its length and total, not every member
            return ("list", len(inner), sum(math.prod(s[0]) if isinstance(s, tuple) and isinstance(s[0], tuple)
                                            else 0 for s in inner))
        return tuple(inner)
    return None


def _mutated(func, args, kwargs) -> list[torch.Tensor]:
    """The tensors an op writes in place, from its schema (``Tensor(a!)`` arguments): a foreach
    in-place op (``_foreach_add_``, ``_fused_adam_``) returns nothing, so its outputs do not show
    the lists it mutated."""
    out = []
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = kwargs.get(arg.name) if arg.name in kwargs else args[i] if i < len(args) else None
            out.extend(_tensors(value))
    return out


def _gather_bytes_read(name: str, args, out) -> int | None:
    """Bytes a gather op reads on CUDA (``GATHER_OPS``), None for any other op."""
    if name == "embedding":  # (weight, indices): the picked rows, as many as the output holds, and the indices
        return sum(_nbytes(t) for t in _tensors(out)) + _nbytes(args[1])
    if name in ("nll_loss_forward", "nll_loss2d_forward"):  # (self, target, ...): one entry per target
        target = args[1]
        return target.numel() * (args[0].element_size() + target.element_size())
    if name in ("nll_loss_backward", "nll_loss2d_backward"):  # (grad_output, self, target, ...): not self
        return sum(_nbytes(t) for i, a in enumerate(args) if i != 1 for t in _tensors(a))
    return None


def _is_causal(func, args, kwargs) -> bool:
    """The attention kernel's ``is_causal`` argument, found by name in its schema."""
    for i, arg in enumerate(func._schema.arguments):
        if arg.name == "is_causal":
            return bool(kwargs["is_causal"] if "is_causal" in kwargs else args[i] if i < len(args) else False)
    return False


class OpRecorder:
    """Context manager on a ``ModuleScope``: every op of the step, aggregated by (name, shapes,
    dtypes). Enter inside any FakeTensorMode, as the other trackers."""

    def __init__(self, scope: ModuleScope) -> None:
        self.scope = scope
        self._formulas = flop_formulas()
        self._ops: dict[tuple, dict] = {}
        # Inside ``optimizer.step()`` (torch's global step hooks): every op is the optimizer's,
        # foreach or not; in a step whose optimizer had no state yet, its fills are the lazy
        # state init (``exp_avg = zeros_like(p)``) that later steps do not run.
        self._in_step = False
        self._first_step = False
        self._hooks: list = []

    def __enter__(self) -> "OpRecorder":
        self.scope.__enter__()
        self.scope.ops.add(self._observe)
        self.scope.ops.__enter__()
        self._hooks = [register_optimizer_step_pre_hook(self._step_starts),
                       register_optimizer_step_post_hook(self._step_ends)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.scope.ops.__exit__(*exc)
        self.scope.ops.remove(self._observe)
        self.scope.__exit__(*exc)

    def _step_starts(self, optimizer, args, kwargs) -> None:
        self._in_step = True
        self._first_step = len(optimizer.state) == 0

    def _step_ends(self, optimizer, args, kwargs) -> None:
        self._in_step = False

    def ops(self) -> list[dict]:
        """One dict per distinct op: name, kind, dtype, count, and per call flops, bytes_read,
        bytes_written, tensors and elements (of the first argument: a foreach op's list), causal
        (attention), phase (forward, backward, optimizer: a foreach or fused op, or any op inside
        ``optimizer.step()``), first_step_only (the optimizer's lazy state init: a fill in a step
        whose optimizer had no state yet)."""
        return [dict(v) for v in self._ops.values()]

    def _observe(self, func, args, kwargs, out) -> None:
        packet = func._overloadpacket
        name = packet.__name__
        phase = "backward" if self.scope.in_backward else "forward"
        if self._in_step or name.startswith("_foreach_") or name.startswith("_fused_"):
            phase = "optimizer"
        state_init = self._in_step and self._first_step and name in WRITE_ONLY_OPS
        inputs = [t for t in _tensors((args, tuple(kwargs.values())))]
        link = self.scope.host_link  # an offloading copy between device and host (model/offload.py)
        key = (name, phase, state_init, _shape(args), _shape(tuple(kwargs.values()))) + (("host_link",) if link else ())
        entry = self._ops.get(key)
        if entry is not None:
            entry["count"] += 1
            return
        kind = op_kind(func)
        if link and kind != "none":
            kind = "host_link"
        outputs = list(_tensors(out))
        if kind == "none":
            read = written = 0
        else:
            gathered = _gather_bytes_read(name, args, out) if name in GATHER_OPS else None
            read = 0 if name in WRITE_ONLY_OPS else gathered if gathered is not None else sum(_nbytes(t) for t in inputs)
            written = sum(_nbytes(t) for t in (outputs or _mutated(func, args, kwargs)))
        formula = self._formulas.get(packet)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        first = (inputs or outputs or [None])[0]
        gemm_dtype = inputs[0].dtype if inputs else None
        dtype = str(gemm_dtype if gemm_dtype is not None else getattr(first, "dtype", None)).removeprefix("torch.")
        first_arg = list(_tensors(args[0])) if args else []
        self._ops[key] = {"name": name, "kind": kind, "phase": phase, "dtype": dtype, "count": 1,
                          "flops": flops, "bytes_read": read, "bytes_written": written,
                          "tensors": len(first_arg), "elements": sum(t.numel() for t in first_arg),
                          "causal": _is_causal(func, args, kwargs) if kind == "attention" else None,
                          "first_step_only": state_init}

