"""LaMDA++: LaMDA with per-layer ranks chosen from the spectral energy of the pretrained weights.

The rule (exact, deterministic):

* For each targeted weight W_l (d_out x d_in) with singular values s_1 >= s_2 >= ..., its
  normalized spectral energy is E_l(k) = sum_{i<=k} s_i^2 / sum_i s_i^2, and p_l(i) = s_i^2 /
  sum_j s_j^2 is the energy its i-th component adds.
* Budget: B = r x L, where r is the requested rank and L the number of targeted layers. The
  budget is kept exactly: ranks are handed out one unit at a time, so there is no rounding.
* Bounds per layer: min_rank <= rank_l <= min(max_rank, min(d_in, d_out)), with defaults
  min_rank = max(1, r // 4) and max_rank = 2 r. A budget the bounds cannot meet is an error.
* Two greedy rules hand out the units above min_rank, one unit at a time (option ``rule``):
  - ``max-min`` (default; the project's definition in DESIGN.md): each unit goes to the layer that
    currently captures the least energy, the smallest E_l(rank_l) among layers below their upper
    bound. Rank thus moves from layers that lose little energy when cut (concentrated spectra)
    to layers that capture the least (flat spectra); since every E_l is increasing, the greedy
    maximises min_l E_l(rank_l) within the bounds (checked against brute force in the tests).
  - ``max-total``: each unit goes to the layer whose next component adds the most normalized
    energy, the largest p_l(rank_l + 1); since p_l is non-increasing this maximises the total
    sum_l E_l(rank_l). It does the opposite of max-min: rank flows *towards* concentrated spectra,
    and a flat layer is cut to min_rank. Kept so the two readings can be compared.
  Exact ties go to the layer with the lower current rank, then to the name that sorts first
  (identical spectra share the budget evenly, deterministically).
* Each layer's scaling is alpha / rank_l (PEFT's rank_pattern convention); the layer itself is
  lamda.py's LamdaLinear with that rank (same init, freezing schedule and options).

On random weights spectra are flat and the allocation means nothing; on the meta device or
fake tensors there are no spectra at all. So LaMDA++ needs real pretrained weights, or an
allocation file computed from them elsewhere (option ``allocation``), which is checked against
the model (target names, shapes, budget). It never falls back to uniform ranks.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import register
from ..base import AdapterSpec, AppliedMethod, MethodError, Option
from .layer import LAMDA_OPTIONS, LamdaMethod, apply_lamda, find_targets
from .init import is_shape_only

RULES = {
    "max-min": (
        "max-min: start every layer at min_rank, give each remaining unit of the budget r x layers "
        "to the layer capturing the least normalized energy E_l(rank_l) (ties: lower current rank, "
        "then name), within [min_rank, min(max_rank, min(d_in, d_out))]; budget kept exactly"
    ),
    "max-total": (
        "max-total: start every layer at min_rank, give each remaining unit of the budget r x layers "
        "to the layer with the largest next normalized singular value s_(k+1)^2 / sum s^2 "
        "(ties: lower current rank, then name), within [min_rank, min(max_rank, min(d_in, d_out))]; budget kept exactly"
    ),
}
DEFAULT_RULE = "max-min"
FORMAT = "lamda-bench/lamda++-allocation/1"
ALLOCATION_MAX_BYTES = 16 * 2**20  # a few KiB per thousand layers; anything larger is not one


@dataclass
class LayerAllocation:
    name: str
    shape: list[int]  # [d_out, d_in]
    rank: int
    energy: float  # E_l(rank)
    energy_uniform: float  # E_l(r) at the uniform rank r


@dataclass
class Allocation:
    """Which layer gets which rank, and the energy it captures; JSON round trip via save/load."""

    r: int
    budget: int
    min_rank: int
    max_rank: int
    layers: list[LayerAllocation]
    rule: str = RULES[DEFAULT_RULE]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def ranks(self) -> dict[str, int]:
        return {la.name: la.rank for la in self.layers}

    def summary(self) -> dict[str, Any]:
        """Small, JSON-able: what info["allocation"] carries."""
        ranks = [la.rank for la in self.layers]
        return {
            "r": self.r,
            "budget": self.budget,
            "min_rank": self.min_rank,
            "max_rank": self.max_rank,
            "rank_min": min(ranks),
            "rank_max": max(ranks),
            "energy_total": sum(la.energy for la in self.layers),
            "energy_total_uniform": sum(la.energy_uniform for la in self.layers),
            "layers": {la.name: [la.rank, round(la.energy, 6), round(la.energy_uniform, 6)] for la in self.layers},
            "layers_fields": ["rank", "energy", "energy_uniform"],
            "source": self.source,
        }

    def save(self, path: str | Path) -> None:
        blob = {"format": FORMAT, **asdict(self)}
        Path(path).write_text(json.dumps(blob, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Allocation":
        from ...safe_files import MissingFileError, UnsafeFileError, read_small_file

        try:  # a regular file of bounded size only: a suite must not make us read /dev/zero
            blob = json.loads(read_small_file(path, "LaMDA++ allocation file", limit=ALLOCATION_MAX_BYTES))
        except MissingFileError:
            raise MethodError(f"LaMDA++ allocation file not found: {path}") from None
        except UnsafeFileError as e:
            raise MethodError(str(e)) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise MethodError(f"LaMDA++ allocation file {path} is unreadable: {e}".replace("\n", " ")) from None
        if not isinstance(blob, dict) or blob.pop("format", None) != FORMAT:
            raise MethodError(f"LaMDA++ allocation file {path} is not a {FORMAT} file")
        try:
            layers = [LayerAllocation(**la) for la in blob.pop("layers")]
            return cls(layers=layers, **blob)
        except (KeyError, TypeError) as e:
            raise MethodError(f"LaMDA++ allocation file {path} is malformed: {e}") from None

    def check(self, targets: dict[str, nn.Linear], r: int, where: str = "the model") -> None:
        """One-line MethodError unless this allocation fits these targets and rank r."""
        shapes = {n: list(lin.weight.shape) for n, lin in targets.items()}
        mine = {la.name: la.shape for la in self.layers}
        missing = sorted(set(shapes) - set(mine))
        extra = sorted(set(mine) - set(shapes))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} target(s) of {where} not in it (e.g. {missing[0]})")
            if extra:
                parts.append(f"{len(extra)} layer(s) not targeted in {where} (e.g. {extra[0]})")
            raise MethodError(f"LaMDA++ allocation does not match {where}: " + "; ".join(parts))
        for n, shape in shapes.items():
            if list(mine[n]) != shape:
                raise MethodError(
                    f"LaMDA++ allocation does not match {where}: layer {n} is {mine[n][0]}x{mine[n][1]} "
                    f"in the allocation, {shape[0]}x{shape[1]} in the model"
                )
        budget = r * len(shapes)
        if self.budget != budget or sum(self.ranks.values()) != self.budget:
            raise MethodError(
                f"LaMDA++ allocation does not match {where}: its budget is {self.budget} "
                f"(ranks sum to {sum(self.ranks.values())}), r={r} x {len(shapes)} layers needs {budget}"
            )


def normalized_energies(weight: torch.Tensor) -> torch.Tensor:
    """p_i = s_i^2 / sum_j s_j^2 (float64, non-increasing), from the singular values of ``weight``."""
    s = torch.linalg.svdvals(weight.detach().float()).double()
    e = s.square()
    total = e.sum()
    if not total > 0:
        raise MethodError("LaMDA++ cannot allocate rank to an all-zero weight (no spectral energy)")
    return (e / total).cpu()


def allocate(
    spectra: dict[str, torch.Tensor],
    shapes: dict[str, list[int]],
    r: int,
    min_rank: int | None = None,
    max_rank: int | None = None,
    source: dict[str, Any] | None = None,
    rule: str = DEFAULT_RULE,
) -> Allocation:
    """The greedy ``rule`` of the module docstring over normalized spectra ``p_l`` (name -> p)."""
    if rule not in RULES:
        raise MethodError(f"LaMDA++ rule {rule!r} is not one of {sorted(RULES)}")
    if r < 1:
        raise MethodError(f"LaMDA++ rank r must be >= 1, got {r}")
    if not spectra:
        raise MethodError("LaMDA++ needs at least one target layer")
    lo = max(1, r // 4) if min_rank is None else min_rank
    hi_opt = 2 * r if max_rank is None else max_rank
    if lo < 1 or hi_opt < lo:
        raise MethodError(f"LaMDA++ bounds must satisfy 1 <= min_rank <= max_rank, got {lo} and {hi_opt}")
    names = sorted(spectra)
    hi = {n: min(hi_opt, len(spectra[n])) for n in names}
    budget = r * len(names)
    for n in names:
        if hi[n] < lo:
            raise MethodError(f"LaMDA++ min_rank={lo} exceeds min(d_in, d_out)={hi[n]} of layer {n}")
    if lo * len(names) > budget or sum(hi.values()) < budget:
        raise MethodError(
            f"LaMDA++ bounds cannot meet the budget {budget}: ranks range over "
            f"[{lo * len(names)}, {sum(hi.values())}] in total"
        )
    cumulative = {n: torch.cumsum(spectra[n].double(), 0) for n in names}

    def priority(n: str, k: int) -> float:
        # Smallest first: max-min raises the lowest E_l(k); max-total takes the largest p_l(k + 1).
        return float(cumulative[n][k - 1]) if rule == "max-min" else -float(spectra[n][k])

    rank = {n: lo for n in names}
    heap = [(priority(n, lo), lo, n) for n in names if rank[n] < hi[n]]
    heapq.heapify(heap)
    for _ in range(budget - lo * len(names)):
        _, _, n = heapq.heappop(heap)
        rank[n] += 1
        if rank[n] < hi[n]:
            heapq.heappush(heap, (priority(n, rank[n]), rank[n], n))
    layers = [
        LayerAllocation(
            name=n,
            shape=list(shapes[n]),
            rank=rank[n],
            energy=float(spectra[n][: rank[n]].sum()),
            energy_uniform=float(spectra[n][: min(r, len(spectra[n]))].sum()),
        )
        for n in spectra  # model order
    ]
    return Allocation(
        r=r, budget=budget, min_rank=lo, max_rank=hi_opt, layers=layers, rule=RULES[rule], source=source or {}
    )


def model_identity(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        "model_class": type(model).__name__,
        "name_or_path": getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None),
        "model_type": getattr(config, "model_type", None),
    }


def compute_allocation(
    model: nn.Module,
    targets: list[str],
    r: int,
    min_rank: int | None = None,
    max_rank: int | None = None,
    rule: str = DEFAULT_RULE,
) -> Allocation:
    """The allocation for ``model``'s target linears, from their real weights."""
    found = find_targets(model, targets)
    for n, lin in found.items():
        if is_shape_only(lin.weight):
            raise MethodError(
                f"LaMDA++ needs real pretrained weights or an allocation file (option allocation=PATH): "
                f"{n} has no values (meta device or fake tensors)"
            )
    spectra = {n: normalized_energies(lin.weight) for n, lin in found.items()}
    shapes = {n: list(lin.weight.shape) for n, lin in found.items()}
    return allocate(spectra, shapes, r, min_rank, max_rank, source=model_identity(model), rule=rule)


