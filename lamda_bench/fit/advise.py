"""``fit --advise``: when a method does not fit, the cheapest lever combinations that make it fit.

A combination is one step index per lever (``levers.LEVERS``; 0 = the cell as asked). Every
combination is an ordinary estimate cell at the smallest value of fit's axis (batch 1, or one
``--multiple``), run by fit's own probe runner (so records are reused on a second run), and it
"fits" by the budget's margin policy, as every fit answer does.

The search, cheapest first:

1. The cell as asked (fit's own first probe). If it fits, there is nothing to advise.
2. The ceilings: every lever at its strongest step (for each step of a non-monotone lever, and
   each way round a pair of levers that exclude each other). If no ceiling fits, no allowed
   combination does (premise: monotone levers never raise the peak a step further), and the
   answer is "none of the allowed levers is enough", after a handful of estimates.
3. Levels of growing total step (one lever one step, then two steps, ...). A candidate is
   skipped when it is at or above a combination that fits on every monotone lever (it fits
   too, at more cost: not minimal), or at or below one that does not (it cannot fit). Before a
   level, the bound of each candidate's lever set (those levers at their strongest, the others
   as asked) is estimated when that is fewer estimates than the level: a bound that does not fit
   rules out every combination of those levers at once. The search stops after the first level that brings the number of fitting combinations to
   ``top``, when the levels run out, or at ``max_estimates``.
4. For each fitting combination, fit's certified search (``plan.plan``) finds the largest
   batch (or seq) it allows.

Every pair of estimated combinations the premise compares is checked against it; a violation
is reported (an inference drawn from a broken premise is then flagged, not hidden).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

from .budgets import Budget
from .levers import Change, Lever, apply_change, set_flags
from .plan import Layout, RunProbes, plan, predicted_time
from ..results.record import FLOPS, get
from ..suite.cell import Cell

DEFAULT_TOP = 3
DEFAULT_MAX_ESTIMATES = 48


@dataclass
class Outcome:
    """One estimated combination."""

    combo: tuple[int, ...]
    cell: Cell
    change: Change
    peak: int | None
    flops: int | None
    fits: bool | None  # None: the estimate failed
    error: str | None = None
    time: dict[str, Any] | None = None  # with a card: the predicted step (``plan.predicted_time``)
    host: dict[str, Any] | None = None  # offload_activations: host RAM and host-link bytes (``host_costs``)


@dataclass
class Counter:
    """Wraps the probe runner: how many cells were estimated now and how many records reused."""

    run_probes: RunProbes
    known: set[str]
    new: int = 0
    reused: int = 0

    def __call__(self, cells: list[Cell]) -> dict[str, dict[str, Any]]:
        ids = list(dict.fromkeys(c.id for c in cells))
        self.reused += sum(i in self.known for i in ids)
        self.new += sum(i not in self.known for i in ids)
        self.known.update(ids)
        return self.run_probes(cells)


@dataclass
class Advice:
    """The search for one base cell (the cell fit answered "does not fit" for)."""

    base: Cell
    levers: list[Lever]
    budget: Budget
    layout: Layout = Layout()
    top: int = DEFAULT_TOP
    max_estimates: int = DEFAULT_MAX_ESTIMATES
    outcomes: dict[tuple[int, ...], Outcome] = field(default_factory=dict)
    steps: list[list[Change]] = field(default_factory=list)
    stopped: str = ""
    level: int = 0  # the last level of total step searched

    def __post_init__(self) -> None:
        self.steps = [lever.steps(self.base) for lever in self.levers]

    # ---- combinations
    @property
    def applicable(self) -> list[Lever]:
        return [lv for lv, st in zip(self.levers, self.steps) if st]

    def change(self, combo: Sequence[int]) -> Change:
        merged: Change = {}
        for steps, k in zip(self.steps, combo):
            if k:
                merged.update(steps[k - 1])
        return merged

    def cell(self, combo: Sequence[int]) -> Cell:
        return apply_change(self.base, self.change(combo))

    def valid(self, combo: Sequence[int]) -> bool:
        on = {lv.name for lv, k in zip(self.levers, combo) if k}
        return not any(set(lv.excludes) & on for lv, k in zip(self.levers, combo) if k)

    def below(self, a: Sequence[int], b: Sequence[int]) -> bool:
        """a <= b: no further on any monotone lever, the same step on every other."""
        return all((x <= y) if lv.monotone else (x == y) for lv, x, y in zip(self.levers, a, b))

    def combos(self) -> list[tuple[int, ...]]:
        return [c for c in itertools.product(*(range(len(s) + 1) for s in self.steps)) if self.valid(c)]

    def ceilings(self) -> list[tuple[int, ...]]:
        """Valid combinations no monotone lever can go a step further from and stay valid."""
        out = []
        for c in self.combos():
            raised = (c[:i] + (c[i] + 1,) + c[i + 1:] for i, lv in enumerate(self.levers)
                      if lv.monotone and c[i] < len(self.steps[i]))
            if not any(self.valid(r) for r in raised):
                out.append(c)
        return out

    def layout_of(self, cell: Cell) -> Layout:
        return Layout(cell.world_size, "fsdp2") if cell.parallel == "fsdp2" else self.layout

    # ---- the search
    def _estimate(self, combos: list[tuple[int, ...]], run: Counter) -> None:
        cells = {c: self.cell(c) for c in combos}
        records = run(list(cells.values()))
        for c, cell in cells.items():
            rec = records.get(cell.id) or {"status": "error", "error": "no record came back"}
            ok = rec.get("status") == "ok"
            peak = self.layout_of(cell).card_peak(rec) if ok else None
            fwd, bwd = get(rec, FLOPS.forward), get(rec, FLOPS.backward)
            self.outcomes[c] = Outcome(c, cell, self.change(c), peak, None if fwd is None or bwd is None else fwd + bwd,
                                       None if peak is None else self.budget.fits(peak),
                                       None if ok and peak is not None else (rec.get("error") or "no peak recorded"),
                                       predicted_time(rec) if ok else None, host_bytes(rec) if ok else None)

    def _known(self, fits: bool) -> list[tuple[int, ...]]:
        return [c for c, o in self.outcomes.items() if o.fits is fits]

    def search(self, run: Counter) -> None:
        zero = tuple(0 for _ in self.levers)
        self._estimate([zero], run)
        if self.outcomes[zero].fits is not False:
            self.stopped = "the cell fits as asked" if self.outcomes[zero].fits else "the cell's estimate failed"
            return
        if not self.applicable:
            self.stopped = "no allowed lever applies to this cell"
            return
        ceilings = [c for c in self.ceilings() if c != zero]
        self._estimate(ceilings, run)
        if not any(self.outcomes[c].fits for c in ceilings):
            self.stopped = ("no ceiling fits: none of the allowed levers is enough" if
                            all(self.outcomes[c].fits is False for c in ceilings) else
                            "no ceiling fits (some ceilings' estimates failed)")
            return
        by_level: dict[int, list[tuple[int, ...]]] = {}
        for c in self.combos():
            by_level.setdefault(sum(c), []).append(c)
        for level in sorted(by_level):
            wanted = [c for c in by_level[level] if c not in self.outcomes and not self._inferred(c)]
            bounds = list(dict.fromkeys(b for b in map(self.bound, wanted) if b not in self.outcomes))
            if bounds and len(bounds) < len(wanted):  # one estimate that may rule out a whole sub-space
                room = self.max_estimates - len(self.outcomes)
                self._estimate(bounds[:max(room, 0)], run)
                wanted = [c for c in wanted if c not in self.outcomes and not self._inferred(c)]
            room = self.max_estimates - len(self.outcomes)
            if len(wanted) > room:
                self._estimate(wanted[:room], run)
                self.stopped = f"stopped at the estimate cap ({self.max_estimates}) in level {level}"
                self.level = level
                return
            self._estimate(wanted, run)
            self.level = level
            found = len(self.fitting())
            if found >= self.top:
                self.stopped = f"{found} fitting combinations by level {level} (--advise-top {self.top})"
                return
        self.stopped = "every combination searched"

    def bound(self, c: tuple[int, ...]) -> tuple[int, ...]:
        """The strongest combination of the levers ``c`` pulls (its other levers left as asked): if
        it does not fit, nothing that pulls only those levers does."""
        return tuple(len(st) if k and lv.monotone else k for lv, st, k in zip(self.levers, self.steps, c))

    def _inferred(self, c: tuple[int, ...]) -> bool:
        """Known without an estimate: at or above a fit (not minimal), at or below a non-fit."""
        return (any(self.below(f, c) for f in self._known(True)) or
                any(self.below(c, o) for o in self._known(False)))

    def fitting(self, upto: int | None = None) -> list[Outcome]:
        """The fitting combinations, none at or above another (minimal), of the levels searched
        (total step <= ``upto``, default ``level``): a ceiling above them is not the cheapest."""
        upto = self.level if upto is None else upto
        fits = self._known(True)
        return [self.outcomes[c] for c in fits
                if sum(c) <= upto and not any(f != c and self.below(f, c) for f in fits)]

    def violations(self) -> list[str]:
        """Pairs the monotone premise orders whose estimated peaks do not follow it."""
        out = []
        done = [o for o in self.outcomes.values() if o.peak is not None]
        for a, b in itertools.permutations(done, 2):
            if a.combo != b.combo and self.below(a.combo, b.combo) and b.peak > a.peak:
                out.append(f"{_label(b.change)} ({b.peak} B) above {_label(a.change) or 'the cell as asked'} "
                           f"({a.peak} B)")
        return out

    def caveats(self, o: Outcome) -> list[Lever]:
        return [lv for lv, k in zip(self.levers, o.combo) if k and lv.caveat]


def _label(change: Change) -> str:
    return ", ".join(f"{k}={v}" for k, v in change.items())


def command_flags(change: Change) -> list[str]:
    """The change as ``fit`` flags: ``--seq``, ``--world-size/--parallel``, ``--r``, ``--targets``,
    ``--optimizer``, ``--allocator``, else ``--set`` (a key with a flag of its own must go through it: the flag
    overrides a ``--set`` of the same key)."""
    out, rest = [], dict(change)
    if "world_size" in rest:
        out += ["--world-size", str(rest.pop("world_size")), "--parallel", str(rest.pop("parallel", "fsdp2"))]
    for key in ("seq", "r", "targets", "optimizer", "allocator"):
        if key in rest:
            out += [f"--{key}", str(rest.pop(key))]
    for flag in set_flags(rest):
        out += ["--set", flag]
    return out


def host_bytes(record: dict[str, Any]) -> dict[str, Any] | None:
    """An offloading cell's host costs from its record; None where nothing was offloaded to host."""
    host = get(record, "memory.host_offloaded_peak")
    if host is None:
        return None
    return {"host_ram_bytes": host,
            "host_link_bytes_per_step": get(record, "info.offload_activations.host_link_bytes_per_step")}


