"""The contract every fine-tuning method implements.

A method takes a model (real weights, meta device or fake tensors) and an ``AdapterSpec``
and returns an ``AppliedMethod``: the model to train, the optimizer to train it with, a
per-step hook (LaMDA's gradual freezing lives there) and enough structure for the
measurement code to tell adapter-path modules from the frozen base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


class MethodError(ValueError):
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
      (see ``lamda_bench/peaks.py``).
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
    ``options`` and implement ``apply``."""

    name: str = ""
    description: str = ""
    options: dict[str, Option] = {}
    # True when apply() reads the base weight's values or shape (an SVD init, LaMDA's own
    # wrapper): on a quantized base it is given the dequantized weight, and the residual it
    # leaves is re-quantized (lamda_bench/quant.py, QPiSSA's way).
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


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return t.__name__
