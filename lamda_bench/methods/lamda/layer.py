"""LaMDA: a frozen down-projection A, a trainable r x r core S, a gradually frozen up-projection B.

    y = base(x) + s * B(S(A(dropout(x))))        s = alpha / r

This is our own module, not PEFT. The paper's text is not available to us, so these are the
decisions (see docs/DESIGN, "The methods"):

* Inits (``lamda/init.py`` has the details): ``"svd"`` (default) is the paper's form as its
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
* The freezing itself (``FreezeSchedule``, ``LamdaB``, ``swap_optimizer_parameter``, and B
  sharded on dim 0 under FSDP2) is in ``lamda/freeze.py``.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from .. import register
from ...model.targets import is_target_linear, matches_target
from ..base import (
    AdapterSpec, AppliedMethod, Method, MethodError, Option, adamw_over_trainable, check_rank, check_target_ranks,
)
# The freezing (schedule, B, optimizer surgery) lives in lamda/freeze.py; its names stay importable from here.
from .freeze import (  # noqa: F401
    DEFAULT_FREEZE_FRACTION, DEFAULT_FREEZE_MODE, FREEZE_MODES, FreezeSchedule, LamdaB, swap_optimizer_parameter)
from .init import INIT_DOC, INITS, initial_factors


FREEZE_ORDERS = ("largest", "smallest")
ADAPTER_PREFIX = "lamda_"


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
        freeze_mode: str = DEFAULT_FREEZE_MODE,
        autocast_adapter_dtype: bool = True,
        dropout: float = 0.0,
        name: str = "",
    ):
        super().__init__()
        d_out, d_in = base_layer.weight.shape
        check_rank(r, d_in, d_out, name or "?")
        if init not in INITS:
            raise MethodError(f"LaMDA init must be one of {list(INITS)}, got {init!r}")
        if freeze_order not in FREEZE_ORDERS:
            raise MethodError(f"LaMDA freeze_order must be one of {list(FREEZE_ORDERS)}, got {freeze_order!r}")
        self.in_features, self.out_features, self.r = d_in, d_out, r
        self.scaling = alpha / r
        self.schedule = schedule if schedule is not None else FreezeSchedule(r, 1, DEFAULT_FREEZE_FRACTION)
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
        hits = [(n, m) for n, m in model.named_modules() if matches_target(n, [suffix])]
        if not hits:
            raise MethodError(
                f"target {suffix!r} matches no module of {type(model).__name__} "
                f"(linear layers are named like: {', '.join(_linear_suffixes(model)) or 'none'})"
            )
        for n, m in hits:
            if not is_target_linear(m):
                raise MethodError(f"target {suffix!r} matches {n} ({type(m).__name__}), not an nn.Linear")
            found[n] = m
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return dict(sorted(found.items(), key=lambda kv: order[kv[0]]))


def _linear_suffixes(model: nn.Module, limit: int = 12) -> list[str]:
    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if is_target_linear(m)})
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
    check_target_ranks(targets, ranks)  # validate everything before touching the model
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
        make_optimizer=adamw_over_trainable(model),
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
    "freeze_fraction": Option(DEFAULT_FREEZE_FRACTION, (float, int), "fraction of the training steps over which B freezes (0: S alone)"),
    "freeze_order": Option("largest", str, "which rank components of B freeze first, by singular value", FREEZE_ORDERS),
    "freeze_mode": Option(DEFAULT_FREEZE_MODE, str, "'split': real freezing; 'mask': zero the gradient (authors' code)", FREEZE_MODES),
    "autocast_adapter_dtype": Option(True, bool, "adapter weights and input in fp32 (PEFT's default policy)"),
    "dropout": Option(0.0, (float, int), "dropout on the adapter input (saves a d_in-wide mask when > 0)"),
}


class LamdaMethod(Method):
    name = "lamda"
    description = "LaMDA: A frozen, r x r core S trainable, B gradually frozen (own module)"
    options = LAMDA_OPTIONS
    family = "lamda"
    label_options = ("freeze_mode",)
    init_reads_base = True  # SVD init; on a quantized base: quant.float_base_for_init

    def apply(self, model: nn.Module, spec: AdapterSpec) -> AppliedMethod:
        return apply_lamda(model, spec, self.resolve_options(spec.options))

    def b_schedule(self, info, horizon):
        """Under split freezing B's trainable columns follow ``FreezeSchedule``; under mask
        freezing every column stays a trainable parameter (only its gradient is zeroed)."""
        if info["freeze_mode"] != "split":
            return None
        fraction = float(info["freeze_fraction"])

        def trainable(rank: int, step: int) -> int:
            return FreezeSchedule(rank, horizon, fraction).trainable(step)

        return trainable


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