def host_costs(o: Outcome, card: str | None) -> dict[str, Any] | None:
    """The row's host RAM and host-link bytes a step (out in forward, back in backward), and with a card
    the seconds those copies take at its link rate if they do not overlap compute (``card/rates.py``)."""
    if o.host is None:
        return None
    from ..card.rates import host_link_for

    out = dict(o.host, host_link_s_serial=None, host_link_rate=None, host_link_source=None)
    link = host_link_for(card) if card else None
    if link is not None and out["host_link_bytes_per_step"] is not None:
        rate, source = link
        out.update(host_link_s_serial=out["host_link_bytes_per_step"] / rate, host_link_rate=rate,
                   host_link_source=source)
    return out


def seconds_cost(o: Outcome, zero: Outcome, tokens: int) -> dict[str, Any]:
    """With a card: the lever's predicted seconds per step against the cell as asked (same batch);
    where either has no prediction, none, and why (``step_s_missing``), never a guess."""
    step = (o.time or {}).get("step_s_predicted")
    base = (zero.time or {}).get("step_s_predicted")
    out: dict[str, Any] = {"step_s_predicted": step, "extra_step_s_predicted": None, "extra_step_s_relative": None,
                           "extra_step_s_per_token_relative": None, "step_s_missing": None}
    if step is None or base is None:
        why = [f"{name}: {(t or {}).get('not_predicted') or 'no prediction recorded'}"
               for name, t, v in (("the cell as asked", zero.time, base), ("this change", o.time, step)) if v is None]
        out["step_s_missing"] = "; ".join(why)
        return out
    out.update(extra_step_s_predicted=step - base, extra_step_s_relative=step / base - 1 if base else None,
               extra_step_s_per_token_relative=(step / (o.cell.batch * o.cell.seq)) / (base / tokens) - 1
               if base else None)
    return out


