"""Full fine-tuning in plain PyTorch: every parameter trains, AdamW over all of them.

There is no adapter. ``adapted`` holds the target linears anyway (when targets are given)
so the trackers can set full fine-tuning's per-layer costs beside the adapters': for those
linears the whole layer counts as the "adapter path" (its input saved for W's gradient).
"""

from __future__ import annotations

from torch import nn

from . import register
from .base import AdapterSpec, AppliedMethod, Method, adamw_over_trainable


class FullFineTuning(Method):
    name = "full"
    description = "full fine-tuning (plain PyTorch): all weights trainable, AdamW"
    options: dict = {}
    rankless = True
    family = "full"

    def apply(self, model: nn.Module, spec: AdapterSpec) -> AppliedMethod:
        from ..model.workloads import target_linears

        self.resolve_options(spec.options)
        for param in model.parameters():
            param.requires_grad_(True)
        adapted = dict(target_linears(model, spec.targets)) if spec.targets else {}
        adapter_names = frozenset(adapted)

        info = {
            "method": self.name,
            "init": "model weights as built",
            "trainable": "all parameters",
            "targets": list(spec.targets),
            "adapted_layers": len(adapted),
        }
        return AppliedMethod(
            model=model,
            adapted=adapted,
            is_adapter_module=adapter_names.__contains__,
            make_optimizer=adamw_over_trainable(model),
            info=info,
        )


register(FullFineTuning())
