"""The peers, through PEFT itself (never re-implemented): lora, pissa, lora-fa, dora, vera.

Each method builds a PEFT config for exactly the target linears (validated first; PEFT's
count of adapted layers is checked against them), calls ``get_peft_model`` with an explicit
``autocast_adapter_dtype`` (PEFT's default True keeps adapter weights in fp32 and casts
each adapted layer's input to fp32: a real memory cost, so it is a recorded setting).

All of them apply on the meta device (no memory), which full-size estimates need. PiSSA's
SVD cannot run there: on meta it gets the same architecture with PEFT's shape-only
default init and says so in ``info["init"]``; the byte accounting is identical.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from . import peft_experts, register
from .base import (
    AdapterSpec, AppliedMethod, Method, MethodError, Option, adamw_over_trainable, check_rank, check_target_ranks,
)

_COMMON_OPTIONS = {
    "autocast_adapter_dtype": Option(
        True, bool, "PEFT's get_peft_model setting: True keeps adapter weights in fp32 (PEFT's default)"
    ),
    "dropout": Option(0.0, (int, float), "dropout on the adapter input (PEFT's default 0.0)"),
}


# ---- shared checks ------------------------------------------------------------------------


def validated_targets(model: nn.Module, spec: AdapterSpec, method: str) -> dict[str, nn.Linear]:
    """The target linears (qualified name -> module); every one must fit rank ``spec.r``."""
    from ..model.workloads import target_linears

    check_rank(spec.r)
    linears = target_linears(model, spec.targets)
    if not linears:
        raise MethodError(f"method {method!r}: no nn.Linear matches targets {list(spec.targets)}")
    check_target_ranks(linears, {name: spec.r for name in linears})
    return linears


def _adapters_in_base_dtype(adapted: dict[str, nn.Module]) -> None:
    """With ``autocast_adapter_dtype=False`` PEFT moves each new adapter to its base layer's
    dtype, but skips that move for layers created under ``torch.device("meta")`` (how
    estimates build): the adapters stayed fp32 and an estimate counted fp32 copies a real run
    never makes (38% over the H100 measurement on LLaMA2-7B, r 64). Do the move here."""
    for module in adapted.values():
        base = module.get_base_layer()
        dtype = getattr(getattr(base, "weight", None), "dtype", None)
        if dtype is None or not dtype.is_floating_point:
            continue
        for name, param in module.named_parameters():
            if name.startswith("base_layer.") or not param.is_floating_point() or param.dtype == dtype:
                continue
            param.data = param.data.to(dtype)


def _check_dropout(method: str, p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise MethodError(f"method {method!r} option 'dropout' must be in [0, 1), got {p!r}")
    return float(p)


def adapter_module_names(model: nn.Module, adapted: dict[str, nn.Module]) -> frozenset[str]:
    """Each adapted wrapper and its submodules, except the wrapped ``base_layer`` subtree."""
    names: set[str] = set()
    for prefix, wrapper in adapted.items():
        base = f"{prefix}.base_layer"
        for name, _ in wrapper.named_modules(prefix=prefix):
            if name != base and not name.startswith(base + "."):
                names.add(name)
    return frozenset(names)


def _peft_targets(model: nn.Module, spec: AdapterSpec, linears: dict[str, nn.Linear]) -> list[str]:
    """What to hand PEFT's ``target_modules``: the suffixes when they match only the validated
    linears (PEFT applies the same suffix rule), else the exact qualified names."""
    from ..model.workloads import matches_target

    others = [n for n, m in model.named_modules() if n not in linears and matches_target(n, spec.targets)]
    return list(spec.targets) if not others else sorted(linears)


def _on_meta(linears: dict[str, nn.Linear]) -> bool:
    return any(linear.weight.device.type == "meta" for linear in linears.values())



# ---- the PEFT family ----------------------------------------------------------------------


class PeftMethod(Method):
    """Common apply(): validate, build the PEFT config, wrap, describe."""

    options = dict(_COMMON_OPTIONS)

    def peft_config(self, spec: AdapterSpec, opts: dict[str, Any], names: list[str], on_meta: bool):
        """(PEFT config, facts for ``info``: at least "init")."""
        raise NotImplementedError

    def finish(self, peft_model: nn.Module, spec: AdapterSpec) -> None:
        """Adjust the wrapped model after get_peft_model (LoRA-FA freezes A here)."""

    def make_optimizer(self, peft_model: nn.Module, spec: AdapterSpec):
        return adamw_over_trainable(peft_model)

    def apply(self, model: nn.Module, spec: AdapterSpec) -> AppliedMethod:
        import peft
        from peft.tuners.tuners_utils import BaseTunerLayer

        opts = self.resolve_options(spec.options)
        opts["dropout"] = _check_dropout(self.name, opts["dropout"])
        if spec.target_parameters and self.name != "lora":  # MoE experts: LoRA's ParamWrapper only
            raise MethodError(f"method {self.name!r} cannot adapt the experts ({', '.join(spec.target_parameters)}): "
                              "PEFT 0.21 adapts nn.Parameter targets (target_parameters) with LoRA only; use lora")
        linears = validated_targets(model, spec, self.name) if spec.targets or not spec.target_parameters else {}
        config, facts = self.peft_config(spec, opts, _peft_targets(model, spec, linears), _on_meta(linears))
        peft_experts.lora_config_extra(config, spec)
        wrappers = peft_experts.expected_wrappers(model, spec)

        torch.manual_seed(spec.seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            with peft_experts.exact_linear_targets():
                peft_model = peft.get_peft_model(
                    model, config, autocast_adapter_dtype=opts["autocast_adapter_dtype"]
                )
        self.finish(peft_model, spec)
        if wrappers:
            peft_experts.fold_on_entry(peft_model)

        adapted = {n: m for n, m in peft_model.named_modules() if isinstance(m, BaseTunerLayer)}
        if not opts["autocast_adapter_dtype"]:
            _adapters_in_base_dtype(adapted)
        if len(adapted) != len(linears) + wrappers:
            raise MethodError(f"method {self.name!r}: PEFT adapted {len(adapted)} layers, expected "
                              f"{len(linears) + wrappers}")
        adapter_names = adapter_module_names(peft_model, adapted)
        trainable_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in peft_model.parameters() if p.requires_grad})
        info = {
            "method": self.name,
            **facts,
            "autocast_adapter_dtype": opts["autocast_adapter_dtype"],
            "r": spec.r,
            "alpha": spec.alpha,
            "dropout": opts["dropout"],
            "targets": list(spec.targets),
            "adapted_layers": len(adapted),
            "adapter_dtype": ",".join(trainable_dtypes),
            "peft_version": peft.__version__,
        }
        return AppliedMethod(
            model=peft_model,
            adapted=adapted,
            is_adapter_module=adapter_names.__contains__,
            make_optimizer=self.make_optimizer(peft_model, spec),
            info=info,
        )


def _lora_config(spec: AdapterSpec, opts: dict[str, Any], names: list[str], **extra):
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=opts["dropout"], target_modules=names, **extra
    )


_LORA_INIT = "lora default (PEFT init_lora_weights=True): A kaiming-uniform, B zero"


class LoRA(PeftMethod):
    name = "lora"
    family = "lora"
    description = "LoRA via PEFT: W x + s B A x, A and B trainable"

    def peft_config(self, spec, opts, names, on_meta):
        return _lora_config(spec, opts, names), {"init": _LORA_INIT}


class PiSSA(PeftMethod):
    name = "pissa"
    family = "lora"  # LoRA's adapter path; only the init differs
    description = "PiSSA via PEFT (init_lora_weights pissa / pissa_niter_K): A, B from top-r SVD of W, residual frozen"
    init_reads_base = True  # on a quantized base: SVD of the dequantized W, residual re-quantized (QPiSSA)
    options = {
        **_COMMON_OPTIONS,
        "niter": Option(None, int, "None: full SVD (PEFT 'pissa'); K: randomized SVD with K subspace iterations ('pissa_niter_K')"),
    }

    def peft_config(self, spec, opts, names, on_meta):
        niter = opts["niter"]
        if niter is not None and (isinstance(niter, bool) or niter < 0):
            raise MethodError(f"method 'pissa' option 'niter' must be None or an integer >= 0, got {niter!r}")
        requested = "pissa" if niter is None else f"pissa_niter_{niter}"
        if on_meta:
            facts = {"init": "shape-only (meta device): pissa SVD skipped", "init_requested": requested}
            return _lora_config(spec, opts, names), facts
        return _lora_config(spec, opts, names, init_lora_weights=requested), {"init": requested, "init_requested": requested}


class LoRAFA(PeftMethod):
    name = "lora-fa"
    family = "lora-fa"
    description = "LoRA-FA via PEFT: A frozen at its LoRA init, B trained with PEFT's LoraFAOptimizer"

    def peft_config(self, spec, opts, names, on_meta):
        facts = {"init": _LORA_INIT + "; A frozen", "optimizer": "peft.optimizers.create_lorafa_optimizer"}
        return _lora_config(spec, opts, names), facts

    def finish(self, peft_model, spec):
        # create_lorafa_optimizer freezes A too; doing it here makes counts right before any optimizer exists.
        for name, param in peft_model.named_parameters():
            if "lora_A" in name:
                param.requires_grad_(False)

    def make_optimizer(self, peft_model, spec):
        from peft.optimizers import create_lorafa_optimizer

        def make(lr: float) -> torch.optim.Optimizer:
            return create_lorafa_optimizer(peft_model, r=spec.r, lora_alpha=spec.alpha, lr=lr)

        return make


class DoRA(PeftMethod):
    name = "dora"
    family = "dora"
    description = "DoRA via PEFT (use_dora=True): LoRA direction plus a trainable magnitude per output"

    def peft_config(self, spec, opts, names, on_meta):
        return _lora_config(spec, opts, names, use_dora=True), {"init": _LORA_INIT + "; magnitude = ||W||"}


class VeRA(PeftMethod):
    name = "vera"
    family = "vera"
    description = "VeRA via PEFT: frozen shared random A, B; trainable scaling vectors lambda_d (r), lambda_b (d_out)"
    options = {
        **_COMMON_OPTIONS,
        "d_initial": Option(0.1, (int, float), "initial value of lambda_d (PEFT's default 0.1)"),
        "projection_prng_key": Option(0, int, "seed of the shared random projections (PEFT's default 0)"),
    }

    def peft_config(self, spec, opts, names, on_meta):
        from peft import VeraConfig

        config = VeraConfig(
            r=spec.r, target_modules=names, vera_dropout=opts["dropout"],
            d_initial=float(opts["d_initial"]), projection_prng_key=opts["projection_prng_key"],
        )
        facts = {
            "init": "vera: shared kaiming-uniform A, B (frozen), lambda_b zero, lambda_d = d_initial",
            "d_initial": float(opts["d_initial"]),
            "projection_prng_key": opts["projection_prng_key"],
            "alpha_used": False,
        }
        return config, facts


for _method in (LoRA(), PiSSA(), LoRAFA(), DoRA(), VeRA()):
    register(_method)
