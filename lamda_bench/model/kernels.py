"""What a model runs as transformers' reference PyTorch code because a kernel package is missing.

transformers wraps functions such as Qwen3-Next's gated delta rule (``chunk_gated_delta_rule``,
flash-linear-attention) and its causal convolution (``causal_conv1d``) in
``use_kernel_func_from_hub_with_fallback``: where the package is not installed, the torch
reference implementation runs instead, with other saved tensors, other FLOPs and other
transients than the kernel a fine-tuner on a GPU runs. An estimate traces what is installed here,
so the record names every such fallback (``info.model.reference_kernels``) and ``estimate``
prints a NOTE. Read from the wrappers' own closures (``is_new_implementation``), not from a log.
"""

from __future__ import annotations

import sys

from torch import nn


def reference_fallbacks(model: nn.Module) -> list[dict[str, str]]:
    """``{"function", "package"}`` of every kernel function of the model's transformers modules that
    falls back to its reference PyTorch code here; sorted, empty when none."""
    found = {}
    for name in sorted({type(m).__module__ for m in model.modules()}):
        if not name.startswith("transformers.models."):
            continue
        for value in vars(sys.modules[name]).values():
            closure = _closure(value)
            if closure.get("is_new_implementation") is False and "package" in closure:
                function = str(closure.get("func_name") or getattr(value, "__name__", "?"))
                found[function] = {"function": function, "package": str(closure["package"]),
                                   "module": name.rsplit(".", 1)[-1]}
    return [found[k] for k in sorted(found)]


def _closure(fn) -> dict:
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None)
    if code is None or not cells:
        return {}
    out = {}
    for var, cell in zip(code.co_freevars, cells):
        try:
            out[var] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    return out


def note(fallbacks: list[dict[str, str]]) -> str | None:
    """The NOTE line for a record's fallbacks (None when none)."""
    if not fallbacks:
        return None
    packages = sorted({f["package"] for f in fallbacks})
    return (f"reference PyTorch code estimated, not the kernel: {', '.join(f['function'] for f in fallbacks)} "
            f"fall back to transformers' torch implementation because {', '.join(packages)} is not installed here; "
            "a fine-tuner on a GPU runs the kernel, with other saved tensors and FLOPs")
