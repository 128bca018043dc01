"""``lamda-bench fit``: the largest batch (or sequence) whose estimated step fits a memory budget.

For each method the planner searches one axis (``batch`` at a fixed ``seq``, or ``seq`` at a
fixed ``batch``) over multiples of ``K`` (``--multiple``), using real estimate cells only:

1. Two probes, at K and 2K: a step's peak is close to affine in its tokens (weights, grads and
   optimizer state are fixed; activations grow with batch x seq), so the line through them
   gives the first guess of the largest value that fits.
2. Certification: the guess ``g`` and the next multiple ``g + K`` are estimated; the answer is
   certified when ``g`` fits and ``g + K`` does not. When the guess was off (attention that
   is quadratic in seq, a rounding step in an allocation), the probes so far bracket the answer
   and the search goes on between the largest value that fits and the smallest that does not:
   first by interpolating along the line through them, then by bisection, until the two are
   one multiple apart.

Data-parallel jobs (``--world-size N --parallel fsdp2|ddp``, ``Layout``) are answered per card:
the budget is one card's memory and the axis value one rank's (the global batch is N times it).
Under fsdp2 each probe is rank 0 of the sharded job (its ``memory.peak`` is one card's); under
ddp every rank runs the one-device step on a whole replica, so probes are one-device cells and
each card adds DDP's gradient buckets (see ``Layout.card_peak``).

Every probe is an ordinary cell (``mode = "estimate"``) run by the local launcher into
``OUT/results.jsonl``: probes are real records, and a second ``fit`` into the same directory
reuses them (resume). Each round runs the probes every method wants at once (``jobs``).
"fits" is the margin policy of ``budgets.Budget``. Answers are estimates, never measurements.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .budgets import Budget
from ..suite.cell import Cell
from ..results.record import MEMORY, get
from ..errors import UserError

AXES = ("batch", "seq")
DEFAULT_MULTIPLE = {"batch": 1, "seq": 128}
DEFAULT_LIMIT = {"batch": 4096, "seq": 131072}  # seq: the workload's max positions when it has them
SUITE_NAME = "fit"


PARALLEL = ("none", "ddp", "fsdp2")


class FitError(UserError):
    """Bad fit input (axis, multiple, limit, layout): one line."""


def _family(method: str) -> str | None:
    """The method's closed-form family (its registered fact); None for a name the registry lacks
    (the method's own check reports it)."""
    from ..methods import get_method
    from ..methods.base import MethodError

    try:
        return get_method(method).family
    except MethodError:
        return None


@dataclass(frozen=True)
class Layout:
    """The job a fit answers for: ``world_size`` ranks split by ``parallel``; answers per card."""

    world_size: int = 1
    parallel: str = "none"
    paged_evictable: bool = False  # --paged-evictable: paged optimizer state left out of a card's peak
    on_card: bool = False  # the budget's card terms: a probe's peak is its memory.device_peak (lamda_bench/card)

    def check(self, methods: Sequence[str]) -> None:
        if self.parallel not in PARALLEL:
            raise FitError(f"--parallel {self.parallel!r}: expected one of {list(PARALLEL)}")
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise FitError(f"--world-size {self.world_size!r}: expected an integer >= 1")
        if self.world_size > 1 and self.parallel == "none":
            raise FitError(f"--world-size {self.world_size} needs --parallel fsdp2 or ddp")
        shrinking = [m for m in methods if _family(m) == "lamda"]  # split freezing replaces B's parameters
        if self.parallel == "ddp" and shrinking:
            raise FitError(f"--parallel ddp with {shrinking[0]}: its split freezing replaces parameters, which DDP's "
                           "gradient buckets (fixed when the model is wrapped) do not follow; use --parallel fsdp2")

    def probe_keys(self) -> dict[str, Any]:
        """The cell keys of every probe. DDP cannot be estimated (``parallel.check_estimate``) and
        changes nothing in a rank's step but its buckets: its probes are one-device cells."""
        if self.parallel == "ddp":
            return {"world_size": 1, "parallel": "none"}
        return {"world_size": self.world_size, "parallel": self.parallel}

    def card_peak(self, record: dict[str, Any]) -> int | None:
        """One card's peak from a probe's record. fsdp2: rank 0's ``memory.peak``. ddp: the
        one-device peak plus DDP's gradient buckets, allocated when the model is wrapped and held
        all run: one more copy of every trainable parameter's gradient (``gradient_as_bucket_view``
        False, DDP's default), i.e. the record's ``memory.grads``."""
        peak = get(record, MEMORY.device_peak if self.on_card else MEMORY.peak)
        if peak is not None and not self.paged_evictable:  # paged optimizer state: counted unless evictable
            peak += get(record, MEMORY.optimizer_paged, 0)
        if peak is None or self.parallel != "ddp":
            return peak
        grads = get(record, MEMORY.grads)
        return None if grads is None else peak + grads

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "parallel": self.parallel, "per_card": True,
                "paged_optimizer_counted": not self.paged_evictable,
                "peak_field": MEMORY.device_peak if self.on_card else MEMORY.peak}


