"""What the closed forms need from the instrumented step: the structure of the adapted calls
(tokens per call, whether the input needs a gradient, which calls share an input), observed
by forward pre-hooks; the arithmetic stays closed-form (``analytic/``)."""

from __future__ import annotations

import torch
from torch import nn

from .. import analytic


class InputObserver:
    """Forward pre-hooks on the adapted modules: the structure the closed forms need.

    One ``AdaptedLinear`` per call (tokens = rows of the input, whether it needs a gradient,
    which calls share one input storage) and one per module (for parameter counts).
    """

    def __init__(self, applied, saved) -> None:
        from torch.utils.weak import WeakIdKeyDictionary

        self.applied = applied
        self.saved = saved
        self.calls: list[analytic.AdaptedLinear] = []
        self.layers: list[analytic.AdaptedLinear] = []
        self._groups = WeakIdKeyDictionary()
        self._handles: list = []

    def __enter__(self) -> "InputObserver":
        linears = {n: m for n, m in self.applied.adapted.items() if not is_parameter_adapter(m)}
        self.layers = [
            analytic.AdaptedLinear(*linear_shape(m), r=module_rank(m), name=n)
            for n, m in linears.items()
        ]
        for name, module in linears.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name, module)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name: str, module: nn.Module):
        d_in, d_out = linear_shape(module)
        rank = module_rank(module)

        def pre(mod, args):
            if torch._C._current_graph_task_id() != -1 or not args or not isinstance(args[0], torch.Tensor):
                return  # checkpoint recomputation in backward, or an unexpected call
            grad = torch.is_grad_enabled()
            if not grad and getattr(mod, "disable_adapters", False):
                return  # a reference forward with PEFT's adapters disabled: no adapter op runs
            x = args[0]
            storage = x.untyped_storage()
            group = self._groups.get(storage)
            if group is None:
                group = f"input{len(self._groups)}"
                self._groups[storage] = group
            self.calls.append(analytic.AdaptedLinear(
                d_in, d_out, r=rank, input_requires_grad=bool(x.requires_grad), input_group=group,
                name=name, tokens=x.numel() // d_in, input_itemsize=x.element_size(),
                input_saved_by_base=self.saved.has_saved(storage), grad=grad,
            ))

        return pre


def is_parameter_adapter(module: nn.Module) -> bool:
    """PEFT's ParamWrapper (a MoE expert parameter adapted): no linear call to observe; the closed
    forms do not cover it (``assemble.predicted`` says so)."""
    return type(module).__name__ == "ParamWrapper"


def linear_shape(module: nn.Module) -> tuple[int, int]:
    base = getattr(module, "base_layer", module)
    return int(base.in_features), int(base.out_features)


def module_rank(module: nn.Module) -> int | None:
    r = getattr(module, "r", None)
    if isinstance(r, dict):
        r = r.get("default")
    return r if isinstance(r, int) else None


def adapter_itemsize(applied) -> int | None:
    """Bytes per element of the adapter weights (PEFT keeps them fp32 under autocast)."""
    for prefix, module in applied.adapted.items():
        for name, p in module.named_parameters(prefix=prefix):
            if applied.is_adapter_module(name.rsplit(".", 1)[0]):
                return p.element_size()
    return None
