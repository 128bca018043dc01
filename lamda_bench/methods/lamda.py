"""LaMDA: a frozen down-projection A, a trainable r x r core S, a gradually frozen up-projection B.

    y = base(x) + s * B(S(A(dropout(x))))        s = alpha / r

This is our own module, not PEFT. The paper's text is not available to us, so these are the
decisions (see docs/DESIGN, "The methods"):

* Inits (``lamda_init.py`` has the details): ``"svd"`` (default) is the paper's form as its
  summary states it: A = V_r^T, B = U_r from the top-r singular vectors of W, S = I; the base
  weight becomes W - s U_r V_r^T (our choice: the paper does not say) so the output is
  unchanged at init. ``"svd-sigma"`` is ours: S = Sigma_r / s, base W - U_r Sigma_r V_r^T
  (PiSSA's residual). ``"lora"`` is the authors' public code: A Kaiming, S random, B zero.
  ``svd_niter=K`` runs the randomized ``torch.svd_lowrank`` (PEFT's ``pissa_niter_K``).
  On the meta device (or fake tensors) the same shapes are built and ``info["init"]`` says the
  init is shape-only: the inits change values, never shapes.
* Why the adapter saves only r-wide tensors: PyTorch saves a linear's input only when the weight
  needs a gradient. A is frozen, so ``F.linear(x, A)`` saves A (a parameter), not x. S is trainable
  and saves A x (N x r). B, while it trains, saves S A x (N x r). Once B is fully frozen only A x
  is saved. The cast of x to the adapter dtype saves nothing either. Dropout > 0 saves a d_in-wide
  mask: keep ``dropout=0`` (the default) when measuring activation memory.
* ``autocast_adapter_dtype=True`` (default) follows PEFT's policy (adapter weights in fp32, the
  adapter's input cast to fp32, its output cast back), so LaMDA and LoRA compare under the same
  dtype policy. ``False`` keeps the adapter in the base weight's dtype.
* Gradual freezing of B (``FreezeSchedule``): the number of trainable rank components of B falls
  linearly from r to 0 over the first ``freeze_fraction`` of ``spec.total_steps`` optimizer steps,
  in singular-value order (``freeze_order="largest"`` freezes the largest first, ``"smallest"`` the
  smallest first; under init "lora" there are no singular values and component index order is
  used). The rank components are permuted once at init (A's rows, S's rows and columns, B's
  columns; B S A is unchanged) so that the components frozen first form a contiguous prefix.
* ``freeze_mode="split"`` (default) freezes for real: B is held as a frozen prefix and a trainable
  suffix, each its own parameter. Frozen columns get no gradient and cost no backward FLOPs, and
  when the split moves the trainable parameter is replaced in the optimizer with the Adam state
  of the columns still training carried over; the rest of the state is dropped.
  ``freeze_mode="mask"`` reproduces the authors' public code: B is one parameter and a gradient
  hook zeroes the frozen columns' gradient each step. That saves nothing (the full gradient is
  computed, the optimizer state is kept, and AdamW's momentum and weight decay still move the
  "frozen" columns); it exists so the harness can show the difference.
* The schedule advances in ``AppliedMethod.on_step(step, optimizer)`` (call it after every
  ``optimizer.step()`` with the number of steps completed) or, with the HF Trainer, through
  ``LamdaFreezeCallback(applied)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .base import AdapterSpec, AppliedMethod, Method, MethodError, Option
from .lamda_init import INIT_DOC, INITS, initial_factors

FREEZE_ORDERS = ("largest", "smallest")
FREEZE_MODES = ("split", "mask")
ADAPTER_PREFIX = "lamda_"


# ---- the schedule ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FreezeSchedule:
    """How many rank components of B still train after ``step`` optimizer steps (pure arithmetic).

    trainable(step) = ceil(r * (H - step) / H) for step < H, else 0, with H = freeze_fraction *
    total_steps. So it is r before the first step, falls linearly, and is 0 from step H on.
    H is computed from the decimal text of ``freeze_fraction`` (0.3 means 3/10 exactly), so
    0.3 * 10 steps is 3 steps, not 3.0000000000000004. ``freeze_fraction=0`` freezes B from the
    start (S alone trains).
    """

    r: int
    total_steps: int
    freeze_fraction: float = 0.3

    def __post_init__(self) -> None:
        if self.r < 0:
            raise ValueError(f"FreezeSchedule: r must be >= 0, got {self.r}")
        if self.total_steps < 0:
            raise ValueError(f"FreezeSchedule: total_steps must be >= 0, got {self.total_steps}")
        if not 0.0 <= self.freeze_fraction <= 1.0:
            raise ValueError(f"FreezeSchedule: freeze_fraction must be in [0, 1], got {self.freeze_fraction}")

    @property
    def horizon(self) -> Fraction:
        """Steps after which B is fully frozen (may be fractional)."""
        return Fraction(repr(float(self.freeze_fraction))) * self.total_steps

    def trainable(self, step: int) -> int:
        h = self.horizon
        if step < 0:
            raise ValueError(f"FreezeSchedule: step must be >= 0, got {step}")
        if step >= h:
            return 0
        return math.ceil(self.r * (h - step) / h)

    def frozen(self, step: int) -> int:
        return self.r - self.trainable(step)

    def trainable_sum(self, steps: int) -> int:
        """Sum of trainable components over the first ``steps`` optimizer steps: update k (1-based)
        runs with ``trainable(k - 1)`` components. Multiply by d_out for B's parameter updates."""
        return sum(self.trainable(k) for k in range(steps))


