"""Claim 1: where does LoRA / LaMDA's ratio of parameter updates peak, and is 17.7x reachable?

"Parameter updates" here is the record's ``params.updates``: the trainable parameters summed
over the optimizer steps of a run (every trainable parameter is updated once per step), so
B's gradual freezing makes LaMDA's total shrink. The ratio compares LoRA and LaMDA at the
same rank r on the same targets over the same horizon.

The records give that ratio over a short run; the closed form (``analytic.updates`` with the
FreezeSchedule LaMDA itself uses) reproduces each record exactly (checked in ``validate``) and
then searches settings a run of a few steps cannot: rank, freeze fraction, targets, horizon.
Layers are grouped by shape so that long horizons stay cheap (updates are linear in layers).

Over a short run the ratio is dominated by the ceil() of the schedule (at 10 steps and
freeze_fraction 0.3, B's columns train for steps 0, 1, 2 at r, ceil(2r/3), ceil(r/3)), so
the search uses horizons of 100 steps and more. ``ceiling`` is a bound, not a grid maximum:
B's trainable columns satisfy trainable(k) >= r (H - k) / H over the H = f T steps it
freezes in, so LaMDA updates at least r f T sum(d_out) / 2 while LoRA updates
r T sum(d_in + d_out): the ratio is below 2 sum(d_in + d_out) / (f sum(d_out)) for every r
and horizon (approached only as r^2 and the ceil() become negligible).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from .. import analytic
from ..model import workloads
from ..suite.cell import Cell
from ..methods.lamda.layer import DEFAULT_FREEZE_FRACTION, DEFAULT_FREEZE_MODE, FreezeSchedule
from ..results.record import INFO_STEPS, PARAMS, get

RANKS = (1, 4, 8, 16, 24, 32, 64)
FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5)
HORIZONS = (100, 1000)  # long enough that the schedule's ceil() does not decide the ratio
LONG_HORIZON = 1000
CLAIMED_RATIO = 17.7


@dataclass(frozen=True)
class Setting:
    workload: str
    targets: str
    r: int
    freeze_fraction: float
    horizon: int
    lora_updates: int
    lamda_updates: int

    @property
    def ratio(self) -> float:
        return self.lora_updates / self.lamda_updates


@functools.lru_cache(maxsize=None)
def target_shapes(workload: str, targets: str) -> tuple[tuple[tuple[int, int], int], ...]:
    """((d_in, d_out), count) of the workload's target linears, from the model built on meta."""
    cell = Cell(workload=workload, method="lora", targets=targets)
    model = workloads.build_model(cell, "meta")
    suffixes = workloads.resolve_targets(cell, model)
    counts = Counter((m.in_features, m.out_features) for m in workloads.target_linears(model, suffixes).values())
    return tuple(sorted(counts.items()))


def updates(workload: str, targets: str, method: str, r: int, fraction: float, horizon: int) -> int:
    """``analytic.updates`` for every target linear of the workload (lamda: with the freezing schedule)."""

    def b_schedule(rank: int, step: int) -> int:
        return _trainable_columns(rank, horizon, fraction, step)

    total = 0
    for (d_in, d_out), count in target_shapes(workload, targets):
        layer = [analytic.AdaptedLinear(d_in, d_out)]
        total += count * analytic.updates(method, layer, r, horizon, b_schedule=b_schedule)
    return total


@functools.lru_cache(maxsize=None)
def _trainable_columns(rank: int, horizon: int, fraction: float, step: int) -> int:
    return FreezeSchedule(rank, horizon, fraction).trainable(step)


def ceiling(workload: str, targets: str, fraction: float) -> float:
    """2 sum(d_in + d_out) / (fraction sum(d_out)): LoRA / LaMDA updates stay below it at any r and
    horizon (module docstring)."""
    shapes = target_shapes(workload, targets)
    return 2 * sum((i + o) * n for (i, o), n in shapes) / (fraction * sum(o * n for (i, o), n in shapes))


def fraction_for(workload: str, targets: str, ratio: float) -> float:
    """The largest freeze_fraction whose ceiling still reaches ``ratio``."""
    return ceiling(workload, targets, 1.0) / ratio


def setting(workload: str, targets: str, r: int, fraction: float, horizon: int) -> Setting:
    return Setting(workload, targets, r, fraction, horizon,
                   updates(workload, targets, "lora", r, fraction, horizon),
                   updates(workload, targets, "lamda", r, fraction, horizon))


# The presets searched per workload: the ones these workloads had before presets were derived
# from module names (workloads gained "mlp" and "peft"), so the claims ledger's search is unchanged.
SEARCHED_PRESETS = {"llama2-7b": ("all", "attn", "mlp")}


def search(workload_names: Iterable[str], ranks=RANKS, fractions=FRACTIONS, horizons=HORIZONS) -> list[Setting]:
    """Every (targets preset, r, freeze_fraction, horizon) of each workload."""
    out = []
    for name in workload_names:
        for targets in SEARCHED_PRESETS.get(name, ("all", "attn")):
            for r in ranks:
                for f in fractions:
                    for h in horizons:
                        out.append(setting(name, targets, r, f, h))
    return out


def validate(record: dict) -> tuple[int, int] | None:
    """(closed form, record) parameter updates for a record the closed form describes; None otherwise."""
    cell = record.get("cell") or {}
    method = cell.get("method")
    options = cell.get("options") or {}
    targets = cell.get("targets")
    if method not in ("lora", "lamda") or not isinstance(targets, str) or cell.get("layers") is not None:
        return None
    if cell.get("workload") not in workloads.WORKLOADS or workloads.get_workload(cell["workload"]).family == "linear":
        return None
    if method == "lamda" and options.get("freeze_mode", DEFAULT_FREEZE_MODE) != "split":
        return None
    horizon = get(record, INFO_STEPS.total_steps)
    measured = get(record, PARAMS.updates)
    if horizon is None or measured is None:
        return None
    fraction = float(options.get("freeze_fraction", DEFAULT_FREEZE_FRACTION))
    return updates(cell["workload"], targets, method, int(cell["r"]), fraction, int(horizon)), int(measured)