def advise(row: dict[str, Any], base: Cell, levers: list[Lever], budget: Budget, layout: Layout, run: Counter,
           axis: str, multiple: int, limit: int | None, top: int = DEFAULT_TOP,
           max_estimates: int = DEFAULT_MAX_ESTIMATES) -> dict[str, Any]:
    """The advice for one fit row: the search, then the largest axis value of each fitting
    combination (fit's certified search). Returns the row's ``advice`` block (fit.json)."""
    import dataclasses

    probe = dataclasses.replace(base, **{axis: multiple})
    search = Advice(probe, levers, budget, layout, top=top, max_estimates=max_estimates)
    new, reused = run.new, run.reused
    search.search(run)
    lever_estimates = run.new + run.reused - new - reused
    tokens = probe.batch * probe.seq
    zero = search.outcomes[tuple(0 for _ in levers)]
    fits = search.fitting()
    if not fits and search.fitting(upto=10**9):  # the cap came before any level fitted: the ceilings that fit
        fits = search.fitting(upto=10**9)
        search.stopped += "; only ceilings (every lever at its strongest) are known to fit"
    answers = {}
    for o in fits:
        answers[o.combo], = plan([o.cell], axis, budget, run, multiple=multiple, limit=limit,
                                 layout=search.layout_of(o.cell))
    rows = []
    for o in fits:
        ans = answers[o.combo]
        extra = None if o.flops is None or zero.flops is None else o.flops - zero.flops
        rows.append({
            "changes": o.change, "flags": command_flags(o.change), "peak": o.peak,
            "headroom": budget.usable - o.peak, f"max_{axis}": ans.get(f"max_{axis}"),
            "peak_at_max": ans.get("peak_at_max"), "max_verdict": ans["verdict"],
            "flops": o.flops, "extra_flops": extra,
            "extra_flops_relative": None if extra is None or not zero.flops else extra / zero.flops,
            "extra_flops_per_token_relative": None if extra is None or not zero.flops else
            (o.flops / (o.cell.batch * o.cell.seq)) / (zero.flops / tokens) - 1,
            "measured_costs": ["flops"] + (["host_ram", "host_link_bytes"] if o.host else []),
            "host_costs": host_costs(o, budget.on_card), "caveats": {lv.name: lv.caveat for lv in search.caveats(o)},
            "cell": o.cell.to_dict(), "id": o.cell.id,
            **(seconds_cost(o, zero, tokens) if budget.on_card is not None else {}),
        })
    rows.sort(key=lambda r: (len(r["caveats"]), r["extra_flops"] if r["extra_flops"] is not None else float("inf"),
                             r["peak"]))
    ceilings = [o for c, o in search.outcomes.items() if c in set(search.ceilings())]
    return {
        "axis": axis, f"{axis}": multiple, "levers": [lv.name for lv in levers],
        "applicable": [lv.name for lv in search.applicable],
        "verdict": "fits" if rows else ("error" if zero.fits is None else
                                        "fits as asked" if zero.fits else "none of the allowed levers is enough"),
        "stopped": search.stopped, "fitting": rows,
        "base": {"peak": zero.peak, "flops": zero.flops, "id": zero.cell.id, "error": zero.error,
                 **({"time": zero.time} if budget.on_card is not None else {})},
        "ceilings": [{"changes": o.change, "peak": o.peak, "fits": o.fits, "error": o.error} for o in ceilings],
        "estimated": [{"changes": o.change, "peak": o.peak, "flops": o.flops, "fits": o.fits, "error": o.error,
                       **({"step_s_predicted": (o.time or {}).get("step_s_predicted")}
                          if budget.on_card is not None else {})}
                      for o in search.outcomes.values()],
        "combinations": len(search.combos()), "lever_estimates": lever_estimates,
        "max_search_estimates": run.new + run.reused - new - reused - lever_estimates,
        "estimates_new": run.new - new, "estimates_reused": run.reused - reused,
        "premises": {lv.name: lv.premise for lv in search.applicable if lv.monotone},
        "premise_violations": search.violations(),
    }