class LamdaPlusPlusMethod(LamdaMethod):  # LaMDA's facts (family, schedule, label)
    name = "lamda++"
    description = "LaMDA with per-layer ranks from the pretrained weights' spectral energy (budget r x layers)"
    init_reads_base = True  # spectral allocation + SVD init; on a quantized base: quant.float_base_for_init
    options = {
        **LAMDA_OPTIONS,
        "allocation": Option(None, str, "path of a saved allocation (JSON) to use instead of computing one",
                             path=True),
        "min_rank": Option(None, int, "lower bound per layer (default max(1, r // 4))"),
        "max_rank": Option(None, int, "upper bound per layer (default 2 r, capped at min(d_in, d_out))"),
        "rule": Option(DEFAULT_RULE, str, "allocation rule (module docstring)", choices=tuple(RULES)),
    }

    def apply(self, model: nn.Module, spec: AdapterSpec) -> AppliedMethod:
        opts = self.resolve_options(spec.options)
        if opts["allocation"] is not None:
            alloc = Allocation.load(opts["allocation"])
            alloc.check(find_targets(model, spec.targets), spec.r, where=type(model).__name__)
            origin = f"file {opts['allocation']}"
        else:
            alloc = compute_allocation(
                model, spec.targets, spec.r, opts["min_rank"], opts["max_rank"], rule=opts["rule"]
            )
            origin = "computed from the model's weights"
        lamda_opts = {k: opts[k] for k in LAMDA_OPTIONS}
        applied = apply_lamda(model, spec, lamda_opts, ranks=alloc.ranks)
        applied.info["allocation"] = {**alloc.summary(), "origin": origin}
        return applied


register(LamdaPlusPlusMethod())