# ---- B: a frozen prefix and a trainable suffix of rank components -----------------------
class LamdaB(nn.Module):
    """The up-projection B (d_out x r), rank components in freezing order.

    ``split``: parameters ``frozen`` (d_out x n_frozen, requires_grad False, None when empty)
    and ``trainable`` (d_out x (r - n_frozen), None when empty). ``mask``: one parameter
    ``weight`` (d_out x r) whose first n_frozen gradient columns are zeroed by a hook.
    """

    def __init__(self, weight: torch.Tensor, n_frozen: int, mode: str):
        super().__init__()
        if mode not in FREEZE_MODES:
            raise ValueError(f"LamdaB: freeze_mode must be one of {list(FREEZE_MODES)}, got {mode!r}")
        self.mode = mode
        self.out_features, self.rank = weight.shape
        self.n_frozen = n_frozen
        if mode == "split":
            self.frozen = _param(weight[:, :n_frozen], False) if n_frozen > 0 else None
            self.trainable = _param(weight[:, n_frozen:], True) if n_frozen < self.rank else None
        else:
            self.weight = _param(weight, True)
            self.weight.register_hook(self._zero_frozen_columns)

    def _zero_frozen_columns(self, grad: torch.Tensor) -> torch.Tensor:
        if self.n_frozen == 0:
            return grad
        grad = grad.clone()
        grad[:, : self.n_frozen] = 0
        return grad

    def full_weight(self) -> torch.Tensor:
        """B as one d_out x r tensor (a detached copy; components in freezing order)."""
        if self.mode == "mask":
            return self.weight.detach().clone()
        parts = [p.detach() for p in (self.frozen, self.trainable) if p is not None]
        return torch.cat(parts, dim=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.mode == "mask":
            return F.linear(z, self.weight)
        if self.frozen is None:
            return F.linear(z, self.trainable)
        if self.trainable is None:
            return F.linear(z, self.frozen)
        f = self.n_frozen
        # The frozen branch saves only its weight; the trainable one saves z[..., f:] (r-wide).
        return F.linear(z[..., :f], self.frozen) + F.linear(z[..., f:], self.trainable)

    def set_frozen(self, n_frozen: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Freeze the first ``n_frozen`` components (only ever more). ``split`` moves the columns
        into ``frozen`` and swaps the trainable parameter (and its sliced state) in ``optimizer``."""
        if not 0 <= n_frozen <= self.rank:
            raise ValueError(f"LamdaB: n_frozen must be in [0, {self.rank}], got {n_frozen}")
        if n_frozen < self.n_frozen:
            raise ValueError(
                f"LamdaB: freezing only moves forward ({self.n_frozen} frozen, asked for {n_frozen})"
            )
        if n_frozen == self.n_frozen:
            return
        if self.mode == "mask":
            self.n_frozen = n_frozen
            return
        delta = n_frozen - self.n_frozen
        old = self.trainable
        with torch.no_grad():  # slices without autograd history; new storages, so the old one is freed
            moving = old[:, :delta]
            frozen = moving.clone() if self.frozen is None else torch.cat([self.frozen, moving], dim=1)
            self.frozen = nn.Parameter(frozen, requires_grad=False)
            self.trainable = nn.Parameter(old[:, delta:].clone()) if n_frozen < self.rank else None
        self.n_frozen = n_frozen
        if optimizer is not None:
            swap_optimizer_parameter(optimizer, old, self.trainable, drop_columns=delta)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, rank={self.rank}, n_frozen={self.n_frozen}, mode={self.mode}"


def check_rank(r: int, weight_shape: torch.Size, layer: str) -> None:
    """One-line MethodError unless 1 <= r <= min(d_in, d_out) of the layer's (d_out, d_in) weight."""
    d_out, d_in = weight_shape
    if r < 1:
        raise MethodError(f"LaMDA rank r must be >= 1, got {r} (layer {layer})")
    if r > min(d_in, d_out):
        raise MethodError(
            f"LaMDA rank r={r} exceeds min(d_in, d_out)={min(d_in, d_out)} of layer {layer} (weight {d_out}x{d_in})"
        )


def _param(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    # clone: a slice would keep the old, wider storage alive.
    return nn.Parameter(t.detach().clone(), requires_grad=requires_grad)


def swap_optimizer_parameter(
    optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter | None, drop_columns: int
) -> None:
    """Replace ``old`` by ``new`` (= old[:, drop_columns:]) in the optimizer's param_groups.

    State tensors shaped like ``old`` (Adam's exp_avg, exp_avg_sq, max_exp_avg_sq) are sliced
    the same way and cloned, so the dropped columns' state is released; other state (``step``)
    is carried over as is. ``new=None`` removes the parameter and all its state.
    """
    for group in optimizer.param_groups:
        params = group["params"]
        for i, p in enumerate(params):
            if p is old:
                if new is None:
                    del params[i]
                else:
                    params[i] = new
                state = optimizer.state.pop(old, None)
                if state and new is not None:
                    optimizer.state[new] = {
                        k: (v[:, drop_columns:].clone() if torch.is_tensor(v) and v.shape == old.shape else v)
                        for k, v in state.items()
                    }
                return
    raise RuntimeError(
        "LaMDA freezing: the optimizer does not hold B's trainable parameter "
        "(build the optimizer after applying the method, from its trainable parameters)"
    )


# ---- the layer ------------------------------------------------------------------------------
class LamdaLinear(nn.Module):
    """A target ``nn.Linear`` with the LaMDA adapter beside it (see the module docstring)."""

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        alpha: float,
        *,
        init: str = "svd",
        svd_niter: int | None = None,
        schedule: FreezeSchedule | None = None,
        freeze_order: str = "largest",
        freeze_mode: str = "split",
        autocast_adapter_dtype: bool = True,
        dropout: float = 0.0,
        name: str = "",
    ):
        super().__init__()
        d_out, d_in = base_layer.weight.shape
        check_rank(r, base_layer.weight.shape, name or "?")
        if init not in INITS:
            raise MethodError(f"LaMDA init must be one of {list(INITS)}, got {init!r}")
        if freeze_order not in FREEZE_ORDERS:
            raise MethodError(f"LaMDA freeze_order must be one of {list(FREEZE_ORDERS)}, got {freeze_order!r}")
        self.in_features, self.out_features, self.r = d_in, d_out, r
        self.scaling = alpha / r
        self.schedule = schedule if schedule is not None else FreezeSchedule(r, 1, 0.3)
        if self.schedule.r != r:
            raise ValueError(f"LamdaLinear: schedule is for r={self.schedule.r}, layer has r={r}")
        self.base_layer = base_layer.requires_grad_(False)  # the frozen base (W, or the SVD residual)
        w = base_layer.weight
        self.adapter_dtype = torch.float32 if autocast_adapter_dtype else w.dtype
        self.lamda_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        a, s, b, self.init_used = initial_factors(base_layer, r, self.scaling, init, svd_niter)
        if freeze_order == "smallest":  # components frozen first must be a contiguous prefix
            a, s, b = a.flip(0), s.flip(0, 1), b.flip(1)
        self.lamda_A = _linear(a.to(self.adapter_dtype), requires_grad=False)
        self.lamda_S = _linear(s.to(self.adapter_dtype), requires_grad=True)
        self.lamda_B = LamdaB(b.to(self.adapter_dtype), self.schedule.frozen(0), freeze_mode)

    # Some model code reads ``proj.weight`` / ``proj.bias`` (dtype, device): the base layer's.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def advance(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Apply the freezing schedule after ``step`` completed optimizer steps."""
        self.lamda_B.set_frozen(self.schedule.frozen(step), optimizer)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        xa = x if x.dtype == self.adapter_dtype else x.to(self.adapter_dtype)
        z = self.lamda_S(self.lamda_A(self.lamda_dropout(xa)))
        return result + (self.lamda_B(z) * self.scaling).to(result.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, init={self.init_used!r}, adapter_dtype={self.adapter_dtype}"


def _linear(weight: torch.Tensor, requires_grad: bool) -> nn.Linear:
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=False, device="meta")
    lin.weight = nn.Parameter(weight.detach(), requires_grad=requires_grad)
    return lin


# ---- applying to a model --------------------------------------------------------------------
def find_targets(model: nn.Module, targets: Iterable[str]) -> dict[str, nn.Linear]:
    """Qualified name -> nn.Linear for every module whose name ends with "." + suffix (or equals
    it) for some suffix in ``targets``. One-line MethodError for no targets, a suffix that matches
    nothing, or a match that is not an nn.Linear."""
    targets = list(targets)
    if not targets:
        raise MethodError("no target modules given (targets is empty)")
    found: dict[str, nn.Linear] = {}
    for suffix in targets:
        hits = [(n, m) for n, m in model.named_modules() if n == suffix or n.endswith("." + suffix)]
        if not hits:
            raise MethodError(
                f"target {suffix!r} matches no module of {type(model).__name__} "
                f"(linear layers are named like: {', '.join(_linear_suffixes(model)) or 'none'})"
            )
        for n, m in hits:
            if type(m) is not nn.Linear and not getattr(m, "lamda_bench_quant", None):  # quant.MARKER
                raise MethodError(f"target {suffix!r} matches {n} ({type(m).__name__}), not an nn.Linear")
            found[n] = m
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return dict(sorted(found.items(), key=lambda kv: order[kv[0]]))


def _linear_suffixes(model: nn.Module, limit: int = 12) -> list[str]:
    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    return names[:limit]


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def is_lamda_adapter_module(name: str, adapted: dict[str, nn.Module]) -> bool:
    """True for a LamdaLinear wrapper and its lamda_* submodules; False for base_layer and the rest."""
    if name in adapted:
        return True
    parent, _, leaf = name.rpartition(".")
    while parent:
        if parent in adapted:
            return leaf.split(".", 1)[0].startswith(ADAPTER_PREFIX)
        parent, _, last = parent.rpartition(".")
        leaf = f"{last}.{leaf}"
    return False


def apply_lamda(
    model: nn.Module, spec: AdapterSpec, options: dict[str, Any], ranks: dict[str, int] | None = None
) -> AppliedMethod:
    """Freeze the model, wrap each target linear in a LamdaLinear and return the AppliedMethod.

    ``ranks`` (LaMDA++) gives a rank per target name; otherwise every layer gets ``spec.r``.
    Scaling is alpha / rank of the layer (as PEFT's rank_pattern does).
    """
    targets = find_targets(model, spec.targets)
    ranks = ranks if ranks is not None else {n: spec.r for n in targets}
    for n, lin in targets.items():  # validate everything before touching the model
        check_rank(ranks[n], lin.weight.shape, n)
    frac = options["freeze_fraction"]
    if not 0.0 <= float(frac) <= 1.0:
        raise MethodError(f"LaMDA freeze_fraction must be in [0, 1], got {frac}")
    if not 0.0 <= float(options["dropout"]) < 1.0:
        raise MethodError(f"LaMDA dropout must be in [0, 1), got {options['dropout']}")
    if options["svd_niter"] is not None and options["svd_niter"] < 0:
        raise MethodError(f"LaMDA svd_niter must be >= 0 or None, got {options['svd_niter']}")

    for p in model.parameters():
        p.requires_grad_(False)
    adapted: dict[str, LamdaLinear] = {}
    with _seeded(spec.seed, next(iter(targets.values())).weight.device):
        for n, lin in targets.items():
            layer = LamdaLinear(
                lin,
                ranks[n],
                spec.alpha,
                init=options["init"],
                svd_niter=options["svd_niter"],
                schedule=FreezeSchedule(ranks[n], spec.total_steps, float(frac)),
                freeze_order=options["freeze_order"],
                freeze_mode=options["freeze_mode"],
                autocast_adapter_dtype=options["autocast_adapter_dtype"],
                dropout=float(options["dropout"]),
                name=n,
            )
            _replace_module(model, n, layer)
            adapted[n] = layer

    def on_step(step: int, optimizer: torch.optim.Optimizer | None) -> None:
        for layer in adapted.values():
            layer.advance(step, optimizer)

    def make_optimizer(lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    inits = sorted({layer.init_used for layer in adapted.values()})
    info = {
        "init": inits[0] if len(inits) == 1 else inits,
        "svd_niter": options["svd_niter"],
        "freeze_fraction": float(frac),
        "freeze_order": options["freeze_order"],
        "freeze_mode": options["freeze_mode"],
        "total_steps": spec.total_steps,
        "freeze_horizon_steps": float(FreezeSchedule(1, spec.total_steps, float(frac)).horizon),
        "autocast_adapter_dtype": options["autocast_adapter_dtype"],
        "dropout": float(options["dropout"]),
        "adapted_layers": len(adapted),
        "rank_total": sum(ranks[n] for n in adapted),
    }
    if len(set(ranks[n] for n in adapted)) == 1:
        info["r"] = ranks[next(iter(adapted))]
    return AppliedMethod(
        model=model,
        adapted=dict(adapted),
        is_adapter_module=lambda name: is_lamda_adapter_module(name, adapted),
        make_optimizer=make_optimizer,
        on_step=on_step,
        info=info,
        trainable_shrinks=options["freeze_mode"] == "split" and float(frac) > 0,
    )


class _seeded:
    """Seed torch's RNG for the inits (lora init, randomized SVD) without disturbing the caller's."""

    def __init__(self, seed: int, device: torch.device):
        self.seed = seed
        self.devices = [device] if device.type == "cuda" else []

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=self.devices)
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


LAMDA_OPTIONS: dict[str, Option] = {
    "init": Option("svd", str, INIT_DOC, INITS),
    "svd_niter": Option(None, int, "None: full torch.linalg.svd; K: torch.svd_lowrank with niter=K"),
    "freeze_fraction": Option(0.3, (float, int), "fraction of the training steps over which B freezes (0: S alone)"),
    "freeze_order": Option("largest", str, "which rank components of B freeze first, by singular value", FREEZE_ORDERS),
    "freeze_mode": Option("split", str, "'split': real freezing; 'mask': zero the gradient (authors' code)", FREEZE_MODES),
    "autocast_adapter_dtype": Option(True, bool, "adapter weights and input in fp32 (PEFT's default policy)"),
    "dropout": Option(0.0, (float, int), "dropout on the adapter input (saves a d_in-wide mask when > 0)"),
}


class LamdaMethod(Method):
    name = "lamda"
    description = "LaMDA: A frozen, r x r core S trainable, B gradually frozen (own module)"
    options = LAMDA_OPTIONS
    init_reads_base = True  # SVD init; on a quantized base: quant.float_base_for_init

    def apply(self, model: nn.Module, spec: AdapterSpec) -> AppliedMethod:
        return apply_lamda(model, spec, self.resolve_options(spec.options))


register(LamdaMethod())


# ---- HF Trainer ---------------------------------------------------------------------------
def _make_callback_class():
    from transformers import TrainerCallback

    class LamdaFreezeCallback(TrainerCallback):
        """Advances LaMDA's freezing schedule after every optimizer step of the HF Trainer.

        ``LamdaFreezeCallback(applied)`` with the AppliedMethod (or any ``on_step`` callable).
        The Trainer hands callbacks accelerate's AcceleratedOptimizer; its ``.optimizer`` is
        the torch optimizer whose param_groups and state the split freezing edits.
        """

        def __init__(self, applied: AppliedMethod | Any):
            self.on_step_fn = applied.on_step if hasattr(applied, "on_step") else applied

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            inner = getattr(optimizer, "optimizer", optimizer)
            self.on_step_fn(state.global_step, inner)
            return control

    return LamdaFreezeCallback


def __getattr__(name: str):
    # Importing transformers' Trainer machinery costs seconds: build the callback class lazily.
    if name == "LamdaFreezeCallback":
        cls = _make_callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