@dataclass
class Probe:
    """One estimate cell of the search: its value on the axis and what it recorded."""

    value: int
    id: str
    status: str
    peak: int | None
    error: str | None = None
    time: dict[str, Any] | None = None  # with a card: the time model's prediction (``predicted_time``)


def predicted_time(record: dict[str, Any]) -> dict[str, Any] | None:
    """A card probe's predicted step (``time.step_s_predicted``, ``tokens_per_s_predicted``) with
    the time model's card, version, error band and, where it made none, why; None without a card
    (no time model ran). A prediction, never a measurement (docs/step-time.md)."""
    model = get(record, "info.time_model")
    if not isinstance(model, dict):
        return None
    step, rate = get(record, "time.step_s_predicted"), get(record, "time.tokens_per_s_predicted")
    return {"step_s_predicted": step, "tokens_per_s_predicted": rate,
            "seconds_per_1m_tokens_predicted": 1e6 / rate if rate else None,
            "card": model.get("card") or get(record, "cell.card"),
            "time_model_version": model.get("time_model_version"), "error_band": model.get("error_band"),
            "not_predicted": model.get("not_predicted") if step is None else None}


@dataclass
class MethodSearch:
    """The search for one method: the base cell, the axis, and the probes made so far.

    ``next_values`` says which values to estimate next (empty when done); ``observe`` takes
    each probe's record. Values are multiples ``n * multiple`` with ``1 <= n <= limit_n``.
    """

    base: Cell
    axis: str
    multiple: int
    limit: int
    budget: Budget
    layout: Layout = Layout()
    probes: dict[int, Probe] = field(default_factory=dict)
    bracketed_rounds: int = 0

    @property
    def limit_n(self) -> int:
        return self.limit // self.multiple

    def cell(self, value: int) -> Cell:
        return dataclasses.replace(self.base, **{self.axis: value})

    def observe(self, value: int, record: dict[str, Any]) -> None:
        peak = self.layout.card_peak(record) if record.get("status") == "ok" else None
        self.probes[value] = Probe(value=value, id=self.cell(value).id, status=record.get("status") or "error",
                                   peak=peak, error=record.get("error"), time=predicted_time(record))

    # -- state
    def failed_probe(self) -> Probe | None:
        return next((p for p in self.probes.values() if p.status != "ok" or p.peak is None), None)

    def _known(self) -> tuple[list[int], list[int]]:
        """Multiples n probed that fit, and that do not (sorted)."""
        fit = sorted(v // self.multiple for v, p in self.probes.items() if self.budget.fits(p.peak))
        over = sorted(v // self.multiple for v, p in self.probes.items() if not self.budget.fits(p.peak))
        return fit, over

    def done(self) -> bool:
        if self.failed_probe() is not None:
            return True
        fit, over = self._known()
        if 1 in over:
            return True  # not even the smallest value fits
        if not fit:
            return False
        lo = fit[-1]
        hi = next((n for n in over if n > lo), None)
        if hi == lo + 1:
            return True  # certified: lo fits, lo + 1 does not
        return hi is None and lo >= self.limit_n

    def next_values(self) -> list[int]:
        """The values to estimate next (the certification pair of the current guess)."""
        if self.done():
            return []
        if not self.probes:
            return [n * self.multiple for n in (1, 2) if n <= self.limit_n]
        fit, over = self._known()
        if not fit:  # the smallest value was not probed (a resumed out dir)
            return [self.multiple]
        lo = fit[-1]
        hi = next((n for n in over if n > lo), None)
        top = hi if hi is not None else self.limit_n + 1
        if hi is not None:
            self.bracketed_rounds += 1
        if hi is not None and self.bracketed_rounds % 2 == 0:
            # Every other round in a bracket: one probe at its middle, so the search always ends.
            return [((lo + hi) // 2) * self.multiple]
        guess = max(lo + 1, min(self._model_guess(lo, hi), top - 1))
        return [n * self.multiple for n in (guess, guess + 1) if n < top and n * self.multiple not in self.probes]

    def _peak(self, n: int) -> int:
        return self.probes[n * self.multiple].peak

    def _model_guess(self, lo: int, hi: int | None) -> int:
        """Largest n whose peak, on a curve through the probes nearest the answer, is usable:
        a line through two points, a parabola through three (attention can be quadratic in
        seq). Without a usable curve (peaks flat so far): 4 x lo, or the bracket's middle."""
        probed = sorted(v // self.multiple for v in self.probes)
        near = sorted(probed, key=lambda n: (abs(n - lo) if hi is None else min(abs(n - lo), abs(n - hi)), n))
        points = sorted(near[:3])
        root = _largest_root([(n, self._peak(n)) for n in points], self.budget.usable)
        if root is None and len(points) == 3:
            two = [lo, hi] if hi is not None else sorted(near[:2])
            root = _largest_root([(n, self._peak(n)) for n in two], self.budget.usable)
        if root is None or (hi is None and root <= lo) or (hi is not None and not lo <= root < hi):
            return 4 * lo if hi is None else (lo + hi) // 2
        return int(root)

    # -- the answer
    def answer(self) -> dict[str, Any]:
        """The fit.json row for this method."""
        fixed = "seq" if self.axis == "batch" else "batch"
        row: dict[str, Any] = {
            "method": self.base.method, "workload": self.base.workload, "r": self.base.r,
            "targets": self.base.targets if isinstance(self.base.targets, str) else list(self.base.targets),
            "dtype": self.base.dtype, "axis": self.axis, fixed: getattr(self.base, fixed),
            "multiple": self.multiple, "limit": self.limit,
            f"max_{self.axis}": None, "tokens_at_max": None, "peak_at_max": None, "next": None, "peak_at_next": None,
            **self.layout.to_dict(),
            "budget": self.budget.bytes, "margin": self.budget.margin, "usable": self.budget.usable,
            "estimate": True, "verdict": None, "probes": len(self.probes),
            "probe_ids": [p.id for p in sorted(self.probes.values(), key=lambda p: p.value)],
            "cell": self.base.to_dict(),
        }
        failed = self.failed_probe()
        if failed is not None:
            row["verdict"] = "error"
            row["error"] = (f"probe {self.axis}={failed.value} ({failed.id}) ended {failed.status}: "
                            f"{failed.error or 'no peak recorded'}")
            return row
        fit, over = self._known()
        if not fit:
            smallest = self.probes[self.multiple]
            row.update(verdict="does not fit", next=smallest.value, peak_at_next=smallest.peak)
            return row
        lo = fit[-1]
        at_max = self.probes[lo * self.multiple]
        row.update({f"max_{self.axis}": at_max.value, "peak_at_max": at_max.peak,
                    "tokens_at_max": at_max.value * getattr(self.base, fixed)})
        if at_max.time is not None:  # a card's probe: the predicted time at the max (absent without one)
            row["time_at_max"] = at_max.time
        hi = next((n for n in over if n > lo), None)
        if hi is None:
            row["verdict"] = "fits up to the limit"
        else:
            nxt = self.probes[hi * self.multiple]
            row.update(verdict="certified", next=nxt.value, peak_at_next=nxt.peak)
        return row


RunProbes = Callable[[list[Cell]], dict[str, dict[str, Any]]]


def plan(bases: Sequence[Cell], axis: str, budget: Budget, run_probes: RunProbes,
         multiple: int | None = None, limit: int | None = None, max_rounds: int = 40,
         layout: Layout = Layout()) -> list[dict[str, Any]]:
    """Search every base cell's method; ``run_probes(cells)`` estimates cells and returns
    their records by id. Returns one answer row per base cell, in order. The base cells carry
    ``layout.probe_keys()``; ``layout`` turns each probe's record into one card's peak."""
    if axis not in AXES:
        raise FitError(f"axis {axis!r}: expected one of {list(AXES)}")
    multiple = DEFAULT_MULTIPLE[axis] if multiple is None else multiple
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise FitError(f"--multiple {multiple!r}: expected an integer >= 1")
    searches = []
    for base in bases:
        top = limit if limit is not None else default_limit(base, axis)
        if top < multiple:
            raise FitError(f"--limit {top}: below --multiple {multiple}")
        searches.append(MethodSearch(base=base, axis=axis, multiple=multiple, limit=top, budget=budget,
                                     layout=layout))
    for _ in range(max_rounds):
        wanted = [(s, v) for s in searches for v in s.next_values()]
        if not wanted:
            break
        records = run_probes([s.cell(v) for s, v in wanted])
        for s, v in wanted:
            s.observe(v, records.get(s.cell(v).id) or {"status": "error", "error": "no record came back"})
    else:
        raise FitError(f"no answer after {max_rounds} rounds of probes")  # a bug, not an input
    return [s.answer() for s in searches]


def default_limit(base: Cell, axis: str) -> int:
    """The search's upper end: for seq, the workload's max positions when it declares them."""
    if axis == "seq":
        from ..model.workloads import get_workload

        positions = (getattr(get_workload(base.workload), "config", None) or {}).get("max_position_embeddings")
        if positions:
            return int(positions)
    return DEFAULT_LIMIT[axis]


def probe_runner(out_dir: Path, jobs: int, progress: bool) -> RunProbes:
    """Probes run by the local launcher into ``out_dir/results.jsonl`` (recorded ids are reused)."""
    from ..launch.local import run_cells
    from ..results.files import latest_by_id, load_results, results_path

    def run(cells: list[Cell]) -> dict[str, dict[str, Any]]:
        summary = run_cells(cells, out_dir, suite=SUITE_NAME, jobs=jobs, progress=progress)
        if summary.interrupted:
            raise KeyboardInterrupt
        return latest_by_id(load_results(results_path(out_dir)).records)

    return run


def _largest_root(points: list[tuple[int, int]], usable: int) -> float | None:
    """The largest x >= the first point's where the curve through ``points`` (2: a line, 3: a
    parabola, Newton's form) reaches ``usable``; None where it never rises to it."""
    if len(points) < 2:
        return None
    (x0, y0), (x1, y1) = points[0], points[1]
    d01 = (y1 - y0) / (x1 - x0)
    c = 0.0
    if len(points) == 3:
        x2, y2 = points[2]
        c = ((y2 - y1) / (x2 - x1) - d01) / (x2 - x0)
    # y0 + d01 (x - x0) + c (x - x0)(x - x1) = usable  ->  c x^2 + b x + a = 0
    b = d01 - c * (x0 + x1)
    a = y0 - d01 * x0 + c * x0 * x1 - usable
    if c == 0:
        return None if b <= 0 else -a / b
    disc = b * b - 4 * c * a
    if disc < 0:
        return None
    q = -0.5 * (b + (disc**0.5 if b >= 0 else -(disc**0.5)))  # the stable form of the two roots
    roots = [r for r in ((q / c) if c else None, (a / q) if q else None) if r is not None]
    rising = sorted(x for x in roots if 2 * c * x + b > 0)  # where the curve crosses upwards
    return rising[-1] if rising else None
