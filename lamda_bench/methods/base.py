"""The contract every fine-tuning method implements.

A method takes a model (real weights, meta device or fake tensors) and an ``AdapterSpec``
and returns an ``AppliedMethod``: the model to train, the optimizer to train it with, a
per-step hook (LaMDA's gradual freezing lives there) and enough structure for the
measurement code to tell adapter-path modules from the frozen base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn
from ..errors import UserError


class MethodError(UserError):
    """Bad input for a method (unknown option, r out of range, unknown targets...).

    The message is one line that names the problem; the CLI prints it without a traceback.
    """


@dataclass(frozen=True)
class Option:
    """A method-specific setting: default, accepted type and (optionally) allowed values."""

    default: Any
    type: type | tuple[type, ...]
    doc: str
    choices: tuple[Any, ...] | None = None
    path: bool = False  # a file the cell reads: checked (regular, bounded size) when a suite loads


@dataclass
class AdapterSpec:
    """What to adapt and how: the method-independent settings plus the method's options.

    ``targets`` are module-name suffixes already resolved from a workload preset
    (e.g. ``["q_proj", "k_proj", ...]``). ``dtype`` is the model's compute dtype.
    """

    r: int
    alpha: float
    targets: list[str]
    dtype: torch.dtype = torch.float32
    options: dict[str, Any] = field(default_factory=dict)
    total_steps: int = 1  # the training horizon schedules (LaMDA's freezing) are laid over
    seed: int = 0
    target_parameters: list[str] = field(default_factory=list)  # MoE expert parameters (methods/peft_experts.py)


@dataclass
class AppliedMethod:
    """A model with a method applied, and what a training loop and the trackers need from it.

    - ``model``: the module to call (may be a ``PeftModel`` wrapping the original).
    - ``adapted``: qualified name -> adapted module (one per target linear).
    - ``is_adapter_module(name)``: True for modules on the adapter path (``lora_A``,
      ``lamda_S``...), used to attribute saved activations and FLOPs to adapter vs base.
    - ``make_optimizer(lr)``: the optimizer the method trains with (LoRA-FA's differs).
    - ``on_step(step, optimizer)``: call after every ``optimizer.step()`` with the number of
      steps completed; LaMDA's freezing schedule advances here. No-op for most methods.
    - ``info``: JSON-able facts to record (init used, autocast setting, LaMDA++ ranks...).
    - ``trainable_shrinks``: True when ``on_step`` freezes parameters during the run (LaMDA's
      split freezing): then the first steps, not the steady state, can hold the run's peak
      (see ``lamda_bench/runner/peaks.py``).
    """

    model: nn.Module
    adapted: dict[str, nn.Module]
    is_adapter_module: Callable[[str], bool]
    make_optimizer: Callable[[float], torch.optim.Optimizer]
    on_step: Callable[[int, torch.optim.Optimizer], None] = lambda step, opt: None
    info: dict[str, Any] = field(default_factory=dict)
    trainable_shrinks: bool = False

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def num_total(self) -> int:
        seen: set[int] = set()
        total = 0
        for p in self.model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total


class Method:
    """Base class for registered methods. Subclasses set ``name``, ``description``,
    ``options`` and implement ``apply``.

    The facts other modules need about a method live here, so that adding a method means
    editing ``methods/`` only (plus a formula in ``analytic/`` for a new closed-form family):

    - ``rankless``: the method has no rank (full fine-tuning): ``r`` and ``alpha`` do not
      apply, and a suite fills them with the cell defaults so that one cell results, not one
      per rank.
    - ``family``: the closed-form family ``analytic`` computes the method's predictions with
      (``analytic.FAMILIES``; "" for none): methods of one family share the structure of their
      adapter path (PiSSA is LoRA with another init; LaMDA++ is LaMDA with per-layer ranks).
    - ``label_options``: options shown beside the name in report tables when not at their default.
    - ``b_schedule(info, horizon)``: the trainable B columns by (rank, step) when the method
      freezes part of its adapter during the run (LaMDA), else None.
    """

    name: str = ""
    description: str = ""
    options: dict[str, Option] = {}
    rankless: bool = False
    family: str = ""
    label_options: tuple[str, ...] = ()

    def b_schedule(self, info: Mapping[str, Any], horizon: int) -> Callable[[int, int], int] | None:
        """Trainable components of B of a rank-r layer during 0-based step ``step``, as
        ``f(r, step)``, for a run of ``horizon`` optimizer steps whose ``AppliedMethod.info``
        is ``info``; None when nothing freezes during the run."""
        return None

    def label(self, options: Mapping[str, Any]) -> str:
        """The name for report tables: ``lamda (mask)`` where a label option is not at its default."""
        name = self.name
        for key in self.label_options:
            value = options.get(key)
            if value and value != self.options[key].default:
                name += f" ({value})"
        return name
    # True when apply() reads the base weight's values or shape (an SVD init, LaMDA's own
    # wrapper): on a quantized base it is given the dequantized weight, and the residual it
    # leaves is re-quantized (lamda_bench/model/quant.py, QPiSSA's way).
    init_reads_base: bool = False

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, unknown keys and bad values rejected with a one-line error."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise MethodError(
                f"method {self.name!r} has no option {unknown[0]!r} (its options: {known})"
            )
        out = {}
        for key, opt in self.options.items():
            value = given.get(key, opt.default)
            types = opt.type if isinstance(opt.type, tuple) else (opt.type,)
            # bool is an int subclass in Python: `true` is not a number for a numeric option.
            wrong_bool = isinstance(value, bool) and bool not in types
            if value is not None and (wrong_bool or not isinstance(value, opt.type)):
                raise MethodError(
                    f"method {self.name!r} option {key!r}: expected {_type_name(opt.type)}, got {value!r}"
                )
            if isinstance(value, float) and not math.isfinite(value) or (
                    isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63 - 1):
                raise MethodError(f"method {self.name!r} option {key!r}: {value!r} is not a finite "
                                  f"number that fits in 64 bits")
            if opt.choices is not None and value not in opt.choices:
                raise MethodError(
                    f"method {self.name!r} option {key!r}: {value!r} is not one of {list(opt.choices)}"
                )
            out[key] = value
        return out

    def apply(self, model: nn.Module, spec: AdapterSpec) -> AppliedMethod:  # pragma: no cover
        raise NotImplementedError


def check_rank(r: Any, d_in: int | None = None, d_out: int | None = None, layer: str = "") -> None:
    """One-line MethodError unless ``r`` is an integer >= 1 and, given the layer's shape, at most
    min(d_in, d_out). Every method checks its rank here, so they refuse the same ranks alike."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise MethodError(f"r must be an integer >= 1, got {r!r}" + (f" (layer {layer})" if layer else ""))
    if d_in is not None and d_out is not None and r > min(d_in, d_out):
        raise MethodError(f"r={r} exceeds min(d_in, d_out)={min(d_in, d_out)} of {layer or 'a layer'} "
                          f"(Linear {d_in} -> {d_out})")


def check_target_ranks(linears: dict[str, nn.Module], ranks: dict[str, int]) -> None:
    """``check_rank`` over every target linear (qualified name -> module), before any is touched.
    A layer too narrow for its rank (Qwen3-Next's 2048 -> 1 shared-expert gate under an explicit
    target list) is refused with the next step: the target names, by their last component, whose
    every layer can take the rank."""
    for name, linear in linears.items():
        try:
            check_rank(ranks[name], linear.in_features, linear.out_features, name)
        except MethodError as e:
            if not str(e).startswith("r="):
                raise
            can: dict[str, bool] = {}
            for other, lin in linears.items():
                short = other.rsplit(".", 1)[-1]
                can[short] = can.get(short, True) and ranks[other] <= min(lin.in_features, lin.out_features)
            fit = sorted(short for short, ok in can.items() if ok)
            hint = f"; targets that can take it: {', '.join(fit)}" if fit else "; no target can take it"
            raise MethodError(f"{e}{hint}") from None


def adamw_over_trainable(model: nn.Module) -> Callable[[float], torch.optim.Optimizer]:
    """``make_optimizer`` of the methods that train with plain AdamW: torch's AdamW over the
    parameters that require grad when it is built (so after the method froze what it freezes)."""

    def make(lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    return make


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return t.__name__
