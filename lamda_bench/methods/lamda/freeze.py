"""LaMDA's gradual freezing of B: the schedule, B as a frozen prefix and a trainable suffix, and
the optimizer surgery when the split moves (on one device and on a data-parallel mesh).

``methods/lamda.py`` re-exports every public name here; its docstring explains the method.

On a mesh (``LamdaB.distribute``, called by ``parallel.shard``): FSDP2 fixes the set and
shapes of the parameters it manages at ``fully_shard`` time, and the split freezing replaces
B's trainable parameter by a narrower one, so B cannot be one of FSDP2's parameters. It is
sharded the same way instead, by hand: each of B's parameters becomes a DTensor sharded on
dim 0 (rank k holds rows [k*ceil(d_out/W), ...), ceil(d_out/W) on rank 0, as FSDP2 pads), the
forward all-gathers it (a real job's all-gather; autograd's backward reduce-scatters the
gradient, as FSDP2 does for its own parameters), and the optimizer sees DTensors only, so a
foreach AdamW group holding B beside FSDP2's parameters is homogeneous. Moving columns from
the trainable part to the frozen one slices dim 1, which a dim-0 shard holds whole: each
rank slices its local rows and wraps them again, no communication; the dropped columns'
Adam state is sliced off the same way, so the frozen columns' state is freed on every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

FREEZE_MODES = ("split", "mask")
# LaMDA's schedule defaults, written once: the option defaults, the schedule's, the claims'.
DEFAULT_FREEZE_FRACTION = 0.3
DEFAULT_FREEZE_MODE = "split"


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
    freeze_fraction: float = DEFAULT_FREEZE_FRACTION

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
    ``weight`` (d_out x r) whose first n_frozen gradient columns are zeroed by a hook. On a mesh
    (``distribute``) ``frozen`` and ``trainable`` are DTensors sharded on dim 0 (module docstring).
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

    def distribute(self, mesh) -> None:
        """Make ``frozen`` and ``trainable`` DTensors sharded on dim 0 over the 1-D ``mesh``
        (rank ``mesh.get_local_rank()`` keeps its rows); see the module docstring for why B is
        sharded here rather than by ``fully_shard``. ``split`` mode only."""
        from torch.distributed.tensor import DTensor, Shard

        if self.mode != "split":
            raise ValueError("LamdaB.distribute: only freeze_mode 'split' is sharded by hand")
        rank, size = mesh.get_local_rank(), mesh.size()
        for name in ("frozen", "trainable"):
            p = getattr(self, name)
            if p is None or isinstance(p, DTensor):
                continue
            rows = math.ceil(p.shape[0] / size)  # torch.chunk's split, FSDP2's and DTensor's
            shard = p.detach()[rank * rows:(rank + 1) * rows].clone()
            dt = DTensor.from_local(shard, mesh, [Shard(0)], run_check=False, shape=p.shape, stride=p.stride())
            setattr(self, name, nn.Parameter(dt, requires_grad=p.requires_grad))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.mode == "mask":
            return F.linear(z, self.weight)
        frozen, trainable = _gathered(self.frozen), _gathered(self.trainable)
        if frozen is None:
            return F.linear(z, trainable)
        if trainable is None:
            return F.linear(z, frozen)
        f = self.n_frozen
        # The frozen branch saves only its weight; the trainable one saves z[..., f:] (r-wide).
        return F.linear(z[..., :f], frozen) + F.linear(z[..., f:], trainable)

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
            moving = columns(old, 0, delta, copy=False)
            frozen = columns(moving, 0, delta) if self.frozen is None else concat_columns(self.frozen, moving)
            self.frozen = nn.Parameter(frozen, requires_grad=False)
            self.trainable = nn.Parameter(columns(old, delta, self.rank - self.n_frozen)) if n_frozen < self.rank else None
        self.n_frozen = n_frozen
        if optimizer is not None:
            swap_optimizer_parameter(optimizer, old, self.trainable, drop_columns=delta)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, rank={self.rank}, n_frozen={self.n_frozen}, mode={self.mode}"



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
                        k: (columns(v, drop_columns, v.shape[1]) if torch.is_tensor(v) and v.shape == old.shape else v)
                        for k, v in state.items()
                    }
                return
    raise RuntimeError(
        "LaMDA freezing: the optimizer does not hold B's trainable parameter "
        "(build the optimizer after applying the method, from its trainable parameters)"
    )




# ---- columns of B, plain or sharded on dim 0 ---------------------------------------------------
def _gathered(p: torch.Tensor | None) -> torch.Tensor | None:
    """A parameter as the forward uses it: a DTensor all-gathered to the whole B (its backward
    reduce-scatters the gradient: ``Partial`` summed over ranks, then ``Shard(0)``), else as is."""
    from torch.distributed.tensor import DTensor, Partial, Replicate

    if not isinstance(p, DTensor):
        return p
    return p.redistribute(placements=[Replicate()]).to_local(grad_placements=[Partial()])


def columns(t: torch.Tensor, start: int, stop: int, copy: bool = True) -> torch.Tensor:
    """Columns [start, stop) of ``t``: a clone (a slice would keep the wider storage alive), or
    with ``copy=False`` a view. A DTensor sharded on dim 0 holds whole rows, so its local rows
    are sliced and wrapped again with the same mesh and placement."""
    from torch.distributed.tensor import DTensor

    if not isinstance(t, DTensor):
        part = t[:, start:stop]
        return part.clone() if copy else part
    local = t.to_local()[:, start:stop]
    return _wrap_like(t, local.clone() if copy else local, stop - start)


def concat_columns(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``torch.cat([left, right], dim=1)``; for DTensors sharded on dim 0, rank by rank."""
    from torch.distributed.tensor import DTensor

    if not isinstance(left, DTensor):
        return torch.cat([left, right], dim=1)
    local = torch.cat([left.to_local(), right.to_local()], dim=1)
    return _wrap_like(left, local, left.shape[1] + right.shape[1])


def _wrap_like(template, local: torch.Tensor, n_columns: int):
    from torch.distributed.tensor import DTensor, Shard

    if tuple(template.placements) != (Shard(0),):
        raise ValueError(f"LaMDA freezing: B must be sharded on dim 0, got placements {template.placements}")
    return DTensor.from_local(local, template.device_mesh, template.placements, run_check=False,
                              shape=(template.shape[0], n_columns), stride=(n_columns, 1))
